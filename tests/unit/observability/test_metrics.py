"""Unit tests for the Prometheus observer (fresh registry per test) and the observer helpers."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from pipeline.core.planner import Outcome
from pipeline.observability import Observers, RunStats
from pipeline.observability.prometheus import PrometheusObserver


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def obs(registry: CollectorRegistry) -> PrometheusObserver:
    return PrometheusObserver(registry, index="docs")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_chunks_updates_cache_and_encode_counters(
    registry: CollectorRegistry, obs: PrometheusObserver
) -> None:
    """chunks(encoded, reused, tokens) feeds cache hits/misses, encoded chunks and tokens."""
    obs.chunks(5, 3, 100)
    obs.chunks(2, 0, 40)
    assert value(registry, "embedstream_chunk_cache_hits_total") == 3
    assert value(registry, "embedstream_chunk_cache_misses_total") == 7
    assert value(registry, "embedstream_chunks_encoded_total") == 7
    assert value(registry, "embedstream_tokens_encoded_total") == 140


def test_doc_outcome_counts_by_index_and_outcome(
    registry: CollectorRegistry, obs: PrometheusObserver
) -> None:
    """doc_outcome counts per outcome under the observer's index label, StrEnum or str alike."""
    obs.doc_outcome(Outcome.ADDED)
    obs.doc_outcome("added")
    obs.doc_outcome(Outcome.STALE)
    assert value(registry, "embedstream_documents_total", index="docs", outcome="added") == 2
    assert value(registry, "embedstream_documents_total", index="docs", outcome="stale") == 1
    assert value(registry, "embedstream_documents_total", index="docs", outcome="changed") is None


def test_dead_lettered_counts_by_stage_and_reason(
    registry: CollectorRegistry, obs: PrometheusObserver
) -> None:
    """dead_lettered increments the DLQ counter labelled with stage and reason."""
    obs.dead_lettered("embed", "invalid_event")
    obs.dead_lettered("embed", "invalid_event")
    obs.dead_lettered("sink", "invalid_vectors")
    assert value(registry, "embedstream_dlq_events_total", stage="embed", reason="invalid_event") == 2
    assert value(registry, "embedstream_dlq_events_total", stage="sink", reason="invalid_vectors") == 1


def test_events_and_errors(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """event_in, event_out and error counters carry their stage and op/kind labels."""
    obs.event_in("embed", "upsert")
    obs.event_in("embed", "upsert")
    obs.event_out("embed", "delete")
    obs.error("sink", "store_unavailable")
    assert value(registry, "embedstream_events_in_total", stage="embed", op="upsert") == 2
    assert value(registry, "embedstream_events_out_total", stage="embed", op="delete") == 1
    assert value(registry, "embedstream_errors_total", stage="sink", kind="store_unavailable") == 1


def test_upserted_records_points_and_latency(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """upserted adds points written/deleted and one latency observation per call."""
    obs.upserted(0.3, 10, 2)
    obs.upserted(0.1, 5, 0)
    assert value(registry, "embedstream_points_upserted_total", index="docs") == 15
    assert value(registry, "embedstream_points_deleted_total", index="docs") == 2
    assert value(registry, "embedstream_upsert_seconds_count", index="docs") == 2
    assert value(registry, "embedstream_upsert_seconds_sum", index="docs") == pytest.approx(0.4)
    assert value(registry, "embedstream_upsert_seconds_bucket", index="docs", le="0.1") == 1


def test_encode_batch_histogram(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """encode_batch observes seconds into the encode histogram."""
    obs.encode_batch(0.02)
    assert value(registry, "embedstream_encode_batch_seconds_count") == 1
    assert value(registry, "embedstream_encode_batch_seconds_sum") == pytest.approx(0.02)
    assert value(registry, "embedstream_encode_batch_seconds_bucket", le="0.01") == 0
    assert value(registry, "embedstream_encode_batch_seconds_bucket", le="0.025") == 1


def test_freshness_observes_every_value(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """freshness observes each latency of a batch into the stage's histogram."""
    obs.freshness("sink", [0.2, 3.0, 700.0])
    assert value(registry, "embedstream_freshness_seconds_count", stage="sink") == 3
    assert value(registry, "embedstream_freshness_seconds_sum", stage="sink") == pytest.approx(703.2)
    assert value(registry, "embedstream_freshness_seconds_bucket", stage="sink", le="0.25") == 1
    assert value(registry, "embedstream_freshness_seconds_bucket", stage="sink", le="5.0") == 2
    assert value(registry, "embedstream_freshness_seconds_bucket", stage="sink", le="+Inf") == 3


def test_committed_sets_last_commit_timestamp(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """committed sets the stage's last-commit gauge to the current time."""
    before = time.time()
    obs.committed("embed")
    after = time.time()
    stamp = value(registry, "embedstream_last_commit_timestamp_seconds", stage="embed")
    assert stamp is not None
    assert before <= stamp <= after


def test_lag_gauge_is_set_not_added(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """lag sets the per-partition gauge to the latest value."""
    obs.lag("embed", "es.changes", 0, 7)
    obs.lag("embed", "es.changes", 0, 3)
    obs.lag("embed", "es.changes", 1, 11)
    labels = {"stage": "embed", "topic": "es.changes"}
    assert value(registry, "embedstream_consumer_lag", partition="0", **labels) == 3
    assert value(registry, "embedstream_consumer_lag", partition="1", **labels) == 11


def test_two_observers_in_fresh_registries_do_not_collide() -> None:
    """Each observer registers only in its own registry, so several can coexist."""
    a, b = CollectorRegistry(), CollectorRegistry()
    PrometheusObserver(a, "one").doc_outcome("added")
    PrometheusObserver(b, "two").doc_outcome("added")
    assert a.get_sample_value("embedstream_documents_total", {"index": "one", "outcome": "added"}) == 1
    assert a.get_sample_value("embedstream_documents_total", {"index": "two", "outcome": "added"}) is None
    with pytest.raises(ValueError):
        PrometheusObserver(a, "again")


def test_observers_fan_out_to_every_member(registry: CollectorRegistry, obs: PrometheusObserver) -> None:
    """Observers forwards each call to all members (e.g. RunStats and Prometheus)."""
    stats = RunStats()
    both = Observers(stats, obs)
    both.chunks(4, 6, 50)
    both.doc_outcome("changed")
    both.dead_lettered("embed", "too_large")
    both.upserted(0.01, 3, 1)
    both.event_in("embed", "upsert")
    assert (stats.encoded, stats.reused, stats.tokens) == (4, 6, 50)
    assert stats.docs == {"changed": 1}
    assert stats.dead == {"too_large": 1}
    assert (stats.points_upserted, stats.points_deleted) == (3, 1)
    assert stats.events_in == {"embed": 1}
    assert value(registry, "embedstream_chunk_cache_hits_total") == 6
    assert value(registry, "embedstream_documents_total", index="docs", outcome="changed") == 1
    assert value(registry, "embedstream_points_deleted_total", index="docs") == 1
