"""How changes and tables look on a terminal: one line per change, or JSON lines.

``otpy tail`` and ``otpy demo`` print decoded changes; people read the pretty
form, programs read ``--json`` (one JSON object per line, for ``jq`` and
pipes).  Every value otpy decodes has a JSON form here, so ``--json`` never
fails on an exotic type: the natural JSON type where there is one, else the
value's PostgreSQL-like text.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from otpy.pg.replication import JSON_NULL, UNCHANGED_TOAST
from otpy.pg.replication.changes import Change
from otpy.pg.replication.lsn import LSN

__all__ = ["change_to_json", "format_change", "format_table", "human_bytes", "jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (used by ``--json``)."""
    if isinstance(value, LSN):  # before int: pg_lsn as PostgreSQL prints it
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if value is JSON_NULL:
        return None  # JSON null inside a json column: the JSON value null
    if value is UNCHANGED_TOAST:
        return {"unchanged_toast": True}
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, enum.Enum):
        # A user enum's member: psycopg names it by its label and numbers its value.
        return value.name
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    fields = getattr(value, "_fields", None)
    if isinstance(value, tuple) and isinstance(fields, tuple):  # a composite's named tuple
        return {name: jsonable(v) for name, v in zip(fields, value, strict=True)}
    if isinstance(value, Sequence):
        return [jsonable(v) for v in value]
    return str(value)  # uuid, ipaddress, ranges, geometric types...


def change_to_json(change: Change) -> str:
    """One JSON line for ``change`` (all fields, LSNs as ``X/Y`` text)."""
    return json.dumps(
        {
            "schema": change.schema,
            "table": change.table,
            "op": change.op,
            "data": jsonable(change.data),
            "old": jsonable(change.old),
            "lsn": str(change.lsn),
            "commit_lsn": str(change.commit_lsn),
            "xid": change.xid,
            "commit_time": jsonable(change.commit_time),
            "detail": jsonable(change.detail),
        },
        separators=(",", ":"),
    )


def _show(value: Any) -> str:
    if value is UNCHANGED_TOAST:
        return "<unchanged toast>"
    if value is JSON_NULL:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, enum.Enum):  # a user enum's member: its label
        return repr(value.name)
    if isinstance(value, bytes):
        return f"\\x{value.hex()}" if len(value) <= 32 else f"<{len(value)} bytes>"
    return str(value)


def _row(row: Mapping[str, Any] | None) -> str:
    if not row:
        return ""
    return " ".join(f"{key}={_show(value)}" for key, value in row.items())


def format_change(change: Change) -> str:
    """One human-readable line: time, table, operation, the row (and old row)."""
    when = change.commit_time.strftime("%H:%M:%S.%f")[:-3] if change.commit_time else "--:--:--"
    name = f"{change.schema}.{change.table}" if change.schema else change.table
    parts = [when, f"{change.op:<8}", name]
    if change.op == "message":
        content = change.data.decode("utf-8", "replace") if isinstance(change.data, bytes) else ""
        parts.append(repr(content))
    elif change.op == "truncate":
        flags = [k for k, v in (change.detail or {}).items() if v]
        if flags:
            parts.append(f"({', '.join(flags)})")
    else:
        parts.append(_row(change.data))
        if change.old:
            parts.append(f"| old: {_row(change.old)}")
    return " ".join(p for p in parts if p)


def human_bytes(n: int | float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None (unknown) -> ``"-"``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (no dependency needed for this much)."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
