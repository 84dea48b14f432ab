"""Unit tests for the Prometheus observer (fresh registry per test) and the observer helpers."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pipeline.core.planner import Outcome
from pipeline.observability import Observers, RunStats, for_version
from pipeline.observability.prometheus import PrometheusObserver


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def obs(registry: CollectorRegistry) -> PrometheusObserver:
    return PrometheusObserver(registry, index="docs", version=2)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The sample of ``obs`` (``index_version="docs@v2"`` unless ``labels`` say otherwise)."""
    return registry.get_sample_value(name, {"index_version": "docs@v2", **labels})


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
    one = {"index": "one", "outcome": "added", "index_version": ""}
    assert a.get_sample_value("embedstream_documents_total", one) == 1
    assert a.get_sample_value("embedstream_documents_total", {**one, "index": "two"}) is None
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


def test_every_per_version_series_carries_index_version(
    registry: CollectorRegistry, obs: PrometheusObserver
) -> None:
    """Each call of a bound observer lands in series labelled index_version="docs@v2";
    only the source-level reconcile counters have no such label."""
    obs.event_in("embed", "upsert")
    obs.event_out("embed", "upsert")
    obs.dead_lettered("sink", "too_large")
    obs.error("sink", "store_unavailable")
    obs.doc_outcome("added")
    obs.chunks(1, 1, 10)
    obs.encode_batch(0.1)
    obs.upserted(0.1, 1, 1)
    obs.freshness("sink", [1.0])
    obs.committed("sink")
    obs.lag("sink", "es.vectors.docs-v2", 0, 5)
    obs.reconciled("files", 1)
    unlabelled = {"embedstream_reconcile_passes", "embedstream_reconcile_deleted_documents"}
    seen = 0
    for family in registry.collect():
        for sample in family.samples:
            if family.name in unlabelled:
                assert "index_version" not in sample.labels, sample
            else:
                assert sample.labels.get("index_version") == "docs@v2", sample
                seen += 1
    assert seen


def test_for_version_shares_the_families_and_separates_the_series(registry: CollectorRegistry) -> None:
    """One registry serves every version: for_version registers nothing new, and each
    version's figures stay apart (a migration feeding v1 and v2 side by side)."""
    base = PrometheusObserver(registry, "docs")
    v1, v2 = base.for_version(1), base.for_version(2)
    assert (base.index_version, v1.index_version, v2.index_version) == ("", "docs@v1", "docs@v2")
    v1.upserted(0.1, 3, 0)
    v2.upserted(0.1, 5, 0)
    v2.lag("embed", "es.changes", 0, 7)
    v1.lag("embed", "es.changes", 0, 2)
    base.event_out("source", "upsert")  # the source daemon: no single version owns it
    for label, points in (("docs@v1", 3), ("docs@v2", 5)):
        upserted = value(registry, "embedstream_points_upserted_total", index="docs", index_version=label)
        assert upserted == points
    lag = {"stage": "embed", "topic": "es.changes", "partition": "0"}
    assert value(registry, "embedstream_consumer_lag", index_version="docs@v1", **lag) == 2
    assert value(registry, "embedstream_consumer_lag", index_version="docs@v2", **lag) == 7
    assert value(registry, "embedstream_events_out_total", stage="source", op="upsert", index_version="") == 1


def test_for_version_binds_observers_that_label_by_version() -> None:
    """for_version binds a Prometheus observer, every member of Observers, and leaves the
    others (RunStats) as they are."""
    registry = CollectorRegistry()
    stats = RunStats()
    bound = for_version(Observers(stats, PrometheusObserver(registry, "docs")), 3)
    bound.upserted(0.1, 4, 0)
    assert stats.points_upserted == 4
    assert for_version(stats, 3) is stats
    labels = {"index": "docs", "index_version": "docs@v3"}
    assert registry.get_sample_value("embedstream_points_upserted_total", labels) == 4


def test_text_exposition_labels_versions() -> None:
    """The /metrics text shows index_version on a bound observer's series."""
    registry = CollectorRegistry()
    PrometheusObserver(registry, "docs", 1).upserted(0.1, 2, 0)
    text = generate_latest(registry).decode()
    assert 'embedstream_points_upserted_total{index="docs",index_version="docs@v1"} 2.0' in text
