"""Qdrant server (or cluster) through ``qdrant-client``; the scale-out store.

Every write waits for Qdrant's acknowledgement (``wait=True``) so the sink may commit its
offsets right after. ``location=":memory:"`` runs qdrant-client's local mode, which the
contract tests use where no server is running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.errors import StoreUnavailable
from pipeline.store import (
    DOC_KEY,
    VERSION,
    CollectionSpec,
    Hit,
    PointWrite,
    Scalar,
    Scrolled,
    SearchOptions,
    Sweep,
)

T = TypeVar("T")
_DATATYPES = {"float32": qm.Datatype.FLOAT32, "float16": qm.Datatype.FLOAT16}


class ServerStore:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        location: str | None = None,
    ) -> None:
        if location is not None:
            self._client = QdrantClient(location=location)
        else:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))

    def collections(self) -> list[str]:
        result = _call(self._client.get_collections)
        return sorted(c.name for c in result.collections)

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        if _call(self._client.collection_exists, name):
            return
        _call(
            self._client.create_collection,
            name,
            vectors_config=qm.VectorParams(
                size=spec.dims, distance=qm.Distance.COSINE, datatype=_DATATYPES[spec.datatype]
            ),
            quantization_config=_quantization(spec),
        )
        # Sweeps and guarded writes filter on these two fields: index them.
        indexed = ((DOC_KEY, qm.PayloadSchemaType.KEYWORD), (VERSION, qm.PayloadSchemaType.INTEGER))
        for field, schema in indexed:
            _call(self._client.create_payload_index, name, field_name=field, field_schema=schema, wait=True)

    def drop_collection(self, name: str) -> None:
        _call(self._client.delete_collection, name)

    def upsert(self, name: str, points: Sequence[PointWrite], *, guarded: bool = False) -> None:
        if points:
            structs = [qm.PointStruct(id=p.id, vector=list(p.vector), payload=p.payload) for p in points]
            condition = _guard(points) if guarded else None
            _call(self._client.upsert, name, points=structs, update_filter=condition, wait=True)

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            selected = qm.Filter(must=[qm.HasIdCondition(has_id=list(ids)), _at_most(int(payload[VERSION]))])
            _call(self._client.set_payload, name, payload=payload, points=selected, wait=True)

    def sweep(self, name: str, sweeps: Sequence[Sweep]) -> int:
        if not sweeps:
            return 0
        selected = qm.Filter(should=[_swept(s) for s in sweeps])
        found = int(_call(self._client.count, name, count_filter=selected, exact=True).count)
        if found:
            _call(self._client.delete, name, points_selector=qm.FilterSelector(filter=selected), wait=True)
        return found

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            selector = qm.PointIdsList(points=list(ids))
            _call(self._client.delete, name, points_selector=selector, wait=True)

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        records = _call(self._client.retrieve, name, ids=list(ids), with_payload=True)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def search(self, name: str, vector: Sequence[float], options: SearchOptions) -> list[Hit]:
        params = None
        if options.oversampling is not None or options.rescore is not None:
            params = qm.SearchParams(
                quantization=qm.QuantizationSearchParams(
                    rescore=options.rescore, oversampling=options.oversampling
                )
            )
        response = _call(
            self._client.query_points,
            name,
            query=list(vector),
            limit=options.limit,
            query_filter=_filter(options.filters),
            search_params=params,
            with_payload=True,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def count(self, name: str, filters: Mapping[str, Scalar] | None = None) -> int:
        return int(_call(self._client.count, name, count_filter=_filter(filters), exact=True).count)

    def scroll_ids(self, name: str) -> list[str]:
        return [point_id for point_id, _ in self._scroll(name, None, with_payload=False)]

    def scroll(self, name: str, filters: Mapping[str, Scalar] | None = None) -> list[Scrolled]:
        return self._scroll(name, _filter(filters), with_payload=True)

    def _scroll(self, name: str, selected: qm.Filter | None, *, with_payload: bool) -> list[Scrolled]:
        found: list[Scrolled] = []
        offset: Any = None
        while True:
            records, offset = _call(
                self._client.scroll,
                name,
                scroll_filter=selected,
                limit=1000,
                offset=offset,
                with_payload=with_payload,
            )
            found.extend((str(r.id), dict(r.payload or {})) for r in records)
            if offset is None:
                return found

    def get_alias(self, alias: str) -> str | None:
        for description in _call(self._client.get_aliases).aliases:
            if description.alias_name == alias:
                return str(description.collection_name)
        return None

    def set_alias(self, alias: str, collection: str) -> None:
        # Delete + create in one request: Qdrant applies the list atomically.
        operations: list[Any] = []
        if self.get_alias(alias) is not None:
            operations.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        operations.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias))
        )
        _call(self._client.update_collection_aliases, change_aliases_operations=operations)

    def flush(self) -> None:
        pass  # every write above already waited for the server's acknowledgement

    def close(self) -> None:
        self._client.close()


def _filter(filters: Mapping[str, Scalar] | None) -> qm.Filter | None:
    if not filters:
        return None
    conditions: list[Any] = [
        qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in filters.items()
    ]
    return qm.Filter(must=conditions)


def _guard(points: Sequence[PointWrite]) -> qm.Filter:
    """Stored points may be overwritten only by an equal or newer version of their document."""
    by_version: dict[int, list[str]] = {}
    for point in points:
        by_version.setdefault(int(point.payload[VERSION]), []).append(point.id)
    clauses: list[Any] = [
        qm.Filter(must=[qm.HasIdCondition(has_id=list(ids)), _at_most(v)]) for v, ids in by_version.items()
    ]
    return qm.Filter(should=clauses)


def _at_most(version: int) -> qm.Filter:
    # Points written before versions were recorded carry none: treat them as oldest.
    at_most: list[Any] = [
        qm.FieldCondition(key=VERSION, range=qm.Range(lte=version)),
        qm.IsEmptyCondition(is_empty=qm.PayloadField(key=VERSION)),
    ]
    return qm.Filter(should=at_most)


def _swept(sweep: Sweep) -> qm.Filter:
    keep: list[Any] = [qm.HasIdCondition(has_id=list(sweep.keep))] if sweep.keep else []
    return qm.Filter(
        must=[
            qm.FieldCondition(key=DOC_KEY, match=qm.MatchValue(value=sweep.doc_key)),
            _at_most(sweep.version),
        ],
        must_not=keep or None,
    )


def _quantization(spec: CollectionSpec) -> Any:
    if spec.quantization == "int8":
        return qm.ScalarQuantization(
            scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True)
        )
    if spec.quantization == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    return None


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(f"Qdrant server: {exc}") from exc
    except UnexpectedResponse as exc:
        if exc.status_code is not None and exc.status_code >= 500:
            raise StoreUnavailable(f"Qdrant server: {exc}") from exc
        raise
