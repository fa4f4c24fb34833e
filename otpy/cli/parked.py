"""``otpy parked``: list, replay or discard the transactions the ``park`` policy set aside.

::

    otpy parked list --dsn "dbname=app" [--slot S] [--table T] [--json]
    otpy parked replay ID --dsn "dbname=app" --handler myproject.sync:Handler
    otpy parked discard ID --dsn "dbname=app" [--yes]

``--dsn`` is the database holding the dead-letter table (the one the
subscription's ``on_failure.pool`` writes to).  ``replay`` imports
``MODULE:ATTR`` (a handler object, or a class or function returning one),
calls its ``handle_replication_data`` with the parked changes and removes the
row if it returns (see :func:`otpy.pg.wal_reader.dead_letters.replay`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, TextIO

from otpy.cli.errors import EXIT_OK, CliError
from otpy.cli.render import format_table
from otpy.pg.connection import TrioConnection
from otpy.pg.replication.handler import HandlesReplication, check_handler
from otpy.pg.replication.options import DEAD_LETTER_TABLE
from otpy.pg.wal_reader import dead_letters

__all__ = ["ParkedCommandError", "load_handler", "register", "run_parked"]


class ParkedCommandError(CliError):
    """An ``otpy parked`` request that cannot be carried out (message says why and what to do)."""


def register(commands: Any) -> None:
    """Add the ``parked`` command to the ``otpy`` sub-command parsers."""
    parked = commands.add_parser("parked", help="list, replay or discard parked transactions")
    actions = parked.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", required=True, help="the database of the dead-letter table")
    common.add_argument("--table", default=DEAD_LETTER_TABLE, help="the dead-letter table")
    listing = actions.add_parser("list", parents=[common], help="list parked transactions")
    listing.add_argument("--slot", help="only those of this slot")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="JSON lines, with the changes")
    replay = actions.add_parser("replay", parents=[common], help="deliver one to a handler")
    replay.add_argument("id", type=int)
    replay.add_argument("--handler", dest="handler_target", required=True, metavar="MODULE:ATTR")
    discard = actions.add_parser("discard", parents=[common], help="delete one unseen")
    discard.add_argument("id", type=int)
    discard.add_argument("--yes", action="store_true", help="do not ask first")
    parked.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Run ``otpy parked``; ``otpy.cli.main`` turns what it raises into one line and a code."""
    import trio

    trio.run(lambda: run_parked(args))
    return EXIT_OK


def load_handler(target: str) -> HandlesReplication:
    """Import ``MODULE:ATTR``: a handler, or a class or function that returns one.

    Raises:
        ParkedCommandError: what was wrong (format, module, attribute, handler).
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ParkedCommandError(
            f"expected MODULE:ATTR (e.g. myproject.sync:Handler), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ParkedCommandError(f"cannot import module {module_name!r}: {exc}") from exc
    except AttributeError:
        raise ParkedCommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(value, type) or not hasattr(value, "handle_replication_data"):
        value = value()
    try:
        check_handler(value)
    except TypeError as exc:
        raise ParkedCommandError(str(exc)) from None
    handler: HandlesReplication = value
    return handler


async def run_parked(args: argparse.Namespace, out: TextIO | None = None) -> None:
    """The ``parked`` actions, on one connection to ``args.dsn``."""
    out = out or sys.stdout
    handler = load_handler(args.handler_target) if args.action == "replay" else None
    async with await TrioConnection.connect(args.dsn, autocommit=True) as conn:
        if args.action == "list":
            letters = await dead_letters.list_parked(
                conn, slot=args.slot, table=args.table, limit=args.limit
            )
            print_letters(letters, as_json=args.json, out=out)
        elif args.action == "replay":
            assert handler is not None
            letter = await dead_letters.replay(conn, args.id, handler, table=args.table)
            print(f"replayed #{letter.id} ({len(letter.changes)} changes) and removed it", file=out)
        else:
            letter = await dead_letters.get(conn, args.id, table=args.table)
            if not args.yes and not _confirm(letter, out):
                raise ParkedCommandError("not discarded")
            await dead_letters.discard(conn, args.id, table=args.table)
            print(f"discarded #{letter.id}", file=out)


def _confirm(letter: dead_letters.DeadLetter, out: TextIO) -> bool:
    if not sys.stdin.isatty():
        raise ParkedCommandError("refusing to discard without a terminal to ask: pass --yes")
    print(
        f"discard #{letter.id} (slot {letter.slot}, commit {letter.commit_lsn}, "
        f"{len(letter.changes)} changes) for good? [y/N] ",
        end="",
        file=out,
        flush=True,
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def print_letters(letters: list[dead_letters.DeadLetter], *, as_json: bool, out: TextIO) -> None:
    """A table (or JSON lines, with the encoded changes) of parked transactions."""
    if as_json:
        for letter in letters:
            record = {
                "id": letter.id,
                "slot": letter.slot,
                "commit_lsn": str(letter.commit_lsn),
                "xid": letter.xid,
                "commit_time": letter.commit_time.isoformat() if letter.commit_time else None,
                "first_chunk": letter.first_chunk,
                "complete": letter.complete,
                "attempts": letter.attempts,
                "error": letter.error,
                "parked_at": letter.parked_at.isoformat(),
                "changes": [
                    {
                        "table": c.table,
                        "op": c.op,
                        "data": dead_letters.encode_value(c.data),
                        "old": dead_letters.encode_value(c.old),
                    }
                    for c in letter.changes
                ],
            }
            print(json.dumps(record), file=out)
        return
    rows = [
        [
            str(letter.id),
            letter.slot,
            str(letter.commit_lsn),
            str(letter.xid),
            str(len(letter.changes)),
            str(letter.attempts),
            letter.parked_at.strftime("%Y-%m-%d %H:%M:%S"),
            letter.error if len(letter.error) <= 60 else letter.error[:57] + "...",
        ]
        for letter in letters
    ]
    headers = ["id", "slot", "commit", "xid", "changes", "attempts", "parked", "error"]
    print(format_table(headers, rows) if rows else "no parked transactions", file=out)
