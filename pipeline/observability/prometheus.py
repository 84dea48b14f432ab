"""Prometheus implementation of :class:`pipeline.observability.Observer`.

It takes its registry as a parameter and registers nothing at import time, so tests use
a fresh ``CollectorRegistry`` and read values back with ``get_sample_value``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FRESHNESS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)


class PrometheusObserver:
    def __init__(self, registry: CollectorRegistry, index: str) -> None:
        self._index = index
        ns = "embedstream"
        self.events_in = Counter(f"{ns}_events_in", "Events consumed", ["stage", "op"], registry=registry)
        self.events_out = Counter(f"{ns}_events_out", "Events produced", ["stage", "op"], registry=registry)
        self.dlq = Counter(f"{ns}_dlq_events", "Events dead-lettered", ["stage", "reason"], registry=registry)
        self.errors = Counter(
            f"{ns}_errors", "Transient faults retried", ["stage", "kind"], registry=registry
        )
        self.docs = Counter(
            f"{ns}_documents", "Documents by sink outcome", ["index", "outcome"], registry=registry
        )
        self.cache_hits = Counter(f"{ns}_chunk_cache_hits", "Chunks served from the cache", registry=registry)
        self.cache_misses = Counter(f"{ns}_chunk_cache_misses", "Chunks not in the cache", registry=registry)
        self.chunks_encoded = Counter(
            f"{ns}_chunks_encoded", "Chunks encoded by the model", registry=registry
        )
        self.tokens = Counter(f"{ns}_tokens_encoded", "Tokens encoded by the model", registry=registry)
        self.encode_seconds = Histogram(
            f"{ns}_encode_batch_seconds", "Seconds per encode batch", buckets=_SECONDS, registry=registry
        )
        self.upsert_seconds = Histogram(
            f"{ns}_upsert_seconds", "Seconds per sink write", ["index"], buckets=_SECONDS, registry=registry
        )
        self.points_upserted = Counter(
            f"{ns}_points_upserted", "Points written", ["index"], registry=registry
        )
        self.points_deleted = Counter(f"{ns}_points_deleted", "Points deleted", ["index"], registry=registry)
        self.lag_gauge = Gauge(
            f"{ns}_consumer_lag", "Records behind", ["stage", "topic", "partition"], registry=registry
        )
        self.freshness_seconds = Histogram(
            f"{ns}_freshness_seconds",
            "Source change to durable",
            ["stage"],
            buckets=_FRESHNESS,
            registry=registry,
        )
        self.reconciles = Counter(
            f"{ns}_reconcile_passes", "Source passes reconciled with the index", ["source"], registry=registry
        )
        self.reconciled_docs = Counter(
            f"{ns}_reconcile_deleted_documents",
            "Documents a reconciling pass deleted: in the index, gone from the source",
            ["source"],
            registry=registry,
        )
        self.last_commit = Gauge(
            f"{ns}_last_commit_timestamp_seconds", "Last successful commit", ["stage"], registry=registry
        )

    def event_in(self, stage: str, op: str) -> None:
        self.events_in.labels(stage, op).inc()

    def event_out(self, stage: str, op: str) -> None:
        self.events_out.labels(stage, op).inc()

    def dead_lettered(self, stage: str, reason: str) -> None:
        self.dlq.labels(stage, reason).inc()

    def error(self, stage: str, kind: str) -> None:
        self.errors.labels(stage, kind).inc()

    def doc_outcome(self, outcome: str) -> None:
        self.docs.labels(self._index, str(outcome)).inc()

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        self.cache_hits.inc(reused)
        self.cache_misses.inc(encoded)
        self.chunks_encoded.inc(encoded)
        self.tokens.inc(tokens)

    def encode_batch(self, seconds: float) -> None:
        self.encode_seconds.observe(seconds)

    def encoding(self, done: int, total: int) -> None:
        pass  # a per-batch progress figure: chunks_encoded_total already counts the work

    def upserted(self, seconds: float, points: int, deleted: int) -> None:
        self.upsert_seconds.labels(self._index).observe(seconds)
        self.points_upserted.labels(self._index).inc(points)
        self.points_deleted.labels(self._index).inc(deleted)

    def freshness(self, stage: str, seconds: Sequence[float]) -> None:
        for value in seconds:
            self.freshness_seconds.labels(stage).observe(value)

    def committed(self, stage: str) -> None:
        self.last_commit.labels(stage).set(time.time())

    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None:
        self.lag_gauge.labels(stage, topic, str(partition)).set(lag)

    def reconciled(self, source: str, deleted: int) -> None:
        self.reconciles.labels(source).inc()
        self.reconciled_docs.labels(source).inc(deleted)
