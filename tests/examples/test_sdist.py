"""The sdist carries its own tests: unpacked, it runs ``pytest tests/examples``.

Distributors (and anyone checking a release) build and test from the sdist, not
from a clone; an sdist that lacks ``examples/`` cannot run the tests that use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Set in the unpacked sdist's test run, which must not build an sdist of itself.
INSIDE = "OTPY_TESTING_THE_SDIST"

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get(INSIDE)), reason="running inside an unpacked sdist"),
    pytest.mark.skipif(not (REPO / ".git").exists(), reason="builds from a git checkout"),
]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``args``, bounded to ``timeout`` seconds; return its output, failing on an error."""
    result = subprocess.run(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output
    return output


def clean_copy(dest: Path) -> None:
    """The checkout's files as git sees them (committed or not, ignored ones left out).

    A build in the checkout itself would read a stale ``*.egg-info/SOURCES.txt``
    left by an earlier build, and put in the sdist files that MANIFEST.in lacks.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # not deleted in the work tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_the_unpacked_sdist_runs_its_examples_tests(tmp_path: Path) -> None:
    env = {**os.environ, INSIDE: "1"}
    clean_copy(tmp_path / "checkout")
    # --no-isolation: the build backend is in this environment (the dev extra),
    # so nothing is downloaded.
    run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=tmp_path / "checkout",
        env=env,
        timeout=120,
    )
    (sdist,) = tmp_path.glob("*.tar.gz")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (root,) = unpacked.iterdir()
    assert (root / "examples" / "examples.toml").is_file()

    # The unpacked tree's otpy, not this checkout's, for pytest and every
    # subprocess the tests start (scripts, otpy run).
    env["PYTHONPATH"] = str(root)
    where = run(
        [sys.executable, "-c", "import otpy; print(otpy.__file__)"], cwd=root, env=env, timeout=60
    )
    assert Path(where.strip()).is_relative_to(root)

    output = run(
        [sys.executable, "-m", "pytest", "tests/examples", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env=env,
        timeout=600,
    )
    assert " passed" in output and "failed" not in output, output
