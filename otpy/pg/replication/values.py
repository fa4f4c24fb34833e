"""Tuple data -> ``dict`` of Python values, with psycopg's loaders.

:class:`ValueDecoder` keeps, per relation OID, the column names and one
psycopg loader per column and format, built once when the Relation message
arrives and rebuilt when a new Relation for the OID arrives or a type gets
registered.  Decoding a row is then a tight loop over (kind, bytes, loader).

It is also the *type registry* of a replication session: non-built-in types
(enums, composites, domains, hstore, user ranges...) are announced by Type
messages and need their catalog information.  :meth:`ValueDecoder.missing_types`
tells which OIDs are still unknown; the reader fetches their ``TypeInfo`` on a
normal connection (see :mod:`.typefetch`) and hands them to
:meth:`ValueDecoder.register_type` / :meth:`ValueDecoder.register_domain`.

Decoding never fails because of a value: a type without a loader is delivered
as its text (``bytes`` in binary format), a value whose loader raises is
delivered the same way, and either case is logged once per type, so a strange
value can never turn a transaction into a poison message that is redelivered
forever.  See ``docs/types.md`` for what each PostgreSQL type becomes.

User types change under a running reader (``ALTER TYPE ... ADD VALUE`` /
``ADD ATTRIBUTE``) and pgoutput does not say so: it announces a type once per
session, with the Relation of a table using it, and ``ALTER TYPE``
invalidates no table.  The first sign is a value the cached information
refuses.  With :attr:`ValueDecoder.refresh_on_failure` on, such a value of a
user type raises :class:`TypeRefreshNeeded` instead of falling back to text:
the reader re-fetches the type (:meth:`ValueDecoder.stale_types`) and decodes
the message again.  A refresh that finds the catalog unchanged backs the type
off for :attr:`ValueDecoder.REFRESH_BACKOFF` seconds, during which its refused
values fall back to text, so a value that no catalog can load never costs more
than one catalog query per type and back-off period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, ClassVar

import attrs
from psycopg import BaseConnection, postgres
from psycopg.abc import AdaptContext
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.enum import EnumInfo, register_enum
from psycopg.types.hstore import register_hstore
from psycopg.types.multirange import MultirangeInfo, register_multirange
from psycopg.types.range import RangeInfo, register_range

from .errors import RelationMismatchError, UnknownRelationError, ValueDecodingError
from .loaders import JSON_NULL, install_loaders, pad_short_records
from .pgoutput import UNCHANGED_TOAST, Relation, TupleData, Type

__all__ = [
    "JSON_NULL",
    "UNCHANGED_TOAST",
    "RelationMismatchError",
    "TypeRefreshNeeded",
    "UnknownRelationError",
    "ValueDecoder",
    "ValueDecodingError",
]

logger = logging.getLogger(__name__)

#: OIDs below this are built into PostgreSQL (FirstNormalObjectId); above it,
#: types come from CREATE TYPE / extensions and need their catalog entry.
FIRST_NORMAL_OID = 16384

_Load = Callable[[Any], Any]
_Row = Callable[[Any], dict[str, Any]]


class TypeRefreshNeeded(Exception):
    """A value of a user type failed to load with the cached type information.

    Raised by :meth:`ValueDecoder.decode` only when
    :attr:`ValueDecoder.refresh_on_failure` is on, so that the caller can
    refresh the types (:func:`~otpy.pg.wal_reader.typefetch.afetch_missing_types` does it) and
    decode the same tuple again; nothing was consumed.  It is the sign of an
    ``ALTER TYPE`` (a new enum label, a new composite attribute) after the type
    was fetched.  Not an error a user sees: the WAL reader handles it.

    Attributes:
        oids: the type OIDs of the columns whose values were refused.
    """

    def __init__(self, oids: frozenset[int]) -> None:
        super().__init__(f"values of user types {sorted(oids)} need fresh type information")
        self.oids = oids


def _signature(info: TypeInfo) -> Hashable:
    """What of a ``TypeInfo`` decides how its values load: equal when nothing changed."""
    return (
        type(info).__name__,
        info.name,
        info.array_oid,
        tuple(getattr(info, "labels", ())),
        tuple(getattr(info, "field_names", ())),
        tuple(getattr(info, "field_types", ())),
        getattr(info, "subtype_oid", None),
    )


class _Context:
    """AdaptContext with our own adapters map but the user's connection.

    The connection gives loaders the session's encoding and time zone; the
    private map lets us add loaders without touching the connection's.
    """

    __slots__ = ("_adapters", "_connection")

    def __init__(self, adapters: AdaptersMap, connection: BaseConnection[Any] | None) -> None:
        self._adapters = adapters
        self._connection = connection

    @property
    def adapters(self) -> AdaptersMap:
        return self._adapters

    @property
    def connection(self) -> BaseConnection[Any] | None:
        return self._connection


@attrs.frozen(slots=True)
class _Plan:
    """Per-relation decoding plan: names, per-column load functions, whole-row decoders.

    ``row_text``/``row_binary`` decode a whole row whose columns are all in
    one format (and NULLs), the common case, in one call: psycopg's
    ``Transformer.load_sequence`` (in C with psycopg's binary package) set up
    for this relation's column types, then a dict built by :func:`row_builder`.
    ``text``/``binary`` hold one load function per column for the other rows.
    """

    relation: Relation
    names: tuple[str, ...]
    text: tuple[_Load, ...]
    binary: tuple[_Load, ...]
    row_text: _Row
    row_binary: _Row


def row_builder(
    names: tuple[str, ...], load: Callable[[Any], Sequence[Any] | None], where: str
) -> _Row:
    """A function ``values -> {name: value}`` that loads ``values`` with ``load``.

    Written out per relation, as attrs and dataclasses write their methods:
    unpacking the loaded tuple into locals and building the dict with a
    literal costs half of ``dict(zip(names, load(values)))`` (0.15 against
    0.33 us for 5 columns), on the paths every row takes: the reader's (with
    psycopg's ``load_sequence``) and the snapshot's (with COPY's row parser).
    The names enter the source only as ``repr`` literals, so any column name
    is safe.
    A row of the wrong length raises (the unpacking, or ``load`` itself), and
    the caller's column-by-column path reports the mismatch; ``None`` from
    ``load`` (COPY's binary trailer) raises ``TypeError``.  ``where``
    names the function in tracebacks.
    """
    variables = [f"v{i}" for i in range(len(names))]
    items = ", ".join(f"{name!r}: {var}" for name, var in zip(names, variables, strict=True))
    source = (
        f"def row(values):\n    [{', '.join(variables)}] = load(values)\n    return {{{items}}}\n"
    )
    namespace: dict[str, Any] = {"load": load}
    exec(compile(source, f"<otpy row function of {where}>", "exec"), namespace)
    row: _Row = namespace["row"]
    return row


class ValueDecoder:
    """Turns pgoutput tuples into ``{column name: Python value}`` dicts.

    Args:
        context: a psycopg connection (preferably the replication connection,
            whose session settings produced the text values) or an
            ``AdaptersMap``; its adapters are *copied*, never modified.
            ``None`` means psycopg's global adapters.

    Usage on a stream::

        decoder = ValueDecoder(conn)
        ...
        case Relation(): decoder.add_relation(msg)
        case Type(): decoder.add_type(msg)
        case Insert():
            if decoder.missing_types(): await afetch_missing_types(aconn, decoder)
            row = decoder.decode(msg.relation_oid, msg.new)

    Values: SQL NULL -> ``None``; unchanged TOAST -> :data:`UNCHANGED_TOAST`;
    JSON ``null`` -> :data:`JSON_NULL`; everything else as in ``docs/types.md``.

    Args:
        clock: seconds, monotonic; times the refresh back-off (tests pass their own).

    Attributes:
        adapters: the decoder's private ``AdaptersMap``.  To customise a type,
            register a loader on it and call :meth:`refresh` (cached plans
            hold the previous loaders).
        refresh_on_failure: when true, a value of a user type that its loader
            refuses raises :class:`TypeRefreshNeeded` (unless the type is
            backing off) instead of being delivered as text.  Off by default:
            only a caller that refreshes types and decodes again may turn it on.
    """

    #: Seconds a type waits before another refresh, after a refresh that changed nothing.
    #: (During them its information counts as confirmed, see :meth:`refreshed`.)
    REFRESH_BACKOFF: ClassVar[float] = 1.0

    def __init__(
        self, context: AdaptContext | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        base = context.adapters if context is not None else postgres.adapters
        self.adapters = AdaptersMap(base)
        self._unwrapped = install_loaders(self.adapters)
        self._fast_context: _Context | None = None
        self._connection = context.connection if context is not None else None
        self._relations: dict[int, Relation] = {}
        self._plans: dict[int, _Plan] = {}
        self._type_names: dict[int, str] = {}
        # OIDs referenced by relations/Type messages that have no loader yet.
        self._missing: set[int] = set()
        # OIDs the caller gave up on (fetch failed): fall back to text silently.
        self._given_up: set[int] = set()
        # (oid, format) pairs already logged, so each problem is logged once.
        self._logged: set[tuple[int, int]] = set()
        self.refresh_on_failure = False
        self._clock = clock
        # User types to fetch again; those of them a refused value showed stale.
        self._stale: set[int] = set()
        self._refused: set[int] = set()
        # OID -> clock time before which a refused value does not ask for a refresh.
        self._backoff: dict[int, float] = {}
        # OID -> clock time until which the catalog is known to match (see _confirmed).
        self._confirmed_until: dict[int, float] = {}
        # OID -> _signature of what was registered; domain -> (base, array).
        self._signatures: dict[int, Hashable] = {}
        self._domains: dict[int, tuple[int, int]] = {}
        # A registration changed a known type since the last refreshed().
        self._changed = False
        self._tx = Transformer(_Context(self.adapters, self._connection))

    # ------------------------------------------------------------------ registry

    def add_relation(self, relation: Relation) -> None:
        """Record (or replace) a relation description; its plan is rebuilt lazily."""
        self._relations[relation.oid] = relation
        self._plans.pop(relation.oid, None)
        for column in relation.columns:
            self._note_type(column.type_oid)

    def add_type(self, message: Type) -> None:
        """Record a Type message: remember its name and whether it needs fetching.

        A Type for an OID already registered means pgoutput sent the Relation
        of a table again (its relation cache entry was invalidated): the type
        is refreshed too, as the cheapest chance to notice a change that no
        value refuses (a renamed attribute).
        """
        self._type_names[message.oid] = (
            f"{message.namespace}.{message.name}" if message.namespace else message.name
        )
        if message.oid in self._signatures:
            self._stale.add(message.oid)
        self._note_type(message.oid)

    def relation(self, oid: int) -> Relation:
        """The last Relation received for ``oid``.

        Raises:
            UnknownRelationError: when none was received.
        """
        try:
            return self._relations[oid]
        except KeyError:
            raise UnknownRelationError(f"no Relation message received for OID {oid}") from None

    def type_name(self, oid: int) -> str | None:
        """A name for ``oid``: from a Type message or psycopg's registry, else None."""
        name = self._type_names.get(oid)
        if name is None:
            info = self.adapters.types.get(oid)
            name = info.name if info is not None else None
        return name

    def _note_type(self, oid: int) -> None:
        if (
            oid >= FIRST_NORMAL_OID
            and oid not in self._given_up
            and self.adapters.get_loader(oid, Format.TEXT) is None
        ):
            self._missing.add(oid)

    def missing_types(self) -> frozenset[int]:
        """OIDs of user types to fetch: seen with no loader yet, or :meth:`stale_types`.

        Until they are registered (or :meth:`give_up` is called) their values
        are delivered as text.  The reader should resolve them (see
        :func:`~otpy.pg.wal_reader.typefetch.afetch_missing_types`) before decoding rows.
        """
        return frozenset(self._missing | self._stale)

    def stale_types(self) -> frozenset[int]:
        """OIDs of registered user types to fetch again: a value refused them, or pgoutput
        announced them again.  Answered by :meth:`refreshed` once they were fetched."""
        return frozenset(self._stale)

    def refreshed(self, oids: Iterable[int]) -> None:
        """The stale ``oids`` (and what they depend on) were fetched again, or the attempt
        failed: stop asking.

        If no registration since the previous call changed a known type, the
        catalog had nothing new for them.  Those a refused value made stale
        then back off for :attr:`REFRESH_BACKOFF` seconds (their refused values
        are delivered as text meanwhile), so a value no catalog can load cannot
        make every row cost a catalog query; a type pgoutput merely announced
        again does not back off.  For as long, the information of all of them
        counts as confirmed: a composite record with fewer fields than the
        type was written before ``ADD ATTRIBUTE`` and loads with NULL for the
        new attributes.
        """
        oids = set(oids)
        refused = self._refused & oids
        self._stale -= oids
        self._refused -= oids
        if not self._changed:
            until = self._clock() + self.REFRESH_BACKOFF
            for oid in oids:
                self._confirmed_until[oid] = until
            for oid in refused:
                self._backoff[oid] = until
        self._changed = False

    def _confirmed(self, oid: int) -> bool:
        """A refresh of ``oid`` found the catalog unchanged less than REFRESH_BACKOFF ago.

        Then a composite record shorter than the type was written before an
        ``ADD ATTRIBUTE`` and may be padded (see :func:`.loaders.pad_short_records`).
        """
        return self._clock() < self._confirmed_until.get(oid, float("-inf"))

    def _note_signature(self, oid: int, signature: Hashable) -> None:
        previous = self._signatures.get(oid)
        if previous is not None and previous != signature:
            self._changed = True
        self._signatures[oid] = signature

    def register_type(self, info: TypeInfo) -> None:
        """Register fetched type information and the loaders that go with it.

        Accepts psycopg's ``EnumInfo``, ``CompositeInfo``, ``RangeInfo``,
        ``MultirangeInfo`` and, for ``hstore``, a plain ``TypeInfo``; any other
        ``TypeInfo`` only registers its array OID (values stay text).  Plans
        are rebuilt, since a loader may now exist where the text was used.
        """
        if isinstance(info, EnumInfo):
            register_enum(info, self.adapters)
        elif isinstance(info, CompositeInfo):
            register_composite(info, self.adapters)
            pad_short_records(self.adapters, info, self._confirmed)
        elif isinstance(info, MultirangeInfo):
            register_multirange(info, self.adapters)
        elif isinstance(info, RangeInfo):
            register_range(info, self.adapters)
        elif info.name == "hstore":
            register_hstore(info, self.adapters)
        else:
            info.register(self.adapters)
            self._given_up.add(info.oid)
        self._note_signature(info.oid, _signature(info))
        # Domains over this type copied its previous loaders: copy the new ones.
        for domain, (base, array) in list(self._domains.items()):
            if base == info.oid:
                self.register_domain(domain, base, array)
        self._resolved(info.oid, info.array_oid)

    def register_domain(self, oid: int, base_oid: int, array_oid: int = 0) -> None:
        """Load the domain ``oid`` (and its array type) with its base type's loaders.

        pgoutput sends domain values in the base type's text/binary form but
        tags them with the domain's OID, which psycopg does not know.
        """
        base_array = 0
        base_info = self.adapters.types.get(base_oid)
        if base_info is not None:
            base_array = base_info.array_oid
        for fmt in (Format.TEXT, Format.BINARY):
            loader = self.adapters.get_loader(base_oid, fmt)
            if loader is not None:
                self.adapters.register_loader(oid, loader)
            if array_oid and base_array:
                array_loader = self.adapters.get_loader(base_array, fmt)
                if array_loader is not None:
                    self.adapters.register_loader(array_oid, array_loader)
        self._domains[oid] = (base_oid, array_oid)
        self._note_signature(oid, (base_oid, array_oid))
        for domain, (base, array) in list(self._domains.items()):
            if base == oid and domain != oid:  # a domain over this domain
                self.register_domain(domain, base, array)
        self._resolved(oid, array_oid)

    def register_as_text(self, oid: int, name: str, array_oid: int = 0) -> None:
        """Load ``oid`` (and its array type) like ``text``: for string-like extension types.

        ``citext`` and similar types send their text in both formats; without
        this, binary mode would deliver them as ``bytes``.
        """
        for fmt in (Format.TEXT, Format.BINARY):
            loader = self.adapters.get_loader(postgres.types.get_oid("text"), fmt)
            if loader is not None:
                self.adapters.register_loader(oid, loader)
        # Registering the TypeInfo registers array loaders for its array OID.
        TypeInfo(name, oid, array_oid).register(self.adapters)
        self._resolved(oid, array_oid)

    def refresh(self) -> None:
        """Drop cached loaders and plans, after loaders were registered on :attr:`adapters`."""
        self._resolved()

    def give_up(self, oid: int) -> None:
        """Stop asking for ``oid`` (e.g. its fetch failed): its values stay text."""
        self._given_up.add(oid)
        self._missing.discard(oid)

    def _resolved(self, *oids: int) -> None:
        for oid in oids:
            self._missing.discard(oid)
        # Loaders changed: cached loaders (ours and the transformer's) are stale.
        self._tx = Transformer(_Context(self.adapters, self._connection))
        self._fast_context = None
        self._plans.clear()

    # ------------------------------------------------------------------ decoding

    def _plan(self, oid: int) -> _Plan:
        relation = self.relation(oid)
        text: list[_Load] = []
        binary: list[_Load] = []
        for column in relation.columns:
            text.append(self._load_function(column.type_oid, Format.TEXT))
            binary.append(self._load_function(column.type_oid, Format.BINARY))
        oids = [c.type_oid for c in relation.columns]
        context = self.fast_context()
        text_tx, binary_tx = Transformer(context), Transformer(context)
        text_tx.set_loader_types(oids, Format.TEXT)
        binary_tx.set_loader_types(oids, Format.BINARY)
        names = tuple(c.name for c in relation.columns)
        where = f"{relation.namespace}.{relation.name}"
        plan = _Plan(
            relation,
            names,
            tuple(text),
            tuple(binary),
            row_builder(names, text_tx.load_sequence, f"{where}, text"),
            row_builder(names, binary_tx.load_sequence, f"{where}, binary"),
        )
        self._plans[oid] = plan
        return plan

    def fast_context(self) -> AdaptContext:
        """Context of the whole-row fast path: date/time loaders without infinity wrappers.

        The wrappers cost a Python call per value; psycopg's own loaders raise
        on infinity instead, which sends the row to the careful path (that
        uses the wrapped loaders): same result, fast in the common case.
        Readers of the same tables outside the stream (the snapshot's COPY)
        load with it, and pass a row it refuses to :meth:`decode`.
        """
        if self._fast_context is None:
            adapters = AdaptersMap(self.adapters)
            for (oid, fmt), (loader, wrapper) in self._unwrapped.items():
                if self.adapters.get_loader(oid, fmt) is wrapper:  # not customised since
                    adapters.register_loader(oid, loader)
            self._fast_context = _Context(adapters, self._connection)
        return self._fast_context

    def _load_function(self, oid: int, fmt: Format) -> _Load:
        if self.adapters.get_loader(oid, fmt) is None:
            key = (oid, int(fmt))
            if key not in self._logged and oid not in self._given_up:
                self._logged.add(key)
                logger.warning(
                    "no loader for type %s (oid %d) in %s format: delivering %s",
                    self.type_name(oid) or "?",
                    oid,
                    fmt.name.lower(),
                    "text" if fmt == Format.TEXT else "bytes",
                )
            return _as_text if fmt == Format.TEXT else bytes
        load: _Load = self._tx.get_loader(oid, fmt).load
        return load

    def decode(self, relation_oid: int, data: TupleData) -> dict[str, Any]:
        """Decode one tuple of relation ``relation_oid`` into ``{name: value}``.

        Raises:
            UnknownRelationError: no Relation was received for the OID.
            RelationMismatchError: the tuple's column count differs from the
                Relation's (a protocol inconsistency, not a bad value).
        """
        plan = self._plans.get(relation_oid) or self._plan(relation_oid)
        kinds = data.kinds
        # Fast path: one format (and NULLs) only: load the whole row in one call.
        # Anything unusual in it (a value a loader refuses, a column count that
        # does not match) raises, and the row takes the column-by-column path.
        try:
            if 117 not in kinds:  # no unchanged TOAST
                if 98 not in kinds:  # text and NULL only
                    return plan.row_text(data.values)
                if 116 not in kinds:  # binary and NULL only
                    return plan.row_binary(data.values)
        except Exception:  # decoded again below, with a verdict per column
            pass
        return self._decode_columns(plan, data)

    def _decode_columns(self, plan: _Plan, data: TupleData) -> dict[str, Any]:
        """Decode column by column: mixed formats, unchanged TOAST, values a loader refuses.

        A value whose loader raises is delivered as its text (``bytes`` in
        binary format), logged once per type.
        """
        names = plan.names
        if len(names) != len(data.values):
            raise RelationMismatchError(
                f"tuple has {len(data.values)} columns, relation "
                f"{plan.relation.namespace}.{plan.relation.name} has {len(names)}"
            )
        out: dict[str, Any] = {}
        stale: set[int] = set()
        for i, (name, kind, value) in enumerate(zip(names, data.kinds, data.values, strict=True)):
            if kind == 116 or kind == 98:  # 't', 'b'
                load = plan.text[i] if kind == 116 else plan.binary[i]
                try:
                    out[name] = load(value)
                except Exception as exc:
                    oid = plan.relation.columns[i].type_oid
                    if self.refresh_on_failure and self._may_refresh(oid):
                        stale.add(oid)
                    else:
                        out[name] = self._undecodable(plan, i, kind, value, exc)  # type: ignore[arg-type]
            elif kind == 110:  # 'n'
                out[name] = None
            else:
                out[name] = UNCHANGED_TOAST
        if stale:
            self._stale |= stale
            self._refused |= stale
            raise TypeRefreshNeeded(frozenset(stale))
        return out

    def _may_refresh(self, oid: int) -> bool:
        """A user type (or array of one) whose information may be fetched again now."""
        return oid >= FIRST_NORMAL_OID and self._clock() >= self._backoff.get(oid, 0.0)

    def _undecodable(self, plan: _Plan, index: int, kind: int, value: bytes, exc: Exception) -> Any:
        """A value its loader refused: log once per type, deliver the raw form."""
        oid = plan.relation.columns[index].type_oid
        key = (oid, -1 - (kind == 98))
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(
                "cannot load a value of type %s (oid %d), column %s.%s: %s; "
                "delivering it as %s (logged once per type)",
                self.type_name(oid) or "?",
                oid,
                plan.relation.name,
                plan.names[index],
                exc,
                "text" if kind == 116 else "bytes",
            )
        return _as_text(value) if kind == 116 else bytes(value)

    def decode_relation(
        self, relation_oid: int, tuples: Iterable[TupleData]
    ) -> list[dict[str, Any]]:
        """Decode several tuples of one relation (convenience for batches)."""
        return [self.decode(relation_oid, data) for data in tuples]


def _as_text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
