"""Long-running processes over Kafka: ``source fs``, ``embed`` and ``sink``.

Each daemon is the embedded mode's stage plus a Kafka transport, a ``/metrics`` endpoint,
periodic lag reports and a SIGTERM drain: stop polling, finish the batch, commit, exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry

from connectors.filesystem import Change, Checkpoint, FilesystemSource, ScanReport, checkpoint_path
from pipeline.bus import Consumer, Outgoing, Producer, TopicSpec
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.components import make_chunker, make_encoder, open_cache, open_store
from pipeline.http import DaemonServer
from pipeline.indexer import slices
from pipeline.metrics import PrometheusObserver
from pipeline.observe import Observer
from pipeline.settings import Settings
from pipeline.stages import Stage
from pipeline.stages.embed import EmbedStage
from pipeline.stages.sink import SinkStage
from pipeline.topics import Topics
from pipeline.worker import Health, Worker, call_with_retry

log = logging.getLogger(__name__)

LAG_REPORT_S = 5.0
SOURCE_SLICE = 256
#: The lag query (every LAG_REPORT_S) is the idle daemon's broker probe: one that gets
#: no answer in 3 s marks the daemon not ready (/readyz 503) while it keeps retrying, so
#: an outage shows within ~8 s; the client defaults (30 s) would hide a short one.
DAEMON_TIMEOUTS = KafkaTimeouts(request_ms=10_000, bootstrap_ms=10_000, probe_ms=3_000)
PROGRESS_LOG_S = 30.0


@dataclass(frozen=True)
class DaemonContext:
    settings: Settings
    stop: threading.Event
    registry: CollectorRegistry
    observer: Observer
    health: Health


def topic_specs(settings: Settings, version: int) -> list[TopicSpec]:
    topics, kafka = Topics(settings.kafka.topic_prefix), settings.kafka
    return [
        TopicSpec(topics.changes, kafka.partitions, kafka.replication, compacted=True),
        TopicSpec(topics.vectors(settings.index.name, version), kafka.partitions, kafka.replication),
        TopicSpec(topics.dlq, kafka.partitions, kafka.replication, compacted=False),
    ]


def group_id(settings: Settings, stage: str, version: int) -> str:
    """One consumer group per stage and index version: a new version backfills from offset 0."""
    return f"{settings.kafka.topic_prefix}.{stage}.{settings.index.name}-v{version}"


@contextmanager
def daemon(settings: Settings, stop: threading.Event, name: str) -> Iterator[DaemonContext]:
    """Metrics registry, observer and HTTP endpoint around one daemon's lifetime."""
    registry = CollectorRegistry()
    health = Health()
    observer = PrometheusObserver(registry, settings.index.name)

    server = DaemonServer(settings.http.addr, registry, health.readiness).start()
    log.info("%s daemon started", name, extra={"http": server.url, "index": settings.index.name})
    try:
        yield DaemonContext(settings, stop, registry, observer, health)
    finally:
        server.stop()
        log.info("%s daemon stopped", name)


def run_embed(settings: Settings, version: int, stop: threading.Event) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    encoder = make_encoder(settings)
    cache = open_cache(settings)
    try:
        with daemon(settings, stop, "embed") as ctx:
            stage = EmbedStage(
                encoder, cache, make_chunker(encoder, settings), settings.limits,
                topics.vectors(settings.index.name, version), topics.dlq, ctx.observer,
            )  # fmt: skip
            _consume(ctx, stage, version, topics.changes)
    finally:
        cache.close()


def run_sink(settings: Settings, version: int, stop: threading.Event) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    store = open_store(settings)  # fails fast if another process owns an embedded store
    try:
        with daemon(settings, stop, "sink") as ctx:
            stage = SinkStage(store, settings.index, version, topics.dlq, ctx.observer)
            _consume(ctx, stage, version, topics.vectors(settings.index.name, version))
    finally:
        store.close()


def _consume(ctx: DaemonContext, stage: Stage, version: int, topic: str) -> None:
    """The Kafka side every consuming daemon shares: topics, group member, worker loop."""
    settings = ctx.settings
    bus = KafkaBus(settings.kafka, client_id=f"embedstream-{stage.name}", timeouts=DAEMON_TIMEOUTS)
    try:
        call_with_retry(lambda: bus.ensure_topics(topic_specs(settings, version)), ctx.stop, ctx.health)
        consumer = bus.consumer(group_id(settings, stage.name, version), [topic])
        try:
            _run_worker(_worker(ctx, consumer, bus.producer(), stage))
        finally:
            consumer.close()
    finally:
        bus.close()


def run_source_fs(
    settings: Settings, source: FilesystemSource, stop: threading.Event, interval_s: float
) -> None:
    topics = Topics(settings.kafka.topic_prefix)
    bus = KafkaBus(settings.kafka, client_id="embedstream-source", timeouts=DAEMON_TIMEOUTS)
    path = checkpoint_path(settings.state_dir / "sources", source.source, source.root)
    with daemon(settings, stop, "source") as ctx:
        call_with_retry(lambda: bus.ensure_topics(topic_specs(settings, 1)[:1]), stop, ctx.health)
        producer = bus.producer()
        checkpoint = Checkpoint.load(path)
        try:
            while not stop.is_set():
                report = ScanReport()
                # In slices, so a first scan of a huge tree never holds every text at once.
                for part in slices(source.scan(checkpoint, report), SOURCE_SLICE):
                    publish_changes(part, producer, topics, stop, ctx)
                    for change in part:
                        checkpoint.apply(change)
                    checkpoint.save(path)
                if report.skipped:
                    log.info("source skipped files", extra={"skipped": dict(report.skipped)})
                ctx.health.last_commit = time.time()
                ctx.observer.committed("source")
                stop.wait(interval_s)
        finally:
            producer.close()
            bus.close()


def publish_changes(
    changes: Sequence[Change], producer: Producer, topics: Topics, stop: threading.Event, ctx: DaemonContext
) -> None:
    """Send a slice of changes; returns only once the broker acknowledged every event,
    because the checkpoint advances right after."""
    events = [c.event for c in changes if c.event is not None]
    messages = [Outgoing(topics.changes, e.key, e.to_bytes()) for e in events]
    call_with_retry(partial(producer.send, messages), stop, ctx.health, awaiting="produce")
    for event in events:
        ctx.observer.event_out("source", event.op)
    if messages:
        log.info("source emitted %d changes", len(messages))


def _worker(ctx: DaemonContext, consumer: Consumer, producer: Producer, stage: Stage) -> Worker:
    kafka = ctx.settings.kafka
    return Worker(
        consumer, producer, stage, ctx.observer,
        max_records=kafka.batch_max_records,
        poll_timeout_s=max(0.05, kafka.batch_max_wait_ms / 1000),
        stop=ctx.stop,
        health=ctx.health,
    )  # fmt: skip


def _run_worker(worker: Worker) -> None:
    """Batches until stopped, with lag reports and a periodic one-line progress log."""
    last_lag = last_log = 0.0
    processed = 0
    while not worker.stop.is_set():
        processed += worker.run_batch()
        now = time.monotonic()
        if now - last_lag >= LAG_REPORT_S:
            lag = worker.report_lag()
            last_lag = now
            if now - last_log >= PROGRESS_LOG_S:
                log.info("progress", extra={"records": processed, "lag": sum(lag.values())})
                last_log = now
