"""Embedded Qdrant engine (qdrant-edge-py): one shard directory per collection.

The engine admits one process per shard directory; an ``flock`` on ``<root>/LOCK`` turns
the engine's opaque WAL error into a fail-fast :class:`StoreLocked` that names the owner.
Aliases live in ``aliases.json`` and are replaced with an atomic rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from pipeline.core.errors import ConfigError, StoreLocked, StoreRejected, StoreUnavailable
from pipeline.store import (
    SCROLL_PAGE,
    CollectionSpec,
    Hit,
    PointWrite,
    Scalar,
    Scrolled,
    SearchOptions,
    Sweep,
    scroll_pages,
)
from pipeline.store.payload import DOC_KEY, VERSION, VERSION_HI, VERSION_LO, version_parts, with_version_parts

#: New points after which flush() runs the optimizer (a few seconds of indexing at most).
OPTIMIZE_EVERY = 20_000
INDEXING_THRESHOLD_KB = 10_000
_DATATYPES = {
    "float32": qe.VectorStorageDatatype.Float32,
    "float16": qe.VectorStorageDatatype.Float16,
    "uint8": qe.VectorStorageDatatype.Uint8,
}
_DISTANCES = {"cosine": qe.Distance.Cosine, "euclid": qe.Distance.Euclid}


class EdgeStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _acquire(root / "LOCK")
        self._shards: dict[str, qe.EdgeShard] = {}
        # Points written per collection since the engine's optimizer last ran (see flush).
        self._unoptimized: dict[str, int] = {}

    def collections(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if (p / "spec.json").is_file())

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        path = self._root / name
        if (path / "spec.json").is_file():
            return
        if path.exists():
            shutil.rmtree(path)  # a create that crashed half-way: nothing was acknowledged
        shard = self._shards[name] = _call(qe.EdgeShard.create, str(path), _config(spec))
        # Sweeps and guarded writes filter on these two fields: index them.
        _call(shard.update, qe.UpdateOperation.create_field_index(DOC_KEY, qe.PayloadSchemaType.Keyword))
        for field in (VERSION_HI, VERSION_LO):
            _call(shard.update, qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Integer))
        _call(shard.flush)
        (path / "spec.json").write_text(json.dumps(spec.__dict__))

    def drop_collection(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._root / name, ignore_errors=True)

    def upsert(self, name: str, points: Sequence[PointWrite], *, guarded: bool = False) -> None:
        if points:
            edge_points = [qe.Point(p.id, list(p.vector), with_version_parts(p.payload)) for p in points]
            condition = _guard(points) if guarded else None
            _call(self._shard(name).update, qe.UpdateOperation.upsert_points(edge_points, condition))
            self._unoptimized[name] = self._unoptimized.get(name, 0) + len(points)

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        if ids:
            selected = qe.Filter(must=[qe.HasIdCondition(set(ids)), _at_most(int(payload[VERSION]))])
            update = qe.UpdateOperation.set_payload_by_filter(selected, with_version_parts(payload))
            _call(self._shard(name).update, update)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            _call(self._shard(name).update, qe.UpdateOperation.delete_points(list(ids)))

    def sweep(self, name: str, sweeps: Sequence[Sweep]) -> int:
        if not sweeps:
            return 0
        shard = self._shard(name)
        selected = qe.Filter(should=[_swept(s) for s in sweeps])
        found = int(_call(shard.count, qe.CountRequest(exact=True, filter=selected)))
        if found:
            _call(shard.update, qe.UpdateOperation.delete_points_by_filter(selected))
        return found

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        records = _call(self._shard(name).retrieve, list(ids), True, False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, list[float]]:
        if not ids:
            return {}
        records = _call(self._shard(name).retrieve, list(ids), False, True)
        return {str(r.id): list(r.vector) for r in records}

    def search(self, name: str, vector: Sequence[float], options: SearchOptions) -> list[Hit]:
        quantization = None
        if options.oversampling is not None or options.rescore is not None:
            quantization = qe.QuantizationSearchParams(
                rescore=options.rescore, oversampling=options.oversampling
            )
        request = qe.QueryRequest(
            limit=options.limit,
            query=qe.Query.Nearest(list(vector)),
            with_payload=True,
            with_vector=False,
            filter=_filter(options.filters),
            params=qe.SearchParams(quantization=quantization),
        )
        points = _call(self._shard(name).query, request)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def count(self, name: str, filters: Mapping[str, Scalar] | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=_filter(filters))
        return int(_call(self._shard(name).count, request))

    def scroll(self, name: str, filters: Mapping[str, Scalar] | None = None) -> list[Scrolled]:
        selected = _filter(filters)

        def page(offset: Any) -> tuple[Sequence[Any], Any]:
            request = qe.ScrollRequest(
                offset=offset, limit=SCROLL_PAGE, filter=selected, with_payload=True, with_vector=False
            )
            return _call(self._shard(name).scroll, request)  # type: ignore[no-any-return]

        return scroll_pages(page)

    def get_alias(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def set_alias(self, alias: str, collection: str) -> None:
        aliases = self._aliases()
        aliases[alias] = collection
        tmp = self._root / "aliases.json.tmp"
        tmp.write_text(json.dumps(aliases, indent=2))
        os.replace(tmp, self._root / "aliases.json")

    def flush(self) -> None:
        for shard in self._shards.values():
            _call(shard.flush)
        self._optimize(OPTIMIZE_EVERY)

    def close(self) -> None:
        try:
            self._optimize(1)
        finally:
            for shard in self._shards.values():
                shard.close()
        self._shards.clear()
        self._lock_file.close()

    def _optimize(self, at_least: int) -> None:
        """Run the engine's segment optimizer on collections with ``at_least`` new points.

        A Qdrant server runs it in the background; the embedded engine only when asked, and
        without it no segment is ever indexed (HNSW) or quantized (scalar int8): a large
        collection would be searched by brute force over full vectors. Segments under the
        engine's indexing threshold are left as they are, so small collections cost nothing.
        """
        for name, written in list(self._unoptimized.items()):
            if written >= at_least and name in self._shards:
                _call(self._shards[name].optimize)
                self._unoptimized[name] = 0

    def _aliases(self) -> dict[str, str]:
        path = self._root / "aliases.json"
        if not path.is_file():
            return {}
        try:
            aliases = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            aliases = exc
        if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
            msg = (
                f"{path} is corrupt ({aliases if isinstance(aliases, Exception) else 'not a name map'}); "
                'rewrite it as {"<index>": "<index>__v<N>"} naming the live collection '
                f"(the collections are the folders in {self._root}), or delete it and re-run "
                "`embedstream index` to recreate the alias"
            )
            raise ConfigError(msg)
        return {str(k): v for k, v in aliases.items()}

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is None:
            if not (self._root / name / "spec.json").is_file():
                raise KeyError(f"collection {name!r} does not exist")
            shard = self._shards[name] = _call(qe.EdgeShard.load, str(self._root / name))
        return shard


def _acquire(path: Path) -> IO[str]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        msg = (
            f"the embedded store {path.parent} is in use by {owner}; the embedded engine admits "
            "one process per store. Stop that process, or query it through its HTTP endpoint "
            "(embedstream search talks to a running `embedstream watch` automatically)."
        )
        raise StoreLocked(msg) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _config(spec: CollectionSpec) -> qe.EdgeConfig:
    quantization: Any = None
    if spec.quantization == "int8":
        quantization = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
    elif spec.quantization == "binary":
        quantization = qe.BinaryQuantizationConfig(always_ram=True)
    elif spec.quantization == "product":
        quantization = qe.ProductQuantizationConfig(compression=qe.CompressionRatio.X16, always_ram=True)
    params = qe.EdgeVectorParams(
        size=spec.dims,
        distance=_DISTANCES[spec.distance],
        datatype=_DATATYPES[spec.datatype],
        quantization_config=quantization,
    )
    # A server's default: segments past this size (KB) get an HNSW graph and quantized codes.
    return qe.EdgeConfig(
        vectors=params, optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB)
    )


def _filter(filters: Mapping[str, Scalar] | None) -> qe.Filter | None:
    if not filters:
        return None
    return qe.Filter(must=[qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in filters.items()])


def _guard(points: Sequence[PointWrite]) -> qe.Filter:
    """Stored points may be overwritten only by an equal or newer version of their document."""
    by_version: dict[int, set[qe.PointId]] = {}
    for point in points:
        by_version.setdefault(int(point.payload[VERSION]), set()).add(point.id)
    return qe.Filter(
        should=[qe.Filter(must=[qe.HasIdCondition(ids), _at_most(v)]) for v, ids in by_version.items()]
    )


def _at_most(version: int) -> qe.Filter:
    """Stored version <= ``version``, compared exactly by halves; points written before
    versions were recorded carry none and count as oldest."""
    high, low = version_parts(version)
    return qe.Filter(
        should=[
            qe.FieldCondition(VERSION_HI, range=qe.RangeFloat(lt=float(high))),
            qe.Filter(
                must=[
                    qe.FieldCondition(VERSION_HI, match=qe.MatchValue(high)),
                    qe.FieldCondition(VERSION_LO, range=qe.RangeFloat(lte=float(low))),
                ]
            ),
            qe.IsEmptyCondition(VERSION_HI),
        ]
    )


def _swept(sweep: Sweep) -> qe.Filter:
    return qe.Filter(
        must=[qe.FieldCondition(DOC_KEY, match=qe.MatchValue(sweep.doc_key)), _at_most(sweep.version)],
        must_not=[qe.HasIdCondition(set(sweep.keep))] if sweep.keep else None,
    )


#: Engine messages that mean "this input is wrong", not "the engine is unwell".
_REJECTIONS = ("dimension error", "dimension cannot be", "wrong input", "validation", "bad request")


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (OSError, RuntimeError) as exc:
        raise StoreUnavailable(f"embedded Qdrant engine: {exc}") from exc
    except Exception as exc:  # the bindings raise bare Exception for engine errors
        if type(exc) is not Exception:
            raise
        if any(marker in str(exc).lower() for marker in _REJECTIONS):
            raise StoreRejected(f"embedded Qdrant engine rejected the write: {exc}") from exc
        raise StoreUnavailable(f"embedded Qdrant engine: {exc}") from exc
