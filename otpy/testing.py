"""Moved to :mod:`otpy.pg.testing`: this old path warns once and is that same module."""

from otpy._moved import alias_module

alias_module(__name__, "otpy.pg.testing")
