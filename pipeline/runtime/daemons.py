"""Long-running processes over Kafka: ``source``, ``embed`` and ``sink``.

Each daemon is a short binding of :class:`pipeline.runtime.Runtime` over a Kafka bus, plus a
``/metrics`` endpoint, periodic lag reports and a SIGTERM drain: stop polling, finish the
batch, commit, exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from prometheus_client import CollectorRegistry

from pipeline.bus import Outgoing, Producer
from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
from pipeline.config.settings import Settings
from pipeline.core.errors import MessageTooLarge
from pipeline.core.events import ChangeEvent
from pipeline.observability.http import DaemonServer
from pipeline.observability.prometheus import PrometheusObserver
from pipeline.runtime import Runtime
from pipeline.runtime.adapters import check_index_dims
from pipeline.runtime.passes import run_source_pass
from pipeline.runtime.registry import embed_version, read_versions, sink_planner
from pipeline.sources import Source
from pipeline.stages import Stage
from pipeline.stages.worker import Health, Worker, call_with_retry
from pipeline.versions.doc_states import DocStates
from pipeline.versions.spec import live_version

log = logging.getLogger(__name__)

LAG_REPORT_S = 5.0
SOURCE_SLICE = 256
#: The lag query (every LAG_REPORT_S) is the idle daemon's broker probe: one that gets
#: no answer in 3 s marks the daemon not ready (/readyz 503) while it keeps retrying, so
#: an outage shows within ~8 s; the client defaults (30 s) would hide a short one.
DAEMON_TIMEOUTS = KafkaTimeouts(request_ms=10_000, bootstrap_ms=10_000, probe_ms=3_000)
PROGRESS_LOG_S = 30.0


#: A stage's own reason to be reported not ready although it runs (None: none).
Check = Callable[[], str | None]


@dataclass(frozen=True)
class DaemonContext:
    runtime: Runtime
    bus: KafkaBus
    stop: threading.Event
    registry: CollectorRegistry
    health: Health
    checks: list[Check] = field(default_factory=list)  # consulted by /readyz


def _readiness(health: Health, checks: Sequence[Check]) -> tuple[bool, str]:
    problems = [problem for check in checks if (problem := check()) is not None]
    return (False, "; ".join(problems)) if problems else health.readiness()


@contextmanager
def daemon(
    settings: Settings, stop: threading.Event, name: str, version: int | None = None
) -> Iterator[DaemonContext]:
    """Runtime, Kafka bus, metrics registry and HTTP endpoint around one daemon's lifetime;
    ``version`` (embed, sink) labels its series ``index_version``, the source's have none."""
    registry = CollectorRegistry()
    health = Health()
    runtime = Runtime(settings, PrometheusObserver(registry, settings.index.name, version))
    bus = runtime.kafka_bus(f"embedstream-{name}", DAEMON_TIMEOUTS)
    checks: list[Check] = []
    try:
        server = DaemonServer(settings.http.addr, registry, partial(_readiness, health, checks)).start()
        log.info("%s daemon started", name, extra={"http": server.url, "index": settings.index.name})
        try:
            yield DaemonContext(runtime, bus, stop, registry, health, checks)
        finally:
            server.stop()
            log.info("%s daemon stopped", name)
    finally:
        bus.close()
        runtime.close()


def run_embed(settings: Settings, version: int, stop: threading.Event) -> None:
    check_index_dims(settings)
    with daemon(settings, stop, "embed", version) as ctx:
        runtime, bus = ctx.runtime, ctx.bus
        call_with_retry(lambda: bus.ensure_topics(runtime.topic_specs(version)), ctx.stop, ctx.health)
        # The version's registered model and chunker, or exit 3 pointing at `migrate`.
        call_with_retry(lambda: embed_version(runtime, bus, version), ctx.stop, ctx.health)
        _consume(ctx, runtime.embed_stage(version), version)


def run_sink(settings: Settings, version: int, stop: threading.Event) -> None:
    with daemon(settings, stop, "sink", version) as ctx:
        runtime, bus, name = ctx.runtime, ctx.bus, settings.index.name
        call_with_retry(lambda: bus.ensure_topics(runtime.topic_specs(version)), ctx.stop, ctx.health)
        registered = call_with_retry(lambda: read_versions(bus, runtime.topics, name), ctx.stop, ctx.health)
        spec = registered.get(version)
        stage = runtime.sink_stage(version, sink_planner(runtime, bus, version))
        ctx.checks.append(stage.problem)
        # A rebuild reads the vectors of the version it was rebuilt from: nothing is encoded.
        vectors = runtime.topics.vectors(name, spec.vectors_version if spec else version)
        _consume(ctx, stage, version, vectors)


def _consume(ctx: DaemonContext, stage: Stage, version: int, topic: str | None = None) -> None:
    """What every consuming daemon shares (once its topics exist): group member, worker loop."""
    runtime, bus = ctx.runtime, ctx.bus
    source = topic or runtime.input_topic(stage, version)
    consumer = bus.consumer(runtime.group_id(stage.name, version), [source])
    try:
        worker = runtime.worker(stage, consumer, bus.producer(), stop=ctx.stop, health=ctx.health)
        _run_worker(worker)
    finally:
        consumer.close()


def run_source(settings: Settings, source: Source, stop: threading.Event, interval_s: float) -> None:
    """Publish the source's changes forever: a pass every ``interval_s``, each slice
    checkpointed only after the broker acknowledged it. A pass that fails for a transient
    reason (the database or the broker away) is retried with backoff, /readyz reporting it."""
    with daemon(settings, stop, "source") as ctx:
        runtime = ctx.runtime
        call_with_retry(lambda: ctx.bus.ensure_topics(runtime.topic_specs(1)[:1]), stop, ctx.health)
        producer = ctx.bus.producer()
        deliver = partial(publish_changes, producer=producer, ctx=ctx)
        reconciling = Reconciling(settings, runtime, source.name)
        try:
            while not stop.is_set():
                indexed = reconciling.due()
                one_pass = partial(
                    run_source_pass, source, deliver, slice_size=SOURCE_SLICE, indexed=indexed,
                    allow_mass_delete=settings.sources.allow_mass_delete,
                )  # fmt: skip
                result = call_with_retry(one_pass, stop, ctx.health, runtime.observer, "source")
                reconciling.done(indexed, result.orphans)
                if result.report.skipped:
                    log.info("source skipped documents", extra={"skipped": dict(result.report.skipped)})
                ctx.health.last_commit = time.time()
                runtime.observer.committed("source")
                stop.wait(interval_s)
        finally:
            producer.close()


class Reconciling:
    """When a source daemon's pass reconciles with the index: every
    ``sources.reconcile_every_s``, reading the live version's document states from the
    Qdrant server (``store.url``; the embedded engine belongs to its sink, so without a server
    the daemon follows its checkpoint alone, and says so once)."""

    def __init__(self, settings: Settings, runtime: Runtime, source: str) -> None:
        self._settings, self._runtime, self._source = settings, runtime, source
        self._last = float("-inf")
        if not settings.store.url:
            log.warning("source %s: no store.url, so passes never reconcile with the index", source)

    def due(self) -> Callable[[], dict[str, int]] | None:
        every = self._settings.sources.reconcile_every_s
        if not self._settings.store.url or time.monotonic() - self._last < every:
            return None
        return self._indexed

    def done(self, indexed: Callable[[], dict[str, int]] | None, repaired: int) -> None:
        if indexed is None:
            return
        self._last = time.monotonic()
        self._runtime.observer.reconciled(self._source, repaired)
        if repaired:
            log.warning(
                "source %s: reconciliation deleted %d documents the source no longer has",
                self._source,
                repaired,
            )

    def _indexed(self) -> dict[str, int]:
        store = self._runtime.store
        live = live_version(store, self._settings.index.name)
        return DocStates(store, live).live(self._source) if live is not None else {}


def publish_changes(events: Sequence[ChangeEvent], *, producer: Producer, ctx: DaemonContext) -> set[str]:
    """Send a slice of changes, every event in order; returns only once the broker
    acknowledged them all, because the checkpoint advances right after. A document whose
    event is too large for any Kafka message is left out and reported (its key is
    returned: not checkpointed, tried again next pass)."""
    topics, observer = ctx.runtime.topics, ctx.runtime.observer
    refused: set[str] = set()
    while True:
        pending = [Outgoing(topics.changes, e.key, e.to_bytes()) for e in events if e.key not in refused]
        try:
            call_with_retry(partial(producer.send, pending), ctx.stop, ctx.health, awaiting="produce")
            break
        except MessageTooLarge as exc:
            key = exc.key if exc.key in {m.key for m in pending} else pending[0].key
            log.warning("source: %s is too large for a Kafka message (%s); not published", key, exc)
            observer.dead_lettered("source", exc.reason)
            refused.add(key)
    for event in events:
        if event.key not in refused:
            observer.event_out("source", event.op)
    if pending:
        log.info("source emitted %d changes", len(pending))
    return refused


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
