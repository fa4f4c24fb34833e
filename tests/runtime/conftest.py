"""Runtime tests: make the shared helpers (rt_helpers.py) importable in any import mode.

pytest's default ``prepend`` import mode already puts this directory on
``sys.path``; ``importlib`` mode does not, so do it explicitly.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
