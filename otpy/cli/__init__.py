"""The ``otpy`` command line.

* ``otpy demo`` — the README's main command: the connector at work on a
  throw-away PostgreSQL (or ``--dsn``), see :mod:`otpy.cli.demo`;
* ``otpy run MODULE:APP --config FILE.toml`` — run an application until
  Ctrl-C/SIGTERM, see :mod:`otpy.cli.run`;
* ``otpy tail --dsn ... --publication P`` — live decoded changes, see
  :mod:`otpy.cli.tail`;
* ``otpy slots --dsn ...`` — replication slots and the WAL they retain, see
  :mod:`otpy.cli.slots`.

Exit codes follow ``sysexits.h`` where one fits, so scripts can tell a bad
configuration from an unreachable server.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg
import trio

from otpy import __version__
from otpy.application import run as run_application
from otpy.logs import JsonFormatter
from otpy.pg.errors import ConfigError, ConnectError
from otpy.pg.wal_reader import (
    AlreadySubscribed,
    InvalidName,
    InvalidOptions,
    PublicationMissing,
    SlotInUse,
    SlotMismatch,
)
from otpy.testing import PostgresServer, TestingError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
"""The command ran but its result is wrong (the demo lost a change)."""
EXIT_USAGE = 2
"""Bad command line (argparse's convention)."""
EXIT_NOT_FOUND = 66
"""EX_NOINPUT: a publication, slot or application that was named does not exist."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the server cannot be reached or started, or a slot is busy."""
EXIT_CONFIG = 78
"""EX_CONFIG: the configuration (file or options) is invalid."""


def _fail(command: str, message: object, code: int) -> int:
    print(f"otpy {command}: {message}", file=sys.stderr)
    return code


def _errors(command: str, body: Callable[[], int]) -> int:
    """Run ``body``, turning the errors users can cause into a message and an exit code."""
    try:
        return body()
    except KeyboardInterrupt:
        return 130
    except (ConfigError, InvalidName, InvalidOptions) as exc:
        return _fail(command, exc, EXIT_CONFIG)
    except PublicationMissing as exc:
        return _fail(command, exc, EXIT_NOT_FOUND)
    except (SlotInUse, AlreadySubscribed, SlotMismatch) as exc:
        return _fail(command, exc, EXIT_UNAVAILABLE)
    except (ConnectError, psycopg.OperationalError, TestingError) as exc:
        return _fail(command, f"cannot use the server: {exc}", EXIT_UNAVAILABLE)


def _demo(args: argparse.Namespace) -> int:
    from otpy.cli.demo import run_demo

    seconds = None if args.forever else args.seconds

    def body() -> int:
        if args.dsn:
            result = trio.run(lambda: run_demo(args.dsn, seconds=seconds, seed=args.seed))
            return EXIT_OK if result.lost == 0 else EXIT_FAILED
        print("demo: starting a throw-away PostgreSQL ...", flush=True)
        with PostgresServer() as server:
            print(f"demo: PostgreSQL on 127.0.0.1:{server.port} ({server.datadir})", flush=True)
            result = trio.run(lambda: run_demo(server.dsn, seconds=seconds, seed=args.seed))
            print("demo: stopping and removing the server", flush=True)
        return EXIT_OK if result.lost == 0 else EXIT_FAILED

    return _errors("demo", body)


def _tail(args: argparse.Namespace) -> int:
    from otpy.cli.tail import tail

    def body() -> int:
        trio.run(
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
        return EXIT_OK

    return _errors("tail", body)


def _slots(args: argparse.Namespace) -> int:
    from otpy.cli.slots import SlotCommandError, run_slots

    def body() -> int:
        try:
            trio.run(lambda: run_slots(args.dsn, drop=args.drop, yes=args.yes, as_json=args.json))
        except SlotCommandError as exc:
            return _fail("slots", exc, EXIT_FAILED)
        return EXIT_OK

    return _errors("slots", body)


def _run(args: argparse.Namespace) -> int:
    from otpy.cli.run import AppNotFound, load_application, prepare

    def body() -> int:
        try:
            app = load_application(args.app)
        except AppNotFound as exc:
            return _fail("run", exc, EXIT_NOT_FOUND)
        app, env = prepare(app, args.config)
        return int(run_application(app, env=env))

    return _errors("run", body)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpy", description="OTP-style supervision on trio and a PostgreSQL connector."
    )
    parser.add_argument("--version", action="version", version=f"otpy {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level (DEBUG, INFO, ...; default WARNING)"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="the connector at work: live changes and pool stats on a throw-away server"
    )
    demo.add_argument("--dsn", help="use this existing server (needs wal_level=logical)")
    demo.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    demo.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    demo.add_argument("--seed", type=int, help="seed of the workload generator")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run an otpy application until Ctrl-C/SIGTERM")
    run.add_argument("app", metavar="MODULE:APP", help="the otpy.Application to run")
    run.add_argument("--config", help="TOML file: databases, pools and [env.APP] tables")
    run.set_defaults(handler=_run)

    tail = commands.add_parser("tail", help="print live decoded changes of publications")
    tail.add_argument("--dsn", required=True, help="the database to read (libpq DSN or URL)")
    tail.add_argument(
        "--publication", action="append", required=True, help="publication (repeatable)"
    )
    tail.add_argument("--slot", help="slot name (default: a temporary otpy_tail_<pid>)")
    tail.add_argument(
        "--persistent", action="store_true", help="use a persistent slot (resume where you left)"
    )
    tail.add_argument("--json", action="store_true", help="JSON lines instead of pretty lines")
    tail.add_argument("--limit", type=int, help="stop after this many changes")
    tail.add_argument("--seconds", type=float, help="stop after this many seconds")
    tail.set_defaults(handler=_tail)

    slots = commands.add_parser("slots", help="list replication slots and the WAL they retain")
    slots.add_argument("--dsn", required=True, help="the server to inspect (libpq DSN or URL)")
    slots.add_argument("--drop", metavar="SLOT", help="drop this slot (asks first)")
    slots.add_argument("--yes", action="store_true", help="do not ask before dropping")
    slots.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    slots.set_defaults(handler=_slots)

    from otpy.cli import parked  # `otpy parked`: see otpy/cli/parked.py

    parked.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otpy`` console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_format == "json":  # one JSON object per line (otpy.logs.JsonFormatter)
        logging.getLogger().handlers[0].setFormatter(JsonFormatter())
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
