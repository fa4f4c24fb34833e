"""Options of a WAL reader subscription, validated once, as an attrs value.

``subscribe`` accepts either a :class:`ReaderOptions` or the mapping form of
epg_connector (``{"slot_type": "temporary"}``); unknown keys are rejected with
a did-you-mean, so a typo cannot silently fall back to a default (a mistyped
``slot_type`` would otherwise lose data on a reconnect).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from otpy.child_spec import Backoff

from .errors import InvalidOptions

__all__ = ["SLOT_TYPES", "ReaderOptions"]

#: ``temporary``: the slot lives as long as the replication session; changes
#: made while the reader is disconnected are *not* replayed.  ``persistent``:
#: created if missing, reused if it exists; nothing is lost across restarts.
SLOT_TYPES = ("temporary", "persistent")


def _backoff(value: Any) -> Backoff:
    if isinstance(value, Backoff):
        return value
    if isinstance(value, Mapping):
        try:
            return Backoff(**value)
        except (TypeError, ValueError) as exc:
            raise InvalidOptions(f"restart_backoff: {exc}") from None
    raise InvalidOptions(f"restart_backoff: expected a Backoff or a mapping, got {value!r}")


def _positive(name: str) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidOptions(f"{name}: expected a positive number, got {value!r}")

    return check


def _create_publication(value: Any) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidOptions(
            f"create_publication: expected a bool (FOR ALL TABLES) or a list of tables, "
            f"got {value!r}"
        )
    return tuple(str(v) for v in value)


@attrs.frozen
class ReaderOptions:
    """How a reader streams, delivers and recovers.

    Attributes:
        slot_type: ``"temporary"`` (default) or ``"persistent"``; see
            :data:`SLOT_TYPES`.  Use persistent when no change may be lost.
        create_publication: create missing publications: ``True`` for
            ``FOR ALL TABLES``, or a list of tables (``"t"``/``"schema.t"``).
        proto_version: pgoutput protocol 1-3 (streaming needs >= 2; raised
            automatically when ``streaming`` is on).
        binary: ask pgoutput for binary values (faster to decode for many types).
        messages: deliver ``pg_logical_emit_message`` messages (op ``"message"``).
        streaming: let the server stream large in-progress transactions
            (less server-side spilling); the reader keeps them until their
            commit and delivers them then, chunked like any transaction.
        status_interval: seconds between standby status updates; keep it well
            below the server's ``wal_sender_timeout``.
        max_batch_size: a transaction with more changes is delivered in chunks
            of this size (``changes.final`` marks the last); ``None`` delivers
            every transaction whole (unbounded memory).
        queue_size: batches buffered between the socket reader and the handler;
            when full the socket is no longer read (backpressure).
        restart_backoff: delay between restarts of a crashed reader
            (exponential, capped), and between standby attempts.
        standby: when the slot is active elsewhere, wait and take over when it
            is freed instead of failing.
        shutdown_timeout: seconds ``unsubscribe`` allows for a clean stop
            (final acknowledgement, slot release) before cancelling.
    """

    slot_type: str = attrs.field(default="temporary")
    create_publication: bool | tuple[str, ...] = attrs.field(
        default=False, converter=_create_publication
    )
    proto_version: int = 1
    binary: bool = False
    messages: bool = False
    streaming: bool = False
    status_interval: float = attrs.field(default=10.0, validator=_positive("status_interval"))
    max_batch_size: int | None = 500
    queue_size: int = 4
    restart_backoff: Backoff = attrs.field(
        factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.2), converter=_backoff
    )
    standby: bool = False
    shutdown_timeout: float = attrs.field(default=10.0, validator=_positive("shutdown_timeout"))

    def __attrs_post_init__(self) -> None:
        if self.slot_type not in SLOT_TYPES:
            raise InvalidOptions(
                f"slot_type: expected one of {', '.join(SLOT_TYPES)}, got {self.slot_type!r}"
            )
        if self.proto_version not in (1, 2, 3):
            raise InvalidOptions(f"proto_version: expected 1, 2 or 3, got {self.proto_version!r}")
        if self.max_batch_size is not None and (
            isinstance(self.max_batch_size, bool)
            or not isinstance(self.max_batch_size, int)
            or self.max_batch_size < 1
        ):
            raise InvalidOptions(
                f"max_batch_size: expected a positive integer or None, got {self.max_batch_size!r}"
            )
        if (
            isinstance(self.queue_size, bool)
            or not isinstance(self.queue_size, int)
            or (self.queue_size < 1)
        ):
            raise InvalidOptions(f"queue_size: expected an integer >= 1, got {self.queue_size!r}")

    @property
    def temporary(self) -> bool:
        """Whether the slot is temporary (dropped when the session ends)."""
        return self.slot_type == "temporary"

    @property
    def effective_proto_version(self) -> int:
        """The protocol version sent: at least 2 when streaming is on."""
        return max(self.proto_version, 2) if self.streaming else self.proto_version

    def plugin_options(self) -> list[tuple[str, str]]:
        """pgoutput options other than ``publication_names``, as (name, value) text."""
        options = [("proto_version", str(self.effective_proto_version))]
        if self.binary:
            options.append(("binary", "true"))
        if self.messages:
            options.append(("messages", "true"))
        if self.streaming:
            options.append(("streaming", "on"))
        return options

    @classmethod
    def coerce(cls, value: ReaderOptions | Mapping[str, Any] | None) -> ReaderOptions:
        """Accept a ReaderOptions, a mapping of its fields (Erlang's options map) or None.

        Raises:
            InvalidOptions: an unknown key (with a did-you-mean) or a bad value.
        """
        if value is None:
            return cls()
        if isinstance(value, ReaderOptions):
            return value
        if not isinstance(value, Mapping):
            raise InvalidOptions(f"options: expected a mapping or ReaderOptions, got {value!r}")
        names = [f.name for f in attrs.fields(cls)]
        for key in value:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InvalidOptions(
                    f"unknown reader option {key!r}{hint}; known: {', '.join(names)}"
                )
        try:
            return cls(**value)
        except TypeError as exc:
            raise InvalidOptions(str(exc)) from None
