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

from pipeline.errors import StoreLocked, StoreUnavailable
from pipeline.store import CollectionSpec, Hit, PointWrite, Scalar, SearchOptions

_DATATYPES = {"float32": qe.VectorStorageDatatype.Float32, "float16": qe.VectorStorageDatatype.Float16}


class EdgeStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock_file = _acquire(root / "LOCK")
        self._shards: dict[str, qe.EdgeShard] = {}

    def collections(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if (p / "spec.json").is_file())

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        path = self._root / name
        if (path / "spec.json").is_file():
            return
        if path.exists():
            shutil.rmtree(path)  # a create that crashed half-way: nothing was acknowledged
        self._shards[name] = _call(qe.EdgeShard.create, str(path), _config(spec))
        (path / "spec.json").write_text(json.dumps(spec.__dict__))

    def drop_collection(self, name: str) -> None:
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._root / name, ignore_errors=True)

    def upsert(self, name: str, points: Sequence[PointWrite]) -> None:
        if points:
            edge_points = [qe.Point(p.id, list(p.vector), p.payload) for p in points]
            _call(self._shard(name).update, qe.UpdateOperation.upsert_points(edge_points))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            _call(self._shard(name).update, qe.UpdateOperation.delete_points(list(ids)))

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        records = _call(self._shard(name).retrieve, list(ids), True, False)
        return {str(r.id): dict(r.payload or {}) for r in records}

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

    def scroll_ids(self, name: str) -> list[str]:
        ids: list[str] = []
        offset: Any = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=1000, with_payload=False, with_vector=False)
            records, offset = _call(self._shard(name).scroll, request)
            ids.extend(str(r.id) for r in records)
            if offset is None:
                return ids

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

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._lock_file.close()

    def _aliases(self) -> dict[str, str]:
        path = self._root / "aliases.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}

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
    params = qe.EdgeVectorParams(
        size=spec.dims,
        distance=qe.Distance.Cosine,
        datatype=_DATATYPES[spec.datatype],
        quantization_config=quantization,
    )
    return qe.EdgeConfig(vectors=params)


def _filter(filters: Mapping[str, Scalar] | None) -> qe.Filter | None:
    if not filters:
        return None
    return qe.Filter(must=[qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in filters.items()])


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (OSError, RuntimeError) as exc:
        raise StoreUnavailable(f"embedded Qdrant engine: {exc}") from exc
    except Exception as exc:  # the bindings raise bare Exception for engine errors
        if type(exc) is Exception:
            raise StoreUnavailable(f"embedded Qdrant engine: {exc}") from exc
        raise
