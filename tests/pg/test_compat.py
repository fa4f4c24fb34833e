"""otpy.pg.compat: psycopg's internals are checked at import, by name, against a tested range."""

from __future__ import annotations

import psycopg
import pytest


def test_missing_psycopg_internals_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    from psycopg._connection_base import BaseConnection

    from otpy.pg import compat
    from otpy.pg.errors import PsycopgCompatibilityError

    monkeypatch.delattr(BaseConnection, "_cancel_gen")
    with pytest.raises(PsycopgCompatibilityError, match=r"AsyncConnection\._cancel_gen") as info:
        compat.check_psycopg()
    assert compat.TESTED_PSYCOPG in str(info.value)
    assert isinstance(info.value, ImportError)


def test_untested_psycopg_version_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from otpy.pg import compat

    monkeypatch.setattr(psycopg, "__version__", "3.9.0")
    with pytest.warns(RuntimeWarning, match=r"tested with psycopg>=3\.3\.6,<3\.4"):
        compat.check_psycopg()
