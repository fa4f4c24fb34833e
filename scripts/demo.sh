#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then `otpy demo` (arguments are passed on,
# e.g. scripts/demo.sh --dsn postgresql://... to use an existing server).
source "$(dirname "$0")/_bootstrap.sh"
exec "$VENV/bin/otpy" demo "$@"
