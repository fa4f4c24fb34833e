"""The ``otpy`` command line.

``otpy demo`` is the README's main command: with no ``--dsn`` it starts the
embedded throw-away PostgreSQL (see :mod:`otpy.testing`), checks that logical
replication works on it, and stops it again.  Later subcommands (``run``,
``tail``, ``slots``) build on the connector.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from otpy import __version__
from otpy.testing import PostgresServer, TestingError

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the server could not be started or reached


def _check_server(dsn: str) -> str:
    """Connect, prove that logical decoding works, and describe the server."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        wal_level = conn.execute("SHOW wal_level").fetchone()
        if wal_level is None or wal_level[0] != "logical":
            raise RuntimeError(
                f"wal_level is {wal_level[0] if wal_level else '?'}, logical replication needs "
                "wal_level=logical (set it in postgresql.conf and restart the server)"
            )
        # A temporary slot proves that this session may decode WAL; it vanishes on close.
        conn.execute(
            "SELECT pg_create_logical_replication_slot('otpy_demo_check', 'pgoutput', true)"
        )
    return f"PostgreSQL {version[0] if version else '?'}, wal_level=logical, slot creation works"


def _demo(args: argparse.Namespace) -> int:
    if args.dsn:
        try:
            print(f"otpy demo: {_check_server(args.dsn)}")
        except (psycopg.Error, RuntimeError) as exc:
            print(f"otpy demo: cannot use the server: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return EXIT_OK
    print("otpy demo: starting a throw-away PostgreSQL ...", flush=True)
    try:
        with PostgresServer() as server:
            print(f"otpy demo: server on 127.0.0.1:{server.port} ({server.datadir})", flush=True)
            print(f"otpy demo: {_check_server(server.dsn)}", flush=True)
            print("otpy demo: stopping and removing the server ...", flush=True)
    except TestingError as exc:
        print(f"otpy demo: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print("otpy demo: done")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otpy", description="OTP-style supervision on trio and a PostgreSQL connector."
    )
    parser.add_argument("--version", action="version", version=f"otpy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="start a throw-away PostgreSQL (or use --dsn) and show otpy at work"
    )
    demo.add_argument("--dsn", help="use this existing server instead of a throw-away one")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otpy`` console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
