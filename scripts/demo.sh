#!/usr/bin/env bash
# The main job on a fresh machine: set-up, then `otpy demo` (20 s by default; arguments are passed on,
# e.g. --forever, --seconds 60, or --dsn postgresql://... to use an existing server).
source "$(dirname "$0")/_bootstrap.sh"
exec "$VENV/bin/otpy" demo "$@"
