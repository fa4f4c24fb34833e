#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, format check, types, tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k pool -x).
source "$(dirname "$0")/_bootstrap.sh"

say "ruff check";           "$VENV/bin/ruff" check .
say "ruff format --check";  "$VENV/bin/ruff" format --check .
say "mypy --strict otpy";   "$VENV/bin/mypy"
say "pytest";               "$VENV/bin/pytest" "$@"
