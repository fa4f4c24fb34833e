"""Logging helpers: a JSON formatter for otpy's structured log records.

otpy reports everything through :mod:`logging` with structured fields in
``extra`` (``event``, ``supervisor``, ``child_id``, ``slot``, ``pool``, ...;
see ``docs/operations.md``).  :class:`JsonFormatter` writes each record as one
JSON object per line, those fields included, for log pipelines (Loki,
Elasticsearch, CloudWatch) that index fields instead of parsing text::

    import logging
    from otpy.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

``otpy --log-format json run ...`` does the same for the command line.

Every field is serialisable: values JSON cannot represent (an actor
:class:`~otpy.Ref`, an exception, a child id that is an arbitrary object) are
written as their ``repr``, so a log call can never make the formatter raise.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["JsonFormatter"]

#: Attributes every LogRecord has: not "extra" fields.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)


def _plain(value: Any) -> Any:
    """``value`` as JSON-native data: containers recursed, anything else as its repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, extra fields.

    Keys: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` (the
    formatted message), every ``extra`` field of the record, and
    ``exception`` (the formatted traceback) when the record has one.  An
    ``extra`` field never replaces one of the fixed keys.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, allow_nan=True)
