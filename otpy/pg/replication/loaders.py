"""Extra psycopg loaders used by :class:`~.values.ValueDecoder`.

psycopg loads nearly every built-in type, but three things stop it from being
used as-is on a replication stream, where a value that fails to load must
never become a poison transaction:

* ``date``/``timestamp``/``timestamptz`` ``infinity`` raise ``DataError``: we
  deliver ``date.max``/``date.min``, ``datetime.max``/``datetime.min`` (aware,
  UTC, for timestamptz), the convention psycopg's own documentation suggests.
* top-level JSON ``null`` loads as ``None``, indistinguishable from SQL NULL:
  we deliver the :data:`JSON_NULL` sentinel instead.
* some built-in types have no loader at all; for those whose Python form is
  obvious we add one, identical in text and binary format: ``money`` ->
  ``Decimal``, ``pg_lsn`` -> :class:`~.lsn.LSN`, ``point`` -> ``(x, y)``,
  ``xid``/``xid8``/``cid`` -> ``int``, ``reg*`` OID aliases -> the name
  (text) or the OID (binary, all the server sends), and, in binary format, the text form of
  ``macaddr``/``macaddr8``/``bit``/``varbit``/``xml``/``tsvector`` (which are
  delivered as ``str`` in text format).
* a composite value written before ``ALTER TYPE ... ADD ATTRIBUTE`` has fewer
  fields than the type has now, and psycopg's composite loaders refuse it:
  :func:`pad_short_records` makes them read the missing trailing fields as
  NULL, which is what ``SELECT`` gives for such a row, when the caller knows
  the type information is current.

Everything is registered on the decoder's *own* copy of the adapters map, so
a user's connection is never modified.
"""

from __future__ import annotations

import enum
import json
import socket
import struct
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from psycopg import DataError, abc, postgres
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format
from psycopg.types import json as _psycopg_json
from psycopg.types import net as _psycopg_net
from psycopg.types.composite import CompositeInfo

from .lsn import LSN

__all__ = ["FORMAT_DEPENDENT", "JSON_NULL", "JsonNull", "install_loaders", "pad_short_records"]


class JsonNull(enum.Enum):
    """Type of :data:`JSON_NULL`."""

    JSON_NULL = "json-null"

    def __repr__(self) -> str:
        return "JSON_NULL"


#: A json/jsonb value that is the JSON literal ``null`` (SQL NULL is ``None``).
JSON_NULL: Final = JsonNull.JSON_NULL

_INT32_MAX = b"\x7f\xff\xff\xff"
_INT32_MIN = b"\x80\x00\x00\x00"
_INT64_MAX = b"\x7f\xff\xff\xff\xff\xff\xff\xff"
_INT64_MIN = b"\x80\x00\x00\x00\x00\x00\x00\x00"
_DT_MAX_UTC = datetime.max.replace(tzinfo=UTC)
_DT_MIN_UTC = datetime.min.replace(tzinfo=UTC)
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes
_new_object = object.__new__


def _infinity_loader(
    base: type[abc.Loader], fmt: Format, special: dict[bytes, Any]
) -> type[Loader]:
    """A loader that delegates to ``base`` and answers ``special`` values when it refuses them.

    Catching the error instead of checking first keeps the normal case at the
    cost of one extra call: infinity is rare.
    """

    class InfinityLoader(Loader):
        format = fmt

        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            self._load = base(oid, context).load

        def load(self, data: Buffer) -> Any:
            try:
                return self._load(data)
            except DataError:
                hit = special.get(bytes(data), _MISS)
                if hit is _MISS:
                    raise
                return hit

    InfinityLoader.__name__ = InfinityLoader.__qualname__ = f"Infinity{base.__name__}"
    return InfinityLoader


#: The C scanner behind ``json.loads``: it parses one JSON value at an offset.
_json_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_loader(base: type[abc.Loader], fmt: Format) -> type[Loader]:
    """A json/jsonb loader that returns :data:`JSON_NULL` for the JSON literal ``null``.

    When ``base`` parses with :func:`json.loads` (psycopg's default, not a
    ``set_json_loads`` function), a value is parsed by json's C scanner
    directly: ``json.loads`` on bytes first guesses the encoding and matches
    whitespace around the value, four times the cost of the parse on a small
    document.  The server's output is UTF-8 without a BOM and, for jsonb,
    without surrounding whitespace; anything else (``json`` keeps the text as
    written) makes the scanner stop short, and the value is loaded by
    ``base``: the result is always what ``json.loads`` gives.
    """
    # psycopg's own load methods: plain text, and jsonb binary (a version byte, then text).
    method = getattr(base, "load", None)
    jsonb_binary = method is _psycopg_json.JsonbBinaryLoader.load
    known = jsonb_binary or method is _psycopg_json.JsonLoader.load

    # Where the JSON text starts: after jsonb's binary version byte, which the
    # scanner skips instead of a copy of the value without it.
    start = 1 if jsonb_binary else 0

    class JsonNullLoader(Loader):
        format = fmt

        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            loader = base(oid, context)
            self._load = loader.load
            if not (known and getattr(loader, "loads", None) is json.loads):
                self.load = self._slow  # type: ignore[method-assign]

        def load(self, data: Buffer) -> Any:
            try:
                text = str(data, "utf-8")
                value, end = _json_scan(text, start)
            except (StopIteration, ValueError):
                return self._slow(data)
            if end != len(text) or (start and text[0] != "\x01"):
                return self._slow(data)
            return JSON_NULL if value is None else value

        def _slow(self, data: Buffer) -> Any:
            value = self._load(data)
            return JSON_NULL if value is None else value

    JsonNullLoader.__name__ = JsonNullLoader.__qualname__ = f"JsonNull{base.__name__}"
    return JsonNullLoader


def _stdlib_ipv4(value: int) -> IPv4Address:
    return IPv4Address(value)


def _stdlib_ipv6(value: int) -> IPv6Address:
    return IPv6Address(value)


def _slot_ipv4(value: int) -> IPv4Address:
    address: IPv4Address = _new_object(IPv4Address)
    address._ip = value  # type: ignore[attr-defined]
    return address


def _slot_ipv6(value: int) -> IPv6Address:
    address: IPv6Address = _new_object(IPv6Address)
    address._ip = value  # type: ignore[attr-defined]
    address._scope_id = None  # type: ignore[attr-defined]
    return address


def _address_builders() -> tuple[Callable[[int], IPv4Address], Callable[[int], IPv6Address]]:
    """Functions ``int -> IPv4Address / IPv6Address``, as fast as this Python allows.

    ``IPv4Address(int)`` range-checks its argument in Python (0.26 us); an
    address is only its ``_ip`` slot (and ``_scope_id`` for IPv6), which
    filling directly builds the same object in 0.12 us.  The loaders below
    only pass integers that fit (4 or 16 bytes).  Those slots are private to
    :mod:`ipaddress`, so the shortcut is used only if, on this Python, it
    builds addresses equal in every observable way to the constructor's;
    otherwise the constructor is.
    """
    samples: list[tuple[Any, Any]] = []
    try:
        samples += [(_slot_ipv4(v), IPv4Address(v)) for v in (0, 0x0A030401, 2**32 - 1)]
        samples += [(_slot_ipv6(v), IPv6Address(v)) for v in (0, 1, 0xFFFF01020304, 2**128 - 1)]
        same = all(
            a == b and hash(a) == hash(b) and str(a) == str(b) and repr(a) == repr(b)
            and a.packed == b.packed and getattr(a, "scope_id", None) is None
            and getattr(b, "scope_id", None) is None
            for a, b in samples
        )  # fmt: skip
    except Exception:  # any difference means: do not take the shortcut
        same = False
    return (_slot_ipv4, _slot_ipv6) if same else (_stdlib_ipv4, _stdlib_ipv6)


_ipv4, _ipv6 = _address_builders()


def _inet_loader(base: type[abc.Loader]) -> type[Loader]:
    """``inet`` text loader: a host address parsed by ``inet_pton``, the rest by ``base``.

    psycopg parses with :func:`ipaddress.ip_address`, in Python (2 us); the
    packed form from ``socket.inet_pton`` gives the same ``IPv4Address`` /
    ``IPv6Address`` in 0.3 us.  Values with a prefix (interfaces) and
    anything ``inet_pton`` refuses go to ``base``, so the result is psycopg's.
    """

    class FastInetLoader(Loader):
        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            self._load = base(oid, context).load

        def load(self, data: Buffer) -> Any:
            try:  # inet_pton refuses a prefix ("/24"): those go to base
                text = str(data, "utf-8")
                if ":" in text:
                    return _ipv6(_from_bytes(_inet_pton(_AF_INET6, text), "big"))
                return _ipv4(_from_bytes(_inet_pton(_AF_INET, text), "big"))
            except (OSError, ValueError):
                return self._load(data)

    FastInetLoader.__name__ = FastInetLoader.__qualname__ = f"Fast{base.__name__}"
    return FastInetLoader


#: Binary ``inet`` headers (family, prefix length, is-cidr, address size) of host
#: addresses, as big-endian integers: ``02 20 00 04`` and ``03 80 00 10``.
_INET4_HOST = 0x02200004
_INET6_HOST = 0x03800010
_MASK32 = (1 << 32) - 1
_MASK128 = (1 << 128) - 1


def _inet_binary_loader(base: type[abc.Loader]) -> type[Loader]:
    """``inet`` binary loader: host addresses built here, the rest by ``base``.

    psycopg's binary loader is Python that ends in the ``IPv4Address`` /
    ``IPv6Address`` constructor (0.35 us per value); a host address (the
    header says: full prefix, not cidr, 4 or 16 bytes) is built from its
    integer in 0.18 us.  Interfaces (a shorter prefix) and anything
    unexpected go to ``base``, so the result is psycopg's.
    """

    class FastInetBinaryLoader(Loader):
        format = Format.BINARY

        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            self._load = base(oid, context).load

        def load(self, data: Buffer) -> Any:
            # Header and address as one integer: no slice, one conversion.
            value = _from_bytes(data, "big")
            size = len(data)
            if size == 8 and value >> 32 == _INET4_HOST:
                return _ipv4(value & _MASK32)
            if size == 20 and value >> 128 == _INET6_HOST:
                return _ipv6(value & _MASK128)
            return self._load(data)

    FastInetBinaryLoader.__name__ = FastInetBinaryLoader.__qualname__ = f"Fast{base.__name__}"
    return FastInetBinaryLoader


_MISS = object()


class MoneyLoader(Loader):
    """``money`` text (``$1,234.56``, ``-$0.50``) -> ``Decimal``.

    Assumes ``lc_monetary`` uses ``.`` as the decimal point (C, POSIX, en_*),
    as the text form is locale-dependent.
    """

    def load(self, data: Buffer) -> Decimal:
        text = bytes(data).decode()
        negative = "-" in text or "(" in text
        digits = "".join(ch for ch in text if ch.isdigit() or ch == ".")
        try:
            value = Decimal(digits)
        except InvalidOperation as exc:
            raise ValueError(f"cannot parse money value {text!r}") from exc
        return -value if negative else value


class MoneyBinaryLoader(Loader):
    """``money`` binary (int64 in cents) -> ``Decimal`` with 2 fraction digits."""

    format = Format.BINARY

    def load(self, data: Buffer) -> Decimal:
        return Decimal(struct.unpack(">q", data)[0]).scaleb(-2)


class LsnLoader(Loader):
    """``pg_lsn`` text -> :class:`~.lsn.LSN`."""

    def load(self, data: Buffer) -> LSN:
        return LSN.parse(bytes(data).decode())


class LsnBinaryLoader(Loader):
    """``pg_lsn`` binary (uint64) -> :class:`~.lsn.LSN`."""

    format = Format.BINARY

    def load(self, data: Buffer) -> LSN:
        return LSN(struct.unpack(">Q", data)[0])


class PointLoader(Loader):
    """``point`` text ``(x,y)`` -> ``(float, float)``."""

    def load(self, data: Buffer) -> tuple[float, float]:
        x, y = bytes(data).strip(b"()").split(b",")
        return float(x), float(y)


class PointBinaryLoader(Loader):
    """``point`` binary (two float8) -> ``(float, float)``."""

    format = Format.BINARY

    def load(self, data: Buffer) -> tuple[float, float]:
        x, y = struct.unpack(">dd", data)
        return x, y


class IntTextLoader(Loader):
    """Integer-valued types without a psycopg loader (``xid``, ``xid8``, ``cid``)."""

    def load(self, data: Buffer) -> int:
        return int(bytes(data))


class UIntBinaryLoader(Loader):
    """Unsigned big-endian integer of any width (``xid``/``cid`` 4 bytes, ``xid8`` 8)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> int:
        return int.from_bytes(data, "big")


class StrTextLoader(Loader):
    """The text form as ``str`` (for text-only types: macaddr, bit, xml, tsvector...)."""

    def load(self, data: Buffer) -> str:
        return bytes(data).decode()


class MacaddrBinaryLoader(Loader):
    """``macaddr``/``macaddr8`` binary -> the server's text form ``08:00:2b:01:02:03``."""

    format = Format.BINARY

    def load(self, data: Buffer) -> str:
        return bytes(data).hex(":")


class BitBinaryLoader(Loader):
    """``bit``/``varbit`` binary (int32 bit count + bytes) -> ``'0101'`` like the text form."""

    format = Format.BINARY

    def load(self, data: Buffer) -> str:
        raw = bytes(data)
        nbits = struct.unpack_from(">i", raw)[0]
        bits = "".join(f"{byte:08b}" for byte in raw[4:])
        if not 0 <= nbits <= len(bits):
            raise ValueError(f"bit string of {nbits} bits in {len(raw) - 4} bytes")
        return bits[:nbits]


class XmlBinaryLoader(Loader):
    """``xml`` binary is the document text -> ``str``."""

    format = Format.BINARY

    def load(self, data: Buffer) -> str:
        return bytes(data).decode()


class TsvectorBinaryLoader(Loader):
    """``tsvector`` binary -> the same string the server's text output gives."""

    format = Format.BINARY

    def load(self, data: Buffer) -> str:
        raw = bytes(data)
        (count,) = struct.unpack_from(">i", raw)
        pos = 4
        out = []
        for _ in range(count):
            end = raw.index(b"\0", pos)
            lexeme = raw[pos:end].decode().replace("\\", "\\\\").replace("'", "''")
            pos = end + 1
            (npos,) = struct.unpack_from(">H", raw, pos)
            pos += 2
            positions = struct.unpack_from(f">{npos}H", raw, pos)
            pos += 2 * npos
            word = f"'{lexeme}'"
            if positions:
                word += ":" + ",".join(
                    f"{p & 0x3FFF}{'DCBA'[p >> 14] if p >> 14 else ''}" for p in positions
                )
            out.append(word)
        if pos != len(raw):
            raise ValueError("trailing bytes in tsvector")
        return " ".join(out)


_OID_ALIASES = (
    "regclass", "regtype", "regproc", "regprocedure", "regoper", "regoperator",
    "regconfig", "regdictionary", "regnamespace", "regrole", "regcollation",
)  # fmt: skip

#: Types whose values differ between the text and the binary format with
#: :func:`install_loaders`' loaders, and their arrays: the ``reg*`` aliases
#: (a name, or an OID) and ``"char"`` (the empty value is ``''`` in text,
#: ``'\x00'`` in binary).
#: For every other type with loaders in both formats, both give the same
#: value, so a reader may pick the cheaper format (the snapshot's COPY does).
FORMAT_DEPENDENT: frozenset[int] = frozenset(
    oid
    for info in map(postgres.types.get, (*_OID_ALIASES, '"char"'))
    if info is not None
    for oid in (info.oid, info.array_oid)
)


def install_loaders(
    adapters: AdaptersMap,
) -> dict[tuple[int, Format], tuple[type[abc.Loader], type[abc.Loader]]]:
    """Register the loaders described in the module docstring on ``adapters``.

    Returns, by (oid, format), the date/time loaders that were wrapped and
    their wrappers: a whole-row fast path can use psycopg's loaders directly
    and fall back to the wrapped ones only when they refuse a value.
    """
    oid = postgres.types.get_oid
    replaced: dict[tuple[int, Format], tuple[type[abc.Loader], type[abc.Loader]]] = {}

    def wrap(name: str, special_text: dict[bytes, Any], special_binary: dict[bytes, Any]) -> None:
        type_oid = oid(name)
        for fmt, special in ((Format.TEXT, special_text), (Format.BINARY, special_binary)):
            base = adapters.get_loader(type_oid, fmt)
            if base is not None:
                wrapper = _infinity_loader(base, fmt, special)
                replaced[type_oid, fmt] = (base, wrapper)
                adapters.register_loader(type_oid, wrapper)

    wrap("date", {b"infinity": date.max, b"-infinity": date.min},
         {_INT32_MAX: date.max, _INT32_MIN: date.min})  # fmt: skip
    wrap("timestamp", {b"infinity": datetime.max, b"-infinity": datetime.min},
         {_INT64_MAX: datetime.max, _INT64_MIN: datetime.min})  # fmt: skip
    wrap("timestamptz", {b"infinity": _DT_MAX_UTC, b"-infinity": _DT_MIN_UTC},
         {_INT64_MAX: _DT_MAX_UTC, _INT64_MIN: _DT_MIN_UTC})  # fmt: skip
    for name in ("json", "jsonb"):
        type_oid = oid(name)
        for fmt in (Format.TEXT, Format.BINARY):
            base = adapters.get_loader(type_oid, fmt)
            if base is not None:
                adapters.register_loader(type_oid, _json_loader(base, fmt))
    inet = adapters.get_loader(oid("inet"), Format.TEXT)
    if inet is not None and inet.load is _psycopg_net.InetLoader.load:  # not customised
        adapters.register_loader(oid("inet"), _inet_loader(inet))
    inet = adapters.get_loader(oid("inet"), Format.BINARY)
    if inet is not None and inet.load is _psycopg_net.InetBinaryLoader.load:  # not customised
        adapters.register_loader(oid("inet"), _inet_binary_loader(inet))

    simple: list[tuple[str, type[Loader], type[Loader]]] = [
        ("money", MoneyLoader, MoneyBinaryLoader),
        ("pg_lsn", LsnLoader, LsnBinaryLoader),
        ("point", PointLoader, PointBinaryLoader),
        ("xid", IntTextLoader, UIntBinaryLoader),
        ("xid8", IntTextLoader, UIntBinaryLoader),
        ("cid", IntTextLoader, UIntBinaryLoader),
        ("macaddr", StrTextLoader, MacaddrBinaryLoader),
        ("macaddr8", StrTextLoader, MacaddrBinaryLoader),
        ("bit", StrTextLoader, BitBinaryLoader),
        ("varbit", StrTextLoader, BitBinaryLoader),
        ("xml", StrTextLoader, XmlBinaryLoader),
        ("tsvector", StrTextLoader, TsvectorBinaryLoader),
    ]
    # OID alias types: the server prints a name in text format but sends the OID in binary.
    for name in _OID_ALIASES:
        if postgres.types.get(name) is not None:
            simple.append((name, StrTextLoader, UIntBinaryLoader))
    for name, text_loader, binary_loader in simple:
        type_oid = oid(name)
        adapters.register_loader(type_oid, text_loader)
        adapters.register_loader(type_oid, binary_loader)
    return replaced


_FIELD_COUNT = struct.Struct(">i")
_NULL_FIELD = struct.Struct(">Ii")


def _text_record_fields(data: bytes) -> int:
    """How many fields the text form of a record, ``(1,"a,b",)``, has.

    ``record_out`` quotes a field holding a comma, a quote or a backslash, and
    doubles the quotes and backslashes in it: counting the commas outside
    quotes, skipping the character after a backslash, is enough.
    """
    count = 1
    quoted = False
    skip = False
    for ch in data[1:-1]:
        if skip:
            skip = False
        elif ch == 0x5C:  # backslash
            skip = True
        elif ch == 0x22:  # a doubled quote toggles twice
            quoted = not quoted
        elif ch == 0x2C and not quoted:
            count += 1
    return count


def _padded_text(data: bytes, info: CompositeInfo) -> bytes | None:
    missing = len(info.field_types) - _text_record_fields(data)
    if missing <= 0 or not data.endswith(b")"):
        return None
    return data[:-1] + b"," * missing + b")"  # an empty field is NULL


def _padded_binary(data: bytes, info: CompositeInfo) -> bytes | None:
    if len(data) < 4:
        return None
    (count,) = _FIELD_COUNT.unpack_from(data)
    if not 0 <= count < len(info.field_types):
        return None
    nulls = b"".join(_NULL_FIELD.pack(oid, -1) for oid in info.field_types[count:])
    return _FIELD_COUNT.pack(len(info.field_types)) + data[4:] + nulls


def pad_short_records(
    adapters: AdaptersMap, info: CompositeInfo, allowed: Callable[[int], bool]
) -> None:
    """Let the loaders of composite ``info`` read records with fewer fields as trailing NULLs.

    Call after ``register_composite(info, adapters)``.  A record stored before
    ``ALTER TYPE ... ADD ATTRIBUTE`` keeps its old field count, and pgoutput
    sends it so (the walsender decodes with the catalog of the time); a
    reader that fetched the type afterwards would refuse it.  But a short
    record is also what a ``DROP ATTRIBUTE`` made after ``info`` was fetched
    gives, and padding it would shift its values under the wrong names: so a
    short record is padded only when ``allowed(info.oid)`` says the caller
    just confirmed ``info`` against the catalog; otherwise it is refused as
    before.  A record with *more* fields than ``info`` is always refused.
    Costs nothing for a record of the right length.
    """
    for fmt, pad in ((Format.TEXT, _padded_text), (Format.BINARY, _padded_binary)):
        base = adapters.get_loader(info.oid, fmt)
        if base is None:
            continue

        def load(self: Any, data: Buffer, _base: Any = base, _pad: Any = pad) -> Any:
            try:
                return _base.load(self, data)
            except Exception:
                padded = _pad(bytes(data), info) if allowed(info.oid) else None
                if padded is None:
                    raise
                return _base.load(self, padded)

        padded_loader = type(f"Padded{base.__name__}", (base,), {"load": load})
        adapters.register_loader(info.oid, padded_loader)
