"""Qdrant server (or cluster) through ``qdrant-client``; the scale-out store.

Every write waits for Qdrant's acknowledgement (``wait=True``) so the sink may commit its
offsets right after. ``location=":memory:"`` runs qdrant-client's local mode, which the
contract tests use where no server is running.

Requests stay well under the server's size limit (32 MiB by default): writes are split by
their estimated JSON size (:func:`split_by_bytes`). Answers become the error tree: 5xx,
429 and network faults are :class:`StoreUnavailable` (retried); 401/403 and a server
certificate we do not trust are :class:`AuthenticationFailed`; any other 4xx to a write
(but 404/409) is :class:`StoreRejected`, so the sink dead-letters that event and goes on.
The API key goes over plain ``http://`` only to a loopback host, or when explicitly allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from pipeline.config.settings import StoreSettings
from pipeline.config.tls import certificate_error, client_context
from pipeline.core.errors import (
    AuthenticationFailed,
    ConfigError,
    StoreRejected,
    StoreUnavailable,
)
from pipeline.store import (
    SCROLL_PAGE,
    CollectionSpec,
    Datatype,
    Hit,
    PointWrite,
    Quantization,
    Scalar,
    Scrolled,
    SearchOptions,
    Sweep,
    scroll_pages,
)
from pipeline.store.payload import DOC_KEY, VERSION, VERSION_HI, VERSION_LO, version_parts, with_version_parts
from pipeline.store.server.answers import Conflict, answer_error, answered_in_tls, refuse_clear_text_key
from pipeline.store.server.requests import estimated_point_bytes, id_bytes, split_by_bytes

T = TypeVar("T")
_DATATYPES: dict[Datatype, qm.Datatype] = {
    "float32": qm.Datatype.FLOAT32,
    "float16": qm.Datatype.FLOAT16,
    "uint8": qm.Datatype.UINT8,
}
_INSECURE_KEY_WARNING = "Api key is used with an insecure connection"
_DISTANCES = {"cosine": qm.Distance.COSINE, "euclid": qm.Distance.EUCLID}
#: Default bound on one write request's JSON body: a quarter of Qdrant's default limit.
MAX_REQUEST_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ClusterLayout:
    """How a Qdrant cluster spreads each new collection; None leaves it to the server.

    Applied when a collection is created; ``create_collection`` of an existing one keeps
    its layout. A write is sent to every replica of its shard and acknowledged once
    ``write_consistency_factor`` of them applied it, so with 1 writes go on while one
    peer of a replicated shard is down: before answering, Qdrant waits until consensus
    marks the failed replica dead, and that replica catches up by a shard transfer when
    its peer returns (reads use only the replicas that are up to date).

    Writes keep Qdrant's default (weak) ordering: a document has one writer at a time (the
    sink owning its partition), each write returns only after every replica answered, and
    the version-guarded writes give one result in any order. ``strong`` ordering would
    refuse every write to a shard whose leader peer is down; ``medium`` adds a hop.
    """

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


class ServerStore:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        location: str | None = None,
        *,
        ca_file: Path | None = None,
        allow_insecure_api_key: bool = False,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        layout: ClusterLayout | None = None,
    ) -> None:
        """Connect to ``url`` (``location=":memory:"``: qdrant-client's local mode instead).

        ``layout`` shards and replicates the collections this adapter creates (a cluster).
        Raises :class:`ConfigError` when ``api_key`` would cross the network in clear
        text: over ``http://`` to a host that is not loopback, unless allowed.
        """
        self._max_request_bytes = max_request_bytes
        self._layout = layout or ClusterLayout()
        self._url = url or location or ""
        # qdrant-client's local mode ignores quantization and reports none.
        self._reports_quantization = location is None
        if location is not None:
            self._client = QdrantClient(location=location)
            return
        refuse_clear_text_key(url, api_key, allow_insecure_api_key)
        tls: dict[str, Any] = {}
        if ca_file is not None:
            # httpx verifies against this CA only. The client's background version check
            # would not use it and only warn, so it is skipped.
            tls = {"verify": client_context(ca_file), "check_compatibility": False}
        with warnings.catch_warnings():
            # Our own check above decided that this key may go over http (loopback or allowed).
            warnings.filterwarnings("ignore", _INSECURE_KEY_WARNING, UserWarning)
            self._client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s), **tls)

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> ServerStore:
        """The store ``settings.url`` names, with its API key, CA file, request bound and
        the cluster layout of the collections it creates."""
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        return cls(
            settings.url,
            key,
            settings.timeout_s,
            ca_file=settings.ca_file,
            allow_insecure_api_key=settings.allow_insecure_api_key,
            max_request_bytes=settings.max_request_bytes,
            layout=ClusterLayout(
                settings.shard_number, settings.replication_factor, settings.write_consistency_factor
            ),
        )

    def collections(self) -> list[str]:
        result = self._call(self._client.get_collections)
        return sorted(c.name for c in result.collections)

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        """Create ``name`` if missing; an existing one must have ``spec`` (else ConfigError).

        Two sinks starting together both see the collection missing; the loser of the
        race gets 409 "already exists", which is success when the winner's spec is ours.
        """
        if self._call(self._client.collection_exists, name) or not self._create(name, spec):
            self._check_spec(name, spec)
        # Sweeps and guarded writes filter on these two fields: index them (idempotent).
        indexed = (
            (DOC_KEY, qm.PayloadSchemaType.KEYWORD),
            (VERSION_HI, qm.PayloadSchemaType.INTEGER),
            (VERSION_LO, qm.PayloadSchemaType.INTEGER),
        )
        for field, schema in indexed:
            self._call(
                self._client.create_payload_index, name, field_name=field, field_schema=schema, wait=True
            )

    def _create(self, name: str, spec: CollectionSpec) -> bool:
        """Create the collection; False when another process created it first (409)."""
        vectors = qm.VectorParams(
            size=spec.dims, distance=_DISTANCES[spec.distance], datatype=_DATATYPES[spec.datatype]
        )
        try:
            self._call(
                self._client.create_collection,
                name,
                vectors_config=vectors,
                quantization_config=_quantization(spec),
                shard_number=self._layout.shard_number,
                replication_factor=self._layout.replication_factor,
                write_consistency_factor=self._layout.write_consistency_factor,
            )
        except Conflict:
            return False
        return True

    def _check_spec(self, name: str, spec: CollectionSpec) -> None:
        existing = _spec_of(self._call(self._client.get_collection, name))
        if not self._reports_quantization:
            existing = dataclasses.replace(existing, quantization=spec.quantization)
        if existing != spec:
            raise ConfigError(
                f"Qdrant collection {name} exists with {_describe(existing)}, not {_describe(spec)}; "
                "another deployment uses this name: change index.name or create a new version"
            )

    def create_cache_collection(self, name: str, dims: int) -> None:
        """Create the embedding cache's collection ``name`` if missing (idempotent, and a 409
        from a host that created it first is success): vectors of ``dims`` float32 kept exactly
        as written (dot product: Qdrant rescales vectors only for cosine), on disk, with no
        HNSW graph, since the cache is only ever read by point id.

        An existing collection of another size or distance is a ConfigError (another
        deployment uses the name).
        """
        vectors = qm.VectorParams(
            size=dims, distance=qm.Distance.DOT, datatype=qm.Datatype.FLOAT32, on_disk=True
        )
        if not self._call(self._client.collection_exists, name):
            with contextlib.suppress(Conflict):
                self._call(
                    self._client.create_collection,
                    name,
                    vectors_config=vectors,
                    hnsw_config=qm.HnswConfigDiff(m=0),
                    shard_number=self._layout.shard_number,
                    replication_factor=self._layout.replication_factor,
                    write_consistency_factor=self._layout.write_consistency_factor,
                )
        existing = self._call(self._client.get_collection, name).config.params.vectors
        size, distance = getattr(existing, "size", None), getattr(existing, "distance", None)
        if size != dims or distance != qm.Distance.DOT:
            raise ConfigError(
                f"Qdrant collection {name} exists with {size} dims and {distance} distance, not an "
                f"embedding cache of {dims} dims (dot): another deployment uses this name; "
                "change cache.collection_prefix"
            )

    def retrieve_points(self, name: str, ids: Sequence[str]) -> dict[str, tuple[list[float], dict[str, Any]]]:
        """Vector and payload of each of ``ids`` that exists, in one request."""
        if not ids:
            return {}
        records = self._call(self._client.retrieve, name, ids=list(ids), with_payload=True, with_vectors=True)
        return {
            str(r.id): ([float(x) for x in r.vector], dict(r.payload or {}))  # type: ignore[arg-type]
            for r in records
            if isinstance(r.vector, list)
        }

    def drop_collection(self, name: str) -> None:
        self._call(self._client.delete_collection, name)

    def upsert(self, name: str, points: Sequence[PointWrite], *, guarded: bool = False) -> None:
        for part in split_by_bytes(points, estimated_point_bytes, self._max_request_bytes):
            structs = [
                qm.PointStruct(id=p.id, vector=list(p.vector), payload=with_version_parts(p.payload))
                for p in part
            ]
            condition = _guard(part) if guarded else None
            self._write(self._client.upsert, name, points=structs, update_filter=condition, wait=True)

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        room = self._max_request_bytes - len(json.dumps(payload, default=str))
        for part in split_by_bytes(ids, id_bytes, room):
            selected = qm.Filter(must=[qm.HasIdCondition(has_id=part), _at_most(int(payload[VERSION]))])
            self._write(
                self._client.set_payload,
                name,
                payload=with_version_parts(payload),
                points=selected,
                wait=True,
            )

    def sweep(self, name: str, sweeps: Sequence[Sweep]) -> int:
        if not sweeps:
            return 0
        selected = qm.Filter(should=[_swept(s) for s in sweeps])
        found = int(self._call(self._client.count, name, count_filter=selected, exact=True).count)
        if found:
            deleting = qm.FilterSelector(filter=selected)
            self._write(self._client.delete, name, points_selector=deleting, wait=True)
        return found

    def delete(self, name: str, ids: Sequence[str]) -> None:
        for part in split_by_bytes(ids, id_bytes, self._max_request_bytes):
            self._write(self._client.delete, name, points_selector=qm.PointIdsList(points=part), wait=True)

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        records = self._call(self._client.retrieve, name, ids=list(ids), with_payload=True)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        records = self._call(
            self._client.retrieve, name, ids=list(ids), with_payload=False, with_vectors=True
        )
        # One unnamed dense vector per point: anything else is not a collection of ours.
        return {str(r.id): [float(x) for x in r.vector] for r in records if isinstance(r.vector, list)}  # type: ignore[arg-type]

    def search(self, name: str, vector: Sequence[float], options: SearchOptions) -> list[Hit]:
        params = None
        if options.oversampling is not None or options.rescore is not None:
            params = qm.SearchParams(
                quantization=qm.QuantizationSearchParams(
                    rescore=options.rescore, oversampling=options.oversampling
                )
            )
        response = self._call(
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
        return int(self._call(self._client.count, name, count_filter=_filter(filters), exact=True).count)

    def scroll(self, name: str, filters: Mapping[str, Scalar] | None = None) -> list[Scrolled]:
        selected = _filter(filters)

        def page(offset: Any) -> tuple[Sequence[Any], Any]:
            return self._call(
                self._client.scroll, name, scroll_filter=selected, limit=SCROLL_PAGE, offset=offset
            )

        return scroll_pages(page)

    def get_alias(self, alias: str) -> str | None:
        for description in self._call(self._client.get_aliases).aliases:
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
        self._call(self._client.update_collection_aliases, change_aliases_operations=operations)

    def flush(self) -> None:
        pass  # every write above already waited for the server's acknowledgement

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._translated(write=False):
            return fn(*args, **kwargs)

    def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._translated(write=True):
            return fn(*args, **kwargs)

    @contextlib.contextmanager
    def _translated(self, *, write: bool) -> Iterator[None]:
        """qdrant-client's exceptions as the pipeline's error tree (see the module doc)."""
        try:
            yield
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            certificate = certificate_error(exc)
            if certificate is not None:
                raise AuthenticationFailed(
                    f"TLS certificate of the Qdrant server at {self._url} is not trusted: "
                    f"{certificate.verify_message}; set store.ca_file to the CA that signed it"
                ) from exc
            if self._url.startswith("http://") and answered_in_tls(exc):
                https = "https://" + self._url.removeprefix("http://")
                raise ConfigError(
                    f"the Qdrant server at {self._url} speaks TLS on that port: set store.url to {https}"
                ) from exc
            raise StoreUnavailable(f"Qdrant server: {exc}") from exc
        except UnexpectedResponse as exc:
            raise answer_error(exc, self._url, write=write) from exc
        except ValueError as exc:  # local mode answers what a server answers with 409 or 400
            if _ALREADY_EXISTS in str(exc):
                raise Conflict(str(exc)) from exc
            if write:
                raise StoreRejected(f"Qdrant rejected the write: {exc}") from exc
            raise


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
    """Stored version <= ``version``, compared exactly by halves; points written before
    versions were recorded carry none and count as oldest."""
    high, low = version_parts(version)
    clauses: list[Any] = [
        qm.FieldCondition(key=VERSION_HI, range=qm.Range(lt=high)),
        qm.Filter(
            must=[
                qm.FieldCondition(key=VERSION_HI, match=qm.MatchValue(value=high)),
                qm.FieldCondition(key=VERSION_LO, range=qm.Range(lte=low)),
            ]
        ),
        qm.IsEmptyCondition(is_empty=qm.PayloadField(key=VERSION_HI)),
    ]
    return qm.Filter(should=clauses)


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
    if spec.quantization == "product":
        return qm.ProductQuantization(
            product=qm.ProductQuantizationConfig(compression=qm.CompressionRatio.X16, always_ram=True)
        )
    return None


_ALREADY_EXISTS = "already exists"


def _spec_of(info: Any) -> CollectionSpec:
    vectors = info.config.params.vectors
    quantization = _QUANTIZATION_NAMES.get(type(info.config.quantization_config), "none")
    return CollectionSpec(int(vectors.size), _datatype_of(vectors), quantization)


_QUANTIZATION_NAMES: dict[type, Quantization] = {
    qm.ScalarQuantization: "int8",
    qm.BinaryQuantization: "binary",
    qm.ProductQuantization: "product",
}


def _datatype_of(vectors: Any) -> Datatype:
    for name, datatype in _DATATYPES.items():
        if vectors.datatype == datatype:
            return name
    return "float32"  # no datatype reported: the server's default


def _describe(spec: CollectionSpec) -> str:
    return f"{spec.dims} dims, {spec.datatype}, quantization {spec.quantization}"
