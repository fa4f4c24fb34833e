"""The examples are scripts in ``examples/``, not a package: make them importable by name.

They import their shared scaffolding as ``import _demo``, which works when a
script runs from its own directory; putting that directory on ``sys.path``
gives the tests the same view.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
