"""Prometheus implementation of :class:`pipeline.observability.Observer`.

It takes its registry as a parameter and registers nothing at import time, so tests use
a fresh ``CollectorRegistry`` and read values back with ``get_sample_value``.

Every series that belongs to one index version carries ``index_version`` (``docs@v2``, the
name the CLI takes): :meth:`PrometheusObserver.for_version` binds it, sharing the metric
families, so one registry serves every version a process feeds (an embed or sink daemon
runs one; the embedded pipeline feeds each version of a migration). Versions are few, so
the label's cardinality is bounded. An unbound observer (the source daemon: the changes
topic feeds every version) reports ``index_version=""``, which Prometheus stores as no
label at all. Only the source-level reconcile counters have no such label.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FRESHNESS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)
#: The label of every per-version series.
INDEX_VERSION = "index_version"


def index_version_label(index: str, version: int | None) -> str:
    """``docs@v2``; ``""`` (no label, to Prometheus) for what no single version owns."""
    return "" if version is None else f"{index}@v{version}"


@dataclass(frozen=True)
class _Families:
    """The metric families, registered once per registry and shared by every version."""

    events_in: Counter
    events_out: Counter
    dlq: Counter
    errors: Counter
    docs: Counter
    cache_hits: Counter
    cache_misses: Counter
    chunks_encoded: Counter
    tokens: Counter
    encode_seconds: Histogram
    upsert_seconds: Histogram
    points_upserted: Counter
    points_deleted: Counter
    lag_gauge: Gauge
    freshness_seconds: Histogram
    reconciles: Counter
    reconciled_docs: Counter
    last_commit: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> _Families:
        ns, v = "embedstream", INDEX_VERSION
        return cls(
            events_in=Counter(f"{ns}_events_in", "Events consumed", ["stage", "op", v], registry=registry),
            events_out=Counter(f"{ns}_events_out", "Events produced", ["stage", "op", v], registry=registry),
            dlq=Counter(
                f"{ns}_dlq_events", "Events dead-lettered", ["stage", "reason", v], registry=registry
            ),
            errors=Counter(
                f"{ns}_errors", "Transient faults retried", ["stage", "kind", v], registry=registry
            ),
            docs=Counter(
                f"{ns}_documents", "Documents by sink outcome", ["index", "outcome", v], registry=registry
            ),
            cache_hits=Counter(
                f"{ns}_chunk_cache_hits", "Chunks served from the cache", [v], registry=registry
            ),
            cache_misses=Counter(
                f"{ns}_chunk_cache_misses", "Chunks not in the cache", [v], registry=registry
            ),
            chunks_encoded=Counter(
                f"{ns}_chunks_encoded", "Chunks encoded by the model", [v], registry=registry
            ),
            tokens=Counter(f"{ns}_tokens_encoded", "Tokens encoded by the model", [v], registry=registry),
            encode_seconds=Histogram(
                f"{ns}_encode_batch_seconds",
                "Seconds per encode batch",
                [v],
                buckets=_SECONDS,
                registry=registry,
            ),
            upsert_seconds=Histogram(
                f"{ns}_upsert_seconds",
                "Seconds per sink write",
                ["index", v],
                buckets=_SECONDS,
                registry=registry,
            ),
            points_upserted=Counter(
                f"{ns}_points_upserted", "Points written", ["index", v], registry=registry
            ),
            points_deleted=Counter(f"{ns}_points_deleted", "Points deleted", ["index", v], registry=registry),
            lag_gauge=Gauge(
                f"{ns}_consumer_lag", "Records behind", ["stage", "topic", "partition", v], registry=registry
            ),
            freshness_seconds=Histogram(
                f"{ns}_freshness_seconds",
                "Source change to durable",
                ["stage", v],
                buckets=_FRESHNESS,
                registry=registry,
            ),
            reconciles=Counter(
                f"{ns}_reconcile_passes",
                "Source passes reconciled with the index",
                ["source"],
                registry=registry,
            ),
            reconciled_docs=Counter(
                f"{ns}_reconcile_deleted_documents",
                "Documents a reconciling pass deleted: in the index, gone from the source",
                ["source"],
                registry=registry,
            ),
            last_commit=Gauge(
                f"{ns}_last_commit_timestamp_seconds",
                "Last successful commit",
                ["stage", v],
                registry=registry,
            ),
        )


class PrometheusObserver:
    """Counts what the stages report into ``registry``, labelled with ``index`` and, with
    ``version``, ``index_version="<index>@v<version>"`` (see the module doc)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        index: str,
        version: int | None = None,
        *,
        _families: _Families | None = None,
    ) -> None:
        self._index = index
        self._version = version
        self._label = index_version_label(index, version)
        self._m = _families if _families is not None else _Families.register(registry)
        self._registry = registry

    @property
    def index_version(self) -> str:
        """This observer's ``index_version`` label value (``""``: unbound)."""
        return self._label

    def for_version(self, version: int) -> PrometheusObserver:
        """The same metric families (no new registration), bound to ``version``."""
        return PrometheusObserver(self._registry, self._index, version, _families=self._m)

    def event_in(self, stage: str, op: str) -> None:
        self._m.events_in.labels(stage, op, self._label).inc()

    def event_out(self, stage: str, op: str) -> None:
        self._m.events_out.labels(stage, op, self._label).inc()

    def dead_lettered(self, stage: str, reason: str) -> None:
        self._m.dlq.labels(stage, reason, self._label).inc()

    def error(self, stage: str, kind: str) -> None:
        self._m.errors.labels(stage, kind, self._label).inc()

    def doc_outcome(self, outcome: str) -> None:
        self._m.docs.labels(self._index, str(outcome), self._label).inc()

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        self._m.cache_hits.labels(self._label).inc(reused)
        self._m.cache_misses.labels(self._label).inc(encoded)
        self._m.chunks_encoded.labels(self._label).inc(encoded)
        self._m.tokens.labels(self._label).inc(tokens)

    def encode_batch(self, seconds: float) -> None:
        self._m.encode_seconds.labels(self._label).observe(seconds)

    def encoding(self, done: int, total: int) -> None:
        pass  # a per-batch progress figure: chunks_encoded_total already counts the work

    def upserted(self, seconds: float, points: int, deleted: int) -> None:
        self._m.upsert_seconds.labels(self._index, self._label).observe(seconds)
        self._m.points_upserted.labels(self._index, self._label).inc(points)
        self._m.points_deleted.labels(self._index, self._label).inc(deleted)

    def freshness(self, stage: str, seconds: Sequence[float]) -> None:
        for value in seconds:
            self._m.freshness_seconds.labels(stage, self._label).observe(value)

    def committed(self, stage: str) -> None:
        self._m.last_commit.labels(stage, self._label).set(time.time())

    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None:
        self._m.lag_gauge.labels(stage, topic, str(partition), self._label).set(lag)

    def reconciled(self, source: str, deleted: int) -> None:
        self._m.reconciles.labels(source).inc()
        self._m.reconciled_docs.labels(source).inc(deleted)
