"""Moved to :mod:`otpy.pg.wal_reader.slots`; this path warns and goes away in otpy 0.2."""

from otpy._moved import alias_module

alias_module(__name__, "otpy.pg.wal_reader.slots")
