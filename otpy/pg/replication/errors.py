"""Errors of the pure replication-stream decoders.

Kept in a module of its own so that framing (:mod:`.protocol`), pgoutput
(:mod:`.pgoutput`) and LSN parsing (:mod:`.lsn`) raise the *same* class: a reader
catches one exception type for "the bytes on the wire make no sense", whatever
layer noticed it.
"""

from __future__ import annotations

__all__ = ["DecodeError"]


class DecodeError(ValueError):
    """Malformed or truncated replication bytes (framing or pgoutput).

    The decoders never let ``IndexError``, ``struct.error`` or
    ``UnicodeDecodeError`` escape: every way bytes can be wrong ends up here,
    with the byte ``offset`` where decoding stopped, so that a reader can log a
    precise message (and stop the stream) instead of crashing on an internal
    error that looks like a bug.

    Attributes:
        offset: index in the decoded buffer where the problem was found.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset
