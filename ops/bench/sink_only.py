"""Sink-only throughput: precomputed vectors events through the sink stage into the embedded
engine, so the figure is the store path alone (decode, plan, upsert, state, flush), no model.

Documents of 10 chunks with random unit vectors (all-MiniLM-L6-v2's 384 dimensions) and
real sentences as chunk text, in batches of ``kafka.batch_max_records`` as the sink worker
takes them. Target (issue 10): >= 20,000 points/s.
"""

from __future__ import annotations

import random
import time

import numpy as np
from corpus import sentences

import pipeline.store.edge as edge
from pipeline.bus import Record
from pipeline.config.settings import Settings
from pipeline.core.events import ChunkRef, VectorsEvent, doc_key
from pipeline.core.hashing import point_id, sha256_hex
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime

TOPIC = "bench.vectors"


def vectors_records(documents: int, chunks: int, dims: int, seed: int = 3) -> list[Record]:
    rng, pool = np.random.default_rng(seed), sentences()
    pick = random.Random(seed)
    records = []
    for number in range(documents):
        doc_id = f"doc-{number:05d}.md"
        key = doc_key("bench", doc_id)
        texts = [f"{number}.{i} " + " ".join(pick.sample(pool, 3)) for i in range(chunks)]
        hashes = [sha256_hex(t) for t in texts]
        refs = tuple(
            ChunkRef(point_id(key, h, 0), i, h, t) for i, (h, t) in enumerate(zip(hashes, texts, strict=True))
        )
        matrix = rng.standard_normal((chunks, dims)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        event = VectorsEvent(
            source="bench", doc_id=doc_id, op="upsert", version=1, content_hash=sha256_hex("".join(texts)),
            fingerprint="bench-model@0000000000000000", metadata={"path": doc_id}, emitted_at=time.time(),
            chunks=refs, vectors=matrix,
        )  # fmt: skip
        records.append(Record(TOPIC, 0, number, key, event.to_bytes()))
    return records


def sink_throughput(
    settings: Settings, documents: int = 3000, chunks: int = 10, dims: int = 384
) -> dict[str, float]:
    """Both figures leave out the engine's optimizer (HNSW and quantized codes, which a server
    builds in the background and EdgeStore runs every OPTIMIZE_EVERY points): one run of it
    lands in whichever loop crosses the threshold and would swamp the write path."""
    edge.OPTIMIZE_EVERY = 10**12
    records = vectors_records(documents, chunks, dims)
    batch = settings.kafka.batch_max_records
    runtime = Runtime(settings, NullObserver())
    try:
        sink = runtime.sink_stage(1)
        assert not sink.handle(records[:1]), "the first event was dead-lettered"  # creates the version
        started = time.perf_counter()
        for start in range(1, len(records), batch):
            dead = sink.handle(records[start : start + batch])
            assert not dead, f"{len(dead)} events dead-lettered"
        seconds = time.perf_counter() - started
    finally:
        runtime.close()
    points = (len(records) - 1) * chunks
    ceiling = engine_ceiling(settings, records[1:], batch)
    return {
        "sink_points": points,
        "sink_seconds": seconds,
        "sink_points_per_s": points / seconds,
        "engine_points_per_s": ceiling,
        "ratio_sink_vs_engine": points / seconds / ceiling,
    }


def engine_ceiling(settings: Settings, records: list[Record], batch: int) -> float:
    """Points/s of the embedded engine alone on the same points and payloads: a plain upsert
    and a flush per batch, no plan, state or sweep. The sink cannot beat this; the Python
    binding's per-point conversion (vector and payload) is most of it."""
    from pipeline.store import CollectionSpec, PointWrite
    from pipeline.store.edge import EdgeStore

    events = [VectorsEvent.from_bytes(r.value) for r in records]
    store = EdgeStore(settings.state_dir / "engine-only")
    try:
        store.create_collection("raw", CollectionSpec(events[0].vectors.shape[1]))
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            points = [
                PointWrite(c.point_id, row.tolist(), {"doc_key": e.key, "version": e.version, "text": c.text,
                                                      "chunk_hash": c.chunk_hash, "metadata": e.metadata})
                for e in events[start : start + batch]
                for c, row in zip(e.chunks, e.vectors, strict=True)
            ]  # fmt: skip
            store.upsert("raw", points)
            store.flush()
        seconds = time.perf_counter() - started
    finally:
        store.close()
    return sum(len(e.chunks) for e in events) / seconds
