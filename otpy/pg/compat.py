"""The psycopg internals otpy's connection layers rely on, checked once, at import.

psycopg's asyncio connection is built on internals that are semi-private: the
protocol generators (``psycopg.generators``), their wait states
(``psycopg.waiting``), the connection's ``wait``/``lock`` protocol and its
``_connect_gen``/``_cancel_gen``, and the conninfo helpers of
``psycopg._conninfo_utils``.  :mod:`otpy.pg.waiting`, :mod:`otpy.pg.connection`
and :mod:`otpy.pg.copy_both` use them to run psycopg on trio.

Design and why:

* **Fail at import, naming what is missing.**  A psycopg release that renamed
  one of them would otherwise fail far from here, mid-query, with an
  ``AttributeError`` in psycopg's code.  :func:`check_psycopg` lists every
  internal used and raises :class:`~otpy.pg.errors.PsycopgCompatibilityError`
  (an ``ImportError``) with the names that are gone and the tested range.
* **Warn, do not refuse, outside the tested range.**  A newer psycopg that
  still has every internal probably works: it gets a ``RuntimeWarning`` asking
  to run the test suite, not an error.
* **One module.**  The three modules above import this one before they import
  psycopg's internals, so the check runs first whichever of them is imported.
"""

from __future__ import annotations

import warnings

import psycopg
from psycopg import errors as e
from psycopg import pq

from otpy.pg.errors import PsycopgCompatibilityError

__all__ = ["TESTED_PSYCOPG", "check_psycopg"]

#: The psycopg versions otpy's connection layers were tested with (a pip requirement specifier).
#: 3.3.6 is the first release whose ``AsyncConnection.wait`` takes a ``timeout`` and
#: raises ``_WaitTimeout`` (older ones tick with ``interval``); tested: 3.3.6, 3.3.7,
#: 3.3.9, with both the binary and the pure-Python implementation.
TESTED_PSYCOPG = ">=3.3.6,<3.4"
_TESTED_MIN = (3, 3, 6)
_TESTED_MAX_EXCLUSIVE = (3, 4)


def check_psycopg() -> None:
    """Fail, naming what is missing, if psycopg's internals changed; warn if untested.

    Called once when this module is imported (so before any connection layer
    uses the internals); callable again, for tests.

    Raises:
        PsycopgCompatibilityError: an internal otpy uses is missing, or the
            wait protocol changed.
    """
    from psycopg import _conninfo_utils, conninfo, generators, waiting

    required: list[tuple[object, str]] = [
        (psycopg.AsyncConnection, "wait"),
        (psycopg.AsyncConnection, "_connect_gen"),
        (psycopg.AsyncConnection, "_cancel_gen"),
        (psycopg.AsyncConnection, "_should_cancel"),
        (psycopg.AsyncConnection, "_get_connection_params"),
        (psycopg.AsyncConnection, "cancel_safe"),
        (generators, "execute"),
        (generators, "fetch_many"),
        (waiting, "Wait"),
        (waiting, "Ready"),
        (_conninfo_utils, "split_attempts"),
        (_conninfo_utils, "get_param"),
        (_conninfo_utils, "get_param_def"),
        (_conninfo_utils, "is_ip_address"),
        (conninfo, "timeout_from_conninfo"),
        (conninfo, "make_conninfo"),
        (e, "_WaitTimeout"),
        (pq.PGconn, "get_copy_data"),
        (pq.PGconn, "put_copy_data"),
        (pq.PGconn, "flush"),
    ]
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in required
        if not hasattr(owner, name)
    ]
    if missing:
        raise PsycopgCompatibilityError(
            f"psycopg {psycopg.__version__} lacks internals that otpy.pg.connection relies on "
            f"({', '.join(missing)}); install a tested version: psycopg{TESTED_PSYCOPG}"
        )
    # The generator protocol: yield Wait.R/W/RW, resume with Ready flags.
    if not (int(waiting.Wait.R) == 1 and int(waiting.Wait.W) == 2 and int(waiting.Ready.R) == 1):
        raise PsycopgCompatibilityError(
            f"psycopg {psycopg.__version__} changed its wait protocol; "
            f"install a tested version: psycopg{TESTED_PSYCOPG}"
        )
    try:
        version = tuple(int(part) for part in psycopg.__version__.split(".")[:3])
    except ValueError:  # pragma: no cover - a development version string
        version = _TESTED_MIN
    if not (_TESTED_MIN <= version < _TESTED_MAX_EXCLUSIVE):
        warnings.warn(
            f"otpy.pg.connection was tested with psycopg{TESTED_PSYCOPG}, not "
            f"{psycopg.__version__}: its internals were found, but run the test suite",
            RuntimeWarning,
            stacklevel=3,
        )


check_psycopg()
