"""Sink-only throughput into a real local Qdrant server, beside the server-alone ceiling.

The server is the one the tests start (``tests/qdrant_fixtures.py``: the shared v1.19.0
binary unpacked into ``.cache/qdrant/``, on free loopback ports, its own storage, stopped
by pid). Three writers take the same points, interleaved round by round so that load that
comes and goes lands on all of them, each into fresh collections:

* **sink**: the precomputed vectors events of :mod:`sink_only` through the sink stage with
  ``store.url`` set to the server (decode, plan, guarded upserts, document states, sweep),
  in batches of ``kafka.batch_max_records`` as the sink worker takes them;
* **ceiling, REST** and **ceiling, gRPC**: the same points and payloads (the version halves
  the adapter adds included) written straight with qdrant-client, ``upsert(wait=True)`` per
  batch into a collection with the adapter's payload indexes; no plan, no state, no sweep.
  The sink cannot beat the ceiling of the transport it uses.

Reported: medians of points/s and the ratio sink / ceiling for each transport.
Rerun only this: ``python ops/bench/sink_server.py --documents 2000 --rounds 3``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qdrant_client import QdrantClient  # noqa: E402
from qdrant_client import models as qm  # noqa: E402
from sink_only import vectors_records  # noqa: E402

from pipeline.bus import Record  # noqa: E402
from pipeline.config.settings import Settings  # noqa: E402
from pipeline.core.events import VectorsEvent  # noqa: E402
from pipeline.observability import NullObserver  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.store.payload import DOC_KEY, VERSION, VERSION_HI, VERSION_LO, with_version_parts  # noqa: E402

Results = dict[str, float]


def sink_server_throughput(
    work: Path, settings: Settings, documents: int = 2000, chunks: int = 10, dims: int = 384, rounds: int = 3
) -> Results:
    """Start a Qdrant server under ``work``, measure, stop it by pid (see the module doc);
    nothing (and a line saying why) where there is no server binary to start."""
    from tests.qdrant_fixtures import CACHED_BINARY, SHARED_ARCHIVE, QdrantServer, unpack_qdrant

    if not SHARED_ARCHIVE.is_file() and not CACHED_BINARY.is_file():
        print(f"sink only into a Qdrant server: skipped, no server binary ({SHARED_ARCHIVE} is missing)")
        return {}

    records = vectors_records(documents, chunks, dims)
    events = [VectorsEvent.from_bytes(r.value) for r in records]
    batch = settings.kafka.batch_max_records
    server = QdrantServer(unpack_qdrant(), work / "qdrant-server")
    server.start()
    try:
        rates: dict[str, list[float]] = {"sink": [], "rest": [], "grpc": []}
        for number in range(rounds):
            rates["rest"].append(ceiling(server.url, None, events, batch, f"raw_rest_{number}", dims))
            rates["sink"].append(sink(settings, server.url, records, batch, f"bench{number}"))
            rates["grpc"].append(
                ceiling(server.url, server.grpc_port, events, batch, f"raw_grpc_{number}", dims)
            )
    finally:
        server.stop()
    sink_rate, rest, grpc = (statistics.median(rates[k]) for k in ("sink", "rest", "grpc"))
    return {
        "server_points": float(len(records) * chunks),
        "server_rounds": float(rounds),
        "server_sink_points_per_s": sink_rate,
        "server_sink_points_per_s_min": min(rates["sink"]),
        "server_sink_points_per_s_max": max(rates["sink"]),
        "server_rest_points_per_s": rest,
        "server_grpc_points_per_s": grpc,
        "ratio_server_sink_vs_rest": sink_rate / rest,
        "ratio_server_sink_vs_grpc": sink_rate / grpc,
        "ratio_server_grpc_vs_rest": grpc / rest,
    }


def sink(settings: Settings, url: str, records: list[Record], batch: int, index: str) -> float:
    """Points/s of the sink stage writing ``records`` into version 1 of ``index`` on the server
    (the version's collections are created by the first event, before the clock starts)."""
    config = settings.model_copy(
        update={
            "store": settings.store.model_copy(update={"url": url}),
            "index": settings.index.model_copy(update={"name": index}),
        }
    )
    runtime = Runtime(config, NullObserver())
    try:
        stage = runtime.sink_stage(1)
        assert not stage.handle(records[:1]), "the first event was dead-lettered"
        started = time.perf_counter()
        for start in range(1, len(records), batch):
            dead = stage.handle(records[start : start + batch])
            assert not dead, f"{len(dead)} events dead-lettered"
        seconds = time.perf_counter() - started
    finally:
        runtime.close()
    return sum(len(VectorsEvent.from_bytes(r.value).chunks) for r in records[1:]) / seconds


def ceiling(
    url: str, grpc_port: int | None, events: list[VectorsEvent], batch: int, name: str, dims: int
) -> float:
    """Points/s of qdrant-client alone (REST, or gRPC when ``grpc_port``) on the same points."""
    client = (
        QdrantClient(url=url, grpc_port=grpc_port, prefer_grpc=True, timeout=60)
        if grpc_port
        else QdrantClient(url=url, timeout=60)
    )
    try:
        client.create_collection(name, vectors_config=qm.VectorParams(size=dims, distance=qm.Distance.COSINE))
        for field, schema in (
            (DOC_KEY, qm.PayloadSchemaType.KEYWORD),
            (VERSION_HI, qm.PayloadSchemaType.INTEGER),
            (VERSION_LO, qm.PayloadSchemaType.INTEGER),
        ):
            client.create_payload_index(name, field_name=field, field_schema=schema, wait=True)
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            points = [
                qm.PointStruct(id=c.point_id, vector=row.tolist(), payload=payload(e, c))
                for e in events[start : start + batch]
                for c, row in zip(e.chunks, e.vectors, strict=True)
            ]
            client.upsert(name, points=points, wait=True)
        seconds = time.perf_counter() - started
        count = client.count(name, exact=True).count
    finally:
        client.close()
    points_written = sum(len(e.chunks) for e in events)
    assert count == points_written, f"{name}: {count} points stored, {points_written} written"
    return points_written / seconds


def payload(event: VectorsEvent, chunk: Any) -> dict[str, Any]:
    """What the sink stores with each point (see pipeline/stages/sink)."""
    shared = {
        DOC_KEY: event.key,
        "source": event.source,
        "doc_id": event.doc_id,
        VERSION: event.version,
        "metadata": event.metadata,
    }
    return with_version_parts({**shared, "chunk_hash": chunk.chunk_hash, "text": chunk.text})


def report(r: Results, emit: Callable[[str], None] = print) -> None:
    emit(
        f"  sink only into a Qdrant server (REST), {r['server_points']:,.0f} points: "
        f"{r['server_sink_points_per_s']:,.0f} points/s median of {r['server_rounds']:.0f} "
        f"({r['server_sink_points_per_s_min']:,.0f}-{r['server_sink_points_per_s_max']:,.0f}; target >= 20,000)"
    )
    emit(
        f"  server alone, qdrant-client REST: {r['server_rest_points_per_s']:,.0f} points/s (the sink's ceiling)"
    )
    emit(f"  server alone, qdrant-client gRPC: {r['server_grpc_points_per_s']:,.0f} points/s")
    emit(
        f"  ratio sink / REST ceiling {r['ratio_server_sink_vs_rest']:.2f} (target >= 0.8), "
        f"sink / gRPC ceiling {r['ratio_server_sink_vs_grpc']:.2f}, gRPC / REST {r['ratio_server_grpc_vs_rest']:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--documents", type=int, default=2000, help="vectors events (of --chunks points each)"
    )
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved sink / REST / gRPC rounds")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="embedstream-bench-server-"))
    settings = Settings.load(state_dir=work / "state")
    results = sink_server_throughput(work, settings, args.documents, args.chunks, rounds=args.rounds)
    if results:
        report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
