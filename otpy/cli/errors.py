"""How the command line reports a failure: one line on stderr and a ``sysexits.h`` code.

Every subcommand raises; :func:`explain` is the one place that turns what it
raised into an exit code and a message, so that ``otpy tail`` and
``otpy slots`` say the same thing, with the same code, about the same server
being down.  A script can tell "fix your configuration" (78) from "the server
is not there" (69) from "you are not allowed" (77) without parsing text.

Design choices, and why:

* **One line, no traceback** for every failure a user can cause (a server that
  is down, a wrong password, ``wal_level`` not ``logical``, a missing
  publication...).  A traceback says "bug"; these are not bugs, and the line
  says what to do.  ``--debug`` adds the traceback for when it *is* a bug, and
  anything :func:`explain` does not know is reported as one (exit 70, with the
  hint to rerun with ``--debug``).
* **Rules in order, most specific first**, instead of ``except`` clauses
  spread over the subcommands: a new error class gets its code here once.
* **Passwords are removed from what is printed** (:func:`redact`), even though
  the library's own messages never contain one: psycopg quotes a malformed DSN
  whole, and the CLI is where a DSN typed on the command line comes back.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence

import attrs
import psycopg
import trio

from otpy._util import first_leaf, unwrap_group
from otpy.errors import ApplicationStartError, InitError
from otpy.pg.config import Secret, one_line, secrets_in
from otpy.pg.config import redact as pg_redact
from otpy.pg.errors import ConfigError, ConnectError
from otpy.pg.pool.errors import PoolNotFound, PoolOverloaded, PoolTimeout, QueryTimeout
from otpy.pg.replication.errors import (
    AlreadySubscribed,
    InvalidName,
    InvalidOptions,
    PublicationMissing,
    ReplicationError,
    SlotInUse,
    SlotMismatch,
)
from otpy.pg.testing import TestingError
from otpy.pg.wal_reader.dead_letters import DeadLetterNotFound

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOPERM",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OUTPUT_CLOSED",
    "EXIT_SOFTWARE",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "Failure",
    "explain",
    "redact",
    "root_cause",
    "secrets_of",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""The command ran but its result is wrong (the demo lost a change) or was declined."""
EXIT_USAGE = 2
"""Bad command line: an unknown option, a value out of range, a malformed DSN (argparse's code)."""
EXIT_NOT_FOUND = 66
"""EX_NOINPUT: a publication, slot or application that was named does not exist, or the
answer to a question could not be read (stdin closed)."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the server cannot be reached or started, or a slot is busy."""
EXIT_SOFTWARE = 70
"""EX_SOFTWARE: an error the CLI did not expect (a bug: rerun with ``--debug``)."""
EXIT_NOPERM = 77
"""EX_NOPERM: the server refused the credentials or the role lacks a privilege."""
EXIT_CONFIG = 78
"""EX_CONFIG: the configuration is invalid (file, options, or the server's ``wal_level``)."""
EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Stopped by SIGINT (Ctrl-C): the shell's convention, as ``otpy run`` does."""
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE
"""Whoever read the output went away (``| head -1``): what a shell reports for any tool
killed by SIGPIPE."""


class CliError(Exception):
    """A failure the command line itself detects; ``code`` is its exit code.

    Subclasses set ``code`` (an instance may too); the message says what was
    wrong and what to do.
    """

    code: int = EXIT_FAILED


@attrs.frozen
class Failure:
    """What to print and which code to exit with, for one exception."""

    code: int
    message: str | None
    """One line (without the ``otpy COMMAND:`` prefix); None: say nothing (output closed)."""
    expected: bool = True
    """False for an error :func:`explain` does not know: a bug, worth a traceback."""


_AUTH_FAILED = (
    "password authentication failed",
    "no password supplied",
    "authentication failed for user",
    "peer authentication failed",
    "ident authentication failed",
)
_NOT_ALLOWED = (
    "must be superuser or replication role",
    "permission denied",
    "must have the replication attribute",
    "no pg_hba.conf entry",
)


def _connect_failure(exc: BaseException) -> Failure:
    text = one_line(exc)
    lowered = text.lower()
    if any(marker in lowered for marker in _AUTH_FAILED):
        return Failure(
            EXIT_NOPERM,
            f"{text} (check the user name and the password: in the DSN, PGPASSWORD or ~/.pgpass)",
        )
    if any(marker in lowered for marker in _NOT_ALLOWED):
        return Failure(
            EXIT_NOPERM,
            f"{text} (logical replication needs a role WITH REPLICATION LOGIN and a pg_hba.conf "
            "entry that allows it)",
        )
    return Failure(EXIT_UNAVAILABLE, f"cannot use the server: {text}")


def _server_state(exc: BaseException) -> Failure:
    text = one_line(exc)
    if "wal_level" in text:
        return Failure(
            EXIT_CONFIG,
            f"the server is not set up for logical replication ({text}): set "
            "wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) "
            "and restart PostgreSQL",
        )
    return Failure(EXIT_UNAVAILABLE, text)


def _config(exc: BaseException) -> Failure:
    return Failure(EXIT_CONFIG, one_line(exc))


#: The one mapping from what a command raised to (exit code, message), most specific first.
_RULES: Sequence[
    tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[..., Failure]]
] = (
    (CliError, lambda exc: Failure(exc.code, one_line(exc))),
    (KeyboardInterrupt, lambda exc: Failure(EXIT_INTERRUPTED, "interrupted")),
    (BrokenPipeError, lambda exc: Failure(EXIT_OUTPUT_CLOSED, None)),
    ((ConfigError, InvalidName, InvalidOptions, SlotMismatch, PoolNotFound), _config),
    ((PublicationMissing, DeadLetterNotFound), lambda exc: Failure(EXIT_NOT_FOUND, one_line(exc))),
    (
        (SlotInUse, AlreadySubscribed, PoolTimeout, PoolOverloaded, QueryTimeout),
        lambda exc: Failure(EXIT_UNAVAILABLE, one_line(exc)),
    ),
    (psycopg.errors.ObjectNotInPrerequisiteState, _server_state),
    (
        (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidAuthorizationSpecification),
        _connect_failure,
    ),
    ((ConnectError, psycopg.OperationalError), _connect_failure),
    (
        TestingError,
        lambda exc: Failure(EXIT_UNAVAILABLE, f"cannot use the server: {one_line(exc)}"),
    ),
    (ReplicationError, lambda exc: Failure(EXIT_UNAVAILABLE, one_line(exc))),
)


def root_cause(exc: BaseException) -> BaseException:
    """The error that matters inside ``exc``: out of exception groups and start wrappers.

    A nursery wraps a failure in an ``ExceptionGroup`` (with the cancellations
    it caused beside it); an actor or application that failed to start wraps
    its ``init``'s error in :class:`~otpy.errors.InitError` /
    :class:`~otpy.errors.ApplicationStartError`.  The user needs the inner one.
    """
    while True:
        if isinstance(exc, BaseExceptionGroup):
            interrupts, _ = exc.split(KeyboardInterrupt)
            if interrupts is not None:  # Ctrl-C, whatever it interrupted
                return first_leaf(interrupts)
            single = unwrap_group(exc)
            if isinstance(single, BaseExceptionGroup | trio.Cancelled):
                return exc  # several errors, or cancellations only: no one error to name
            exc = single
        elif isinstance(exc, ApplicationStartError):
            exc = exc.error
        elif isinstance(exc, InitError) and exc.reason.error is not None:
            exc = exc.reason.error
        else:
            return exc


def explain(exc: BaseException) -> Failure:
    """The exit code and the one-line message for ``exc`` (see the module docstring)."""
    cause = root_cause(exc)
    for classes, describe in _RULES:
        if isinstance(cause, classes):
            return describe(cause)
    return Failure(
        EXIT_SOFTWARE,
        f"unexpected error: {type(cause).__name__}: {one_line(cause)} "
        "(run again with --debug to see the traceback)",
        expected=False,
    )


def secrets_of(dsn: str | None, environ: Iterable[str | None] = ()) -> list[str]:
    """The passwords in ``dsn`` (a libpq string or URL, even a malformed one), plus ``environ``.

    ``environ`` is for secrets that come from elsewhere (``PGPASSWORD``).  The
    DSN is read by :func:`otpy.pg.config.secrets_in`, the one place that knows
    how a password appears in one; the result is for :func:`redact`.
    """
    found = {value for value in environ if value} | (secrets_in(dsn) if dsn else set())
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret, and any password a DSN in it shows, replaced by ``***``.

    :func:`otpy.pg.config.redact` with the command line's marker; ``secrets``
    are the values themselves (from :func:`secrets_of`).
    """
    return pg_redact(text, *map(Secret, secrets), marker=_MARKER)


#: What the command line prints in place of a secret.
_MARKER = "***"
