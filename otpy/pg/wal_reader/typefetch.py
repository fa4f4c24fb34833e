"""Fetch the catalog information of user types a :class:`~.values.ValueDecoder` is missing.

The replication connection cannot run these queries (a ``replication=database``
session accepts only simple queries, and the walsender is busy streaming), so
they run on a *normal* connection to the same database.  Both a blocking
version (psycopg ``Connection``) and an awaitable one (psycopg
``AsyncConnection``, including otpy's trio connection) are provided.

The protocol is written once, as psycopg writes its own (``psycopg.generators``):
:func:`resolve_missing_types` is a generator that *yields* the queries it
needs (:class:`DescribeTypes`, :class:`FetchInfo`) and is *sent* their
answers; it does no I/O.  :func:`fetch_missing_types` and
:func:`afetch_missing_types` are its two drivers, a few lines each, which run
each query on a blocking or an async connection.  The rules below are thus
the same for both by construction, and testable without a server.

Resolution per OID, from ``pg_type``:

* enum / composite / range / multirange -> ``EnumInfo`` / ``CompositeInfo`` /
  ``RangeInfo`` / ``MultirangeInfo`` fetched by qualified name and registered;
* ``hstore`` -> ``TypeInfo`` + ``register_hstore``;
* domain -> its base type's loaders (the base is resolved too, if it is a
  user type itself);
* a string-category base type (``citext``...) -> loaded like ``text``;
* array of a user type -> resolve the element type (its info registers the array);
* anything else (e.g. a base type from an extension with no psycopg loader)
  -> given up: values stay text.

The user-typed fields of a composite are resolved too, so that its values
hold the same Python values as ``SELECT`` gives with every type registered.

:meth:`ValueDecoder.stale_types` (types an ``ALTER TYPE`` may have changed)
are fetched again although they have loaders, and so is what their loaders
depend on: the base of a domain, the element of an array, the fields of a
composite.  The decoder is told with :meth:`ValueDecoder.refreshed` which
types were fetched again once the attempt is over, whether it succeeded or not.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import attrs
from psycopg import AsyncConnection, Connection, sql
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo
from psycopg.types.enum import EnumInfo
from psycopg.types.multirange import MultirangeInfo
from psycopg.types.range import RangeInfo

from otpy.pg.replication.values import FIRST_NORMAL_OID, ValueDecoder

__all__ = [
    "TYPE_QUERY",
    "DescribeTypes",
    "FetchInfo",
    "TypeQuery",
    "afetch_missing_types",
    "fetch_missing_types",
    "resolve_missing_types",
]

#: Describes the given type OIDs (one array parameter).
TYPE_QUERY = """\
SELECT t.oid, n.nspname, t.typname, t.typtype, t.typbasetype, t.typelem, t.typarray,
       t.typcategory
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = ANY(%s::oid[])"""

_INFO_CLASSES: dict[str, type[TypeInfo]] = {
    "e": EnumInfo,
    "c": CompositeInfo,
    "r": RangeInfo,
    "m": MultirangeInfo,
}

# Resolution converges in a few rounds (array -> domain -> base); more means a loop.
_MAX_ROUNDS = 5


_Domain = tuple[int, int, int]


def _unknown(decoder: ValueDecoder, oids: set[int], forced: set[int]) -> set[int]:
    """The ``oids`` to describe: those without a loader, and the ``forced`` (stale) ones."""
    return {
        oid
        for oid in oids
        if oid in forced or decoder.adapters.get_loader(oid, Format.TEXT) is None
    }


def _follow(oid: int, dependency: int, forced: set[int], next_round: set[int]) -> None:
    """Describe ``dependency`` of ``oid`` next round; refresh it too if ``oid`` is refreshed."""
    next_round.add(dependency)
    if oid in forced:
        forced.add(dependency)


def _register_fetched(
    decoder: ValueDecoder, oid: int, info: TypeInfo | None, forced: set[int], wanted: set[int]
) -> None:
    """Register one fetched info; queue the user types of a composite's fields."""
    _register(decoder, oid, info)
    if isinstance(info, CompositeInfo):
        for field in info.field_types:
            if field >= FIRST_NORMAL_OID:
                _follow(oid, field, forced, wanted)


def _plan(
    decoder: ValueDecoder,
    rows: Sequence[tuple[Any, ...]],
    wanted: set[int],
    domains: list[_Domain],
    forced: set[int],
) -> tuple[list[tuple[int, type[TypeInfo], sql.Identifier]], set[int]]:
    """Act on TYPE_QUERY rows: queue domains, give up on the hopeless.

    Returns the infos still to fetch and the OIDs to describe in the next round;
    appends (domain, base, array) to ``domains``; adds to ``forced`` what the
    refresh of a ``forced`` type depends on.
    """
    fetch: list[tuple[int, type[TypeInfo], sql.Identifier]] = []
    next_round: set[int] = set()
    seen: set[int] = set()
    for oid, nspname, typname, typtype, basetype, elem, array, category in rows:
        seen.add(oid)
        ident = sql.Identifier(nspname, typname)
        if typtype in _INFO_CLASSES:
            fetch.append((oid, _INFO_CLASSES[typtype], ident))
        elif typtype == "d":
            if oid in forced or decoder.adapters.get_loader(basetype, Format.TEXT) is None:
                _follow(oid, basetype, forced, next_round)
            domains.append((oid, basetype, array))
        elif typname == "hstore":
            fetch.append((oid, TypeInfo, ident))
        elif category == "S" and typtype == "b":
            decoder.register_as_text(oid, typname, array)  # citext and friends
        elif category == "A" and elem:
            _follow(oid, elem, forced, next_round)
            decoder.give_up(oid)  # the element's info registers the array, if it can
        else:
            decoder.give_up(oid)
    for oid in wanted - seen:  # dropped meanwhile, or not a type
        decoder.give_up(oid)
    return fetch, next_round


def _register_domains(decoder: ValueDecoder, domains: list[_Domain], final: bool) -> None:
    """Register the domains whose base type is loadable now (all of them if ``final``)."""
    for domain in list(domains):
        oid, base, array = domain
        if final or decoder.adapters.get_loader(base, Format.TEXT) is not None:
            decoder.register_domain(oid, base, array)
            domains.remove(domain)


def _register(decoder: ValueDecoder, oid: int, info: TypeInfo | None) -> None:
    if info is None:
        decoder.give_up(oid)
    else:
        decoder.register_type(info)


@attrs.frozen
class DescribeTypes:
    """A query of :func:`resolve_missing_types`: run :data:`TYPE_QUERY` for ``oids``.

    Its answer is the list of the query's rows.
    """

    oids: list[int]


@attrs.frozen
class FetchInfo:
    """A query of :func:`resolve_missing_types`: fetch the catalog information of one type.

    Its answer is ``info_class.fetch(conn, name)``: the info, or ``None`` when
    the type is gone.
    """

    info_class: type[TypeInfo]
    name: sql.Identifier


#: What :func:`resolve_missing_types` yields.
TypeQuery = DescribeTypes | FetchInfo


def resolve_missing_types(decoder: ValueDecoder) -> Generator[TypeQuery, Any, None]:
    """Resolve :meth:`ValueDecoder.missing_types`: the protocol, without I/O.

    Yields the queries to run (:class:`DescribeTypes`, :class:`FetchInfo`) and
    expects each one's answer to be sent back; registers what it learns on
    ``decoder`` as it goes.  Whichever way it ends (done, an error thrown in, or
    closed by its driver), ``decoder`` is told which types were fetched again
    (:meth:`ValueDecoder.refreshed`).  Drive it with :func:`fetch_missing_types`
    or :func:`afetch_missing_types`.
    """
    stale = decoder.stale_types()
    forced, wanted, refreshed = set(stale), set(decoder.missing_types()), set(stale)
    domains: list[_Domain] = []
    try:
        for _ in range(_MAX_ROUNDS):
            wanted = _unknown(decoder, wanted, forced)
            if not wanted:
                break
            refreshed |= wanted & forced
            rows = yield DescribeTypes(sorted(wanted))
            fetch, wanted = _plan(decoder, rows, wanted, domains, forced)
            for oid, cls, ident in fetch:
                info = yield FetchInfo(cls, ident)
                _register_fetched(decoder, oid, info, forced, wanted)
            _register_domains(decoder, domains, final=False)
            forced.difference_update(row[0] for row in rows)  # refreshed once is enough
        _register_domains(decoder, domains, final=True)
        for oid in wanted:
            decoder.give_up(oid)
    finally:
        decoder.refreshed(refreshed)


def fetch_missing_types(conn: Connection[Any], decoder: ValueDecoder) -> None:
    """Resolve :meth:`ValueDecoder.missing_types` with a blocking psycopg connection."""
    protocol = resolve_missing_types(decoder)
    try:
        query = next(protocol)
        while True:
            if isinstance(query, DescribeTypes):
                answer: Any = conn.execute(TYPE_QUERY, [query.oids]).fetchall()
            else:
                answer = query.info_class.fetch(conn, query.name)
            query = protocol.send(answer)
    except StopIteration:
        pass
    finally:
        protocol.close()  # after a failed query: the protocol's clean-up runs now


async def afetch_missing_types(conn: AsyncConnection[Any], decoder: ValueDecoder) -> None:
    """Resolve :meth:`ValueDecoder.missing_types` with an async psycopg connection."""
    protocol = resolve_missing_types(decoder)
    try:
        query = next(protocol)
        while True:
            if isinstance(query, DescribeTypes):
                cursor = await conn.execute(TYPE_QUERY, [query.oids])
                answer: Any = await cursor.fetchall()
            else:
                answer = await query.info_class.fetch(conn, query.name)
            query = protocol.send(answer)
    except StopIteration:
        pass
    finally:
        protocol.close()  # after a failed query: the protocol's clean-up runs now
