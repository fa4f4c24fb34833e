"""The ``otpy`` command line.

* ``otpy demo`` — the README's main command: the connector at work on a
  throw-away PostgreSQL (or ``--dsn``), see :mod:`otpy.cli.demo`;
* ``otpy run MODULE:APP --config FILE.toml`` — run an application until
  Ctrl-C/SIGTERM, see :mod:`otpy.cli.run`;
* ``otpy tail --dsn ... --publication P`` — live decoded changes, see
  :mod:`otpy.cli.tail`;
* ``otpy slots --dsn ...`` — replication slots and the WAL they retain, see
  :mod:`otpy.cli.slots`;
* ``otpy parked list|replay|discard`` — transactions the ``park`` policy set
  aside, see :mod:`otpy.cli.parked`;
* ``otpy status [--url URL] [--watch SECONDS] [--json]`` — readers and pools of
  a running process, read from its metrics endpoint, see :mod:`otpy.cli.status`.

Exit codes follow ``sysexits.h`` where one fits, so scripts can tell a bad
configuration from an unreachable server; :mod:`otpy.cli.errors` maps every
expected failure to its code and a one-line message (a traceback only with
``--debug``).  The common options (``--log-level``, ``--debug``) are accepted
before and after the subcommand.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import trio
from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict

from otpy import __version__
from otpy.application import ExitCode
from otpy.application import run as run_application
from otpy.cli import logs
from otpy.cli.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOPERM,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTPUT_CLOSED,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    explain,
    redact,
    root_cause,
    secrets_of,
)
from otpy.pg.config import one_line
from otpy.pg.config import redact as redact_dsn
from otpy.pg.pool.errors import PoolNotFound
from otpy.pg.testing import PostgresServer

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
    "main",
]


def _ended(signum: int | None, output_closed: bool) -> int:
    """The exit code of a command that ran to its end or was told to stop.

    SIGINT gives 130 as in ``otpy run``; SIGTERM is an orderly stop (0), as there.
    """
    if output_closed:
        return EXIT_OUTPUT_CLOSED
    if signum == signal.SIGINT:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from otpy.cli.demo import run_demo

    seconds = None if args.forever else args.seconds
    if args.dsn:
        result = trio.run(lambda: run_demo(args.dsn, seconds=seconds, seed=args.seed))
    else:
        print("demo: starting a throw-away PostgreSQL ...", flush=True)
        with PostgresServer() as server:
            print(f"demo: PostgreSQL on 127.0.0.1:{server.port} ({server.datadir})", flush=True)
            result = trio.run(lambda: run_demo(server.dsn, seconds=seconds, seed=args.seed))
            if not result.output_closed:
                print("demo: stopping and removing the server", flush=True)
    if result.lost:
        return EXIT_FAILED
    return _ended(result.signal, result.output_closed)


def _tail(args: argparse.Namespace) -> int:
    from otpy.cli.tail import tail

    result = trio.run(
        lambda: tail(
            args.dsn,
            args.publication,
            slot=args.slot,
            persistent=args.persistent,
            as_json=args.json,
            limit=args.limit,
            seconds=args.seconds,
        )
    )
    return _ended(result.signal, result.output_closed)


def _slots(args: argparse.Namespace) -> int:
    from otpy.cli.slots import run_slots

    trio.run(lambda: run_slots(args.dsn, drop=args.drop, yes=args.yes, as_json=args.json))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from otpy.cli.run import ApplicationStartFailed, load_application, prepare

    app, env = prepare(load_application(args.app), args.config)
    logs.watch_application_started(app.name)
    # The CLI reports a failed start itself (one line, its own code): no SystemExit here.
    code = ExitCode(run_application(app, env=env, exit_on_failure=False))
    failed = logs.start_failure()
    if code != ExitCode.START_FAILED or failed is None:
        return int(code)
    name, error = failed
    if error is None:
        return int(code)
    failure = explain(error)
    hint = ""
    if failure.code == EXIT_CONFIG and args.config is None:
        hint = " (no --config was given: pass --config FILE.toml with its databases and pools)"
    elif isinstance(root_cause(error), PoolNotFound):
        hint = f" (is it declared under [pools] in {args.config}?)"
    raise ApplicationStartFailed(
        f"application {name!r} failed to start: {failure.message}{hint}",
        failure.code if failure.expected else int(ExitCode.START_FAILED),
    ) from error


# -- the command line -----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``otpy tail: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _dsn(text: str) -> str:
    """``--dsn``'s type: a libpq connection string or URL that libpq can parse.

    libpq's complaint quotes the DSN, or a piece of it that can be the
    password: quoted pieces of the DSN are left out of the message.
    """
    try:
        conninfo_to_dict(text)
    except PsycopgError as exc:
        problem = redact_dsn(one_line(exc), text)
    else:
        return text
    # Raised outside the except: no chained psycopg error (which quotes the DSN).
    raise argparse.ArgumentTypeError(f"invalid connection string: {problem}")


def _common_options(*, in_subcommand: bool) -> _Parser:
    """``--log-level`` and ``--debug``, for the main parser and again for every subcommand.

    In a subcommand their default is "not given" (``SUPPRESS``), so that
    ``otpy --log-level debug tail`` is not reset by the subcommand's default.
    """
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        type=logs.parse_level,
        default=argparse.SUPPRESS if in_subcommand else "WARNING",
        help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default WARNING)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if in_subcommand else False,
        help="show tracebacks (of errors and in log records)",
    )
    common.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS if in_subcommand else "text",
        help="log lines as text (default) or one JSON object per line (otpy.logs.JsonFormatter)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otpy",
        description="OTP-style supervision on trio and a PostgreSQL connector.",
        parents=[_common_options(in_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"otpy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [_common_options(in_subcommand=True)]

    demo = commands.add_parser(
        "demo",
        parents=common,
        help="the connector at work: live changes and pool stats on a throw-away server",
    )
    demo.add_argument("--dsn", type=_dsn, help="use this existing server (needs wal_level=logical)")
    demo.add_argument("--seconds", type=_seconds, default=20.0, help="how long to run (default 20)")
    demo.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    demo.add_argument("--seed", type=int, help="seed of the workload generator")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run", parents=common, help="run an otpy application until Ctrl-C/SIGTERM"
    )
    run.add_argument("app", metavar="MODULE:APP", help="the otpy.Application to run")
    run.add_argument("--config", help="TOML file: databases, pools and [env.APP] tables")
    run.set_defaults(handler=_run)

    tail = commands.add_parser(
        "tail", parents=common, help="print live decoded changes of publications"
    )
    tail.add_argument(
        "--dsn", type=_dsn, required=True, help="the database to read (libpq DSN or URL)"
    )
    tail.add_argument(
        "--publication", action="append", required=True, help="publication (repeatable)"
    )
    tail.add_argument(
        "--slot",
        help="slot name (default: a temporary otpy_tail_<pid>; with --persistent, "
        "otpy_tail_<publications>, the same on every run)",
    )
    tail.add_argument(
        "--persistent", action="store_true", help="use a persistent slot (resume where you left)"
    )
    tail.add_argument("--json", action="store_true", help="JSON lines instead of pretty lines")
    tail.add_argument("--limit", type=_count, help="stop after this many changes")
    tail.add_argument("--seconds", type=_seconds, help="stop after this many seconds")
    tail.set_defaults(handler=_tail)

    slots = commands.add_parser(
        "slots", parents=common, help="list replication slots and the WAL they retain"
    )
    slots.add_argument(
        "--dsn", type=_dsn, required=True, help="the server to inspect (libpq DSN or URL)"
    )
    slots.add_argument("--drop", metavar="SLOT", help="drop this slot (asks first)")
    slots.add_argument("--yes", action="store_true", help="do not ask before dropping")
    slots.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    slots.set_defaults(handler=_slots)

    from otpy.cli import parked  # `otpy parked`: see otpy/cli/parked.py

    parked.register(commands)
    from otpy.cli import status  # `otpy status`: see otpy/cli/status.py

    status.register(commands, common)
    return parser


def _report(command: str, exc: BaseException, *, debug: bool, secrets: Sequence[str]) -> int:
    """Print ``exc`` as one line (and its traceback with ``--debug``); return its exit code."""
    failure = explain(exc)
    if debug:
        text = "".join(traceback.format_exception(exc))
        print(redact(text, secrets), file=sys.stderr, end="")
    if failure.message is not None:
        print(f"otpy {command}: {redact(failure.message, secrets)}", file=sys.stderr)
    return failure.code


def _silence_stdout() -> None:
    """After the reader of stdout went away: make the interpreter's final flush harmless."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests, embedding)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otpy`` console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    secrets = secrets_of(getattr(args, "dsn", None), [os.environ.get("PGPASSWORD")])
    handler: Any = args.handler
    with logs.CliLogging(
        args.log_level, debug=args.debug, secrets=secrets, json=args.log_format == "json"
    ):
        try:
            code: int = handler(args)
        except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:
            code = _report(args.command, exc, debug=args.debug, secrets=secrets)
    if code == EXIT_OUTPUT_CLOSED:
        _silence_stdout()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
