"""The ``LSN`` value type: a position in the write-ahead log.

PostgreSQL prints LSNs as two hexadecimal 32-bit halves, ``X/Y``, with no
zero padding (``0/1A2B`` is ``0x1A2B``).  The original epg_connector parsed the
low half as if it always had 8 digits, which shifted short values; here the
text is split at the slash and each half parsed as a number.

``LSN`` subclasses :class:`int` so it is hashable, orderable, cheap, usable
anywhere an integer is (struct packing, arithmetic) and compares equal to the
plain integer.  Subtracting two LSNs gives the distance in bytes (an ``int``:
"replication lag"), adding or subtracting an ``int`` gives an ``LSN``.
"""

from __future__ import annotations

from typing import SupportsIndex, overload

from .errors import DecodeError

__all__ = ["LSN"]

_MAX = 0xFFFFFFFFFFFFFFFF

#: ``lsn_from_u64(LSN, n)``: the LSN of an integer that is an unsigned 64-bit
#: value by construction (unpacked with ``Q`` from the protocol), without
#: ``LSN.__new__``'s checks: 0.08 against 0.21 µs, on the decoding paths
#: that build three per transaction.  Anything else goes through ``LSN(n)``.
lsn_from_u64 = int.__new__


class LSN(int):
    """A WAL position (unsigned 64-bit), printed and parsed as ``X/Y`` hex halves.

    ``LSN(n)`` takes an int (``0 <= n < 2**64``); :meth:`parse` (and ``LSN("X/Y")``)
    takes the text form.  Invalid input raises :class:`~.errors.DecodeError`
    (a ``ValueError``), so text from the server and from users is validated the
    same way.
    """

    __slots__ = ()

    def __new__(cls, value: int | str | SupportsIndex = 0) -> LSN:
        if isinstance(value, str):
            return cls.parse(value)
        number = int.__new__(cls, value)
        if not 0 <= number <= _MAX:
            raise DecodeError(f"LSN {int(number)} out of range 0..2**64-1", 0)
        return number

    @classmethod
    def parse(cls, text: str) -> LSN:
        """Parse PostgreSQL's ``X/Y`` text (each half 1-8 hex digits).

        Raises:
            DecodeError: when the text is not two hex halves separated by ``/``.
        """
        high, sep, low = text.strip().partition("/")
        if (
            not sep
            or not 1 <= len(high) <= 8
            or not 1 <= len(low) <= 8
            or not _is_hex(high)
            or not _is_hex(low)
        ):
            raise DecodeError(f"invalid LSN {text!r}: expected X/Y with 1-8 hex digits each", 0)
        return int.__new__(cls, (int(high, 16) << 32) | int(low, 16))

    def __str__(self) -> str:
        value = int(self)
        return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"LSN('{self}')"

    def __format__(self, spec: str) -> str:
        # f"{lsn}" and f"{lsn:>20}" give the X/Y form; numeric types (f"{lsn:x}") the number.
        if spec and spec[-1] in "bcdoxXneEfFgG%":
            return int.__format__(self, spec)
        return format(str(self), spec)

    def __add__(self, other: int) -> LSN:
        if not isinstance(other, int):
            return NotImplemented
        return LSN(int(self) + int(other))

    __radd__ = __add__

    @overload
    def __sub__(self, other: LSN) -> int: ...
    @overload
    def __sub__(self, other: int) -> LSN | int: ...

    def __sub__(self, other: int) -> LSN | int:
        """``LSN - LSN`` is the byte distance (an ``int``), ``LSN - int`` an ``LSN``."""
        if isinstance(other, LSN):
            return int(self) - int(other)
        if not isinstance(other, int):
            return NotImplemented
        return LSN(int(self) - other)


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdefABCDEF" for ch in text)
