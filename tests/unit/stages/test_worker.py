"""Unit tests for the worker loop: backoff, retry of transient faults, and commit discipline."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

import pipeline.stages.worker as worker_module
from pipeline.bus import Outgoing, Record
from pipeline.bus.memory import InMemoryBus
from pipeline.core.errors import CommitLost, PoisonError, StoreUnavailable
from pipeline.observability import NullObserver
from pipeline.stages.worker import Health, Worker, backoff_seconds, is_retryable

IN, OUT, GROUP = "in", "out", "g"


class RecordingObserver(NullObserver):
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.commits: list[str] = []
        self.lags: list[tuple[str, str, int, int]] = []

    def error(self, stage: str, kind: str) -> None:
        self.errors.append((stage, kind))

    def committed(self, stage: str) -> None:
        self.commits.append(stage)

    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None:
        self.lags.append((stage, topic, partition, lag))


class FlakyStage:
    """Copies each record to OUT; raises ``errors`` (in order) on its first calls."""

    name = "flaky"

    def __init__(self, errors: Sequence[BaseException] = (), health: Health | None = None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.health = health
        self.degraded_seen: list[str | None] = []
        self.on_call: list[object] = []

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        self.calls += 1
        if self.health is not None:
            self.degraded_seen.append(self.health.degraded)
        for hook in self.on_call:
            hook()  # type: ignore[operator]
        if self.errors:
            raise self.errors.pop(0)
        return [Outgoing(OUT, r.key or "", (r.value or b"") + b"!") for r in records]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "backoff_seconds", lambda *args, **kwargs: 0.0)


def setup(stage: FlakyStage, count: int = 3) -> tuple[InMemoryBus, Worker, RecordingObserver]:
    bus = InMemoryBus(default_partitions=2)
    bus.producer().send([Outgoing(IN, f"k{i}", f"v{i}".encode()) for i in range(count)])
    observer = RecordingObserver()
    health = Health()
    stage.health = health
    worker = Worker(
        bus.consumer(GROUP, [IN]), bus.producer(), stage, observer, poll_timeout_s=0.0, health=health
    )
    return bus, worker, observer


def total_lag(bus: InMemoryBus) -> int:
    return sum(bus.lag(GROUP, [IN]).values())


# ---------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_until_cap() -> None:
    """With jitter=1 the delay doubles per attempt from base and then stays at the cap."""
    delays = [backoff_seconds(a, base=0.2, cap=15.0, jitter=1.0) for a in range(1, 12)]
    assert delays[0] == pytest.approx(0.2)
    for earlier, later in itertools.pairwise(delays):
        assert later == pytest.approx(min(15.0, earlier * 2))
    assert delays[-1] == pytest.approx(15.0)
    assert max(delays) == pytest.approx(15.0)


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("attempt", [0, 1, 3, 8, 50])
def test_backoff_is_jitter_fraction_of_ceiling(attempt: int, jitter: float) -> None:
    """The delay is jitter times the capped ceiling, so it lies in [0, ceiling]."""
    ceiling = min(15.0, 0.2 * 2.0 ** max(0, attempt - 1))
    value = backoff_seconds(attempt, jitter=jitter)
    assert value == pytest.approx(ceiling * jitter)
    assert 0.0 <= value <= ceiling


def test_backoff_random_jitter_stays_in_range() -> None:
    """Without explicit jitter, many samples all lie within [0, ceiling] and are not all equal."""
    samples = [backoff_seconds(4, base=0.5, cap=3.0) for _ in range(200)]
    assert all(0.0 <= s <= 3.0 for s in samples)
    assert len(set(samples)) > 1


def test_is_retryable_only_for_retryable_embedstream_errors() -> None:
    """Only RetryableError subclasses are retried; poison and foreign exceptions are not."""
    assert is_retryable(StoreUnavailable("down"))
    assert not is_retryable(PoisonError("bad"))
    assert not is_retryable(RuntimeError("bug"))


# ---------------------------------------------------------------- run_batch


def test_transient_fault_is_retried_then_committed_once() -> None:
    """StoreUnavailable twice then success: output produced once, batch committed, health recovers."""
    stage = FlakyStage([StoreUnavailable("qdrant down"), StoreUnavailable("still down")])
    bus, worker, observer = setup(stage)
    assert worker.run_batch() == 3
    assert stage.calls == 3
    out = bus.records(OUT)
    assert sorted(r.value for r in out) == [b"v0!", b"v1!", b"v2!"]
    assert total_lag(bus) == 0
    assert observer.errors == [("flaky", "store_unavailable"), ("flaky", "store_unavailable")]
    assert observer.commits == ["flaky"]
    # Degraded while retrying, cleared after recovery.
    assert stage.degraded_seen[0] is None
    assert stage.degraded_seen[1] is not None
    assert stage.degraded_seen[1].startswith("store_unavailable")
    assert stage.degraded_seen[2] is not None
    assert worker.health.degraded is None
    assert worker.health.ready
    assert worker.health.last_commit > 0
    # Nothing left to do: the next batch is empty and nothing is produced twice.
    assert worker.run_batch() == 0
    assert len(bus.records(OUT)) == 3


def test_unexpected_exception_propagates_without_commit() -> None:
    """A non-embedstream exception is not retried: it propagates and nothing is produced or committed."""
    stage = FlakyStage([RuntimeError("bug in stage")])
    bus, worker, observer = setup(stage)
    with pytest.raises(RuntimeError, match="bug in stage"):
        worker.run_batch()
    assert stage.calls == 1
    assert bus.records(OUT) == []
    assert total_lag(bus) == 3
    assert observer.commits == []
    assert observer.errors == []
    # The uncommitted batch is redelivered to the next consumer of the group.
    again = bus.consumer(GROUP, [IN]).poll(10, 0.0)
    assert sorted(r.value for r in again) == [b"v0", b"v1", b"v2"]


def test_poison_error_reaching_worker_is_not_retried() -> None:
    """A PoisonError that escapes a stage propagates at once (stages must dead-letter it)."""
    stage = FlakyStage([PoisonError("bad")])
    bus, worker, _ = setup(stage)
    with pytest.raises(PoisonError):
        worker.run_batch()
    assert stage.calls == 1
    assert total_lag(bus) == 3


def test_stop_ends_retrying_without_commit() -> None:
    """Setting worker.stop during retries re-raises the transient error and commits nothing."""
    stage = FlakyStage([StoreUnavailable(f"down {i}") for i in range(100)])
    bus, worker, observer = setup(stage)
    stage.on_call.append(lambda: worker.stop.set() if stage.calls >= 2 else None)
    with pytest.raises(StoreUnavailable):
        worker.run_batch()
    assert stage.calls == 2
    assert bus.records(OUT) == []
    assert total_lag(bus) == 3
    assert observer.commits == []


def test_run_returns_when_stopped_and_calls_on_idle() -> None:
    """run() processes batches, calls on_idle when there is nothing to do, and exits once stop is set."""
    stage = FlakyStage()
    bus, worker, _ = setup(stage)
    idle_calls: list[int] = []

    def on_idle() -> None:
        idle_calls.append(1)
        worker.stop.set()

    worker.run(on_idle)
    assert idle_calls == [1]
    assert len(bus.records(OUT)) == 3
    assert total_lag(bus) == 0


def test_report_lag_reports_every_partition() -> None:
    """report_lag returns the consumer's lag and forwards each partition to the observer."""
    stage = FlakyStage()
    _, worker, observer = setup(stage, count=5)
    lag = worker.report_lag()
    assert sum(lag.values()) == 5
    assert sorted(observer.lags) == sorted(("flaky", t, p, v) for (t, p), v in lag.items())
    worker.run_batch()
    assert sum(worker.report_lag().values()) == 0


class CommitLostConsumer:
    """Wraps a real consumer; every commit fails as if the partitions had moved away."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.commits = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def commit(self, records: Sequence[Record]) -> None:
        self.commits += 1
        raise CommitLost("partitions revoked")


def test_commit_lost_is_logged_not_retried_or_raised() -> None:
    """CommitLost after a processed batch: output stays produced, no retry, no commit, error observed."""
    stage = FlakyStage()
    bus, _, observer = setup(stage)
    consumer = CommitLostConsumer(bus.consumer(GROUP, [IN]))
    worker = Worker(consumer, bus.producer(), stage, observer, poll_timeout_s=0.0)  # type: ignore[arg-type]
    assert worker.run_batch() == 3
    assert consumer.commits == 1
    assert len(bus.records(OUT)) == 3
    assert total_lag(bus) == 3
    assert observer.commits == []
    assert observer.errors == [("flaky", "commit_lost")]
    assert worker.health.last_commit == 0.0


# ---------------------------------------------------------------- readiness


def test_a_broker_call_waiting_past_the_stall_bound_makes_the_worker_not_ready() -> None:
    """A send blocked on acks (the broker just went away) shows on /readyz before any timeout fires."""
    health = Health()
    with health.awaiting("produce"):
        started = health.waiting[1] if health.waiting else 0.0
        assert health.readiness(now=started + 1) == (True, "ok")
        ready, detail = health.readiness(now=started + worker_module.STALL_S + 2)
        assert not ready
        assert detail.startswith("produce: no answer from the broker")
    assert health.waiting is None
    assert health.ready


def test_worker_marks_its_produce_and_commit_calls_as_awaited() -> None:
    """The worker's broker calls (not the stage's own work) are the ones a stall is measured on."""
    stage = FlakyStage()
    bus, worker, _ = setup(stage)
    seen: list[str | None] = []
    stage.on_call.append(lambda: seen.append(worker.health.waiting and worker.health.waiting[0]))
    producer, consumer = bus.producer(), worker._consumer
    original_send, original_commit = producer.send, consumer.commit

    def send(messages: Sequence[Outgoing]) -> None:
        seen.append(worker.health.waiting and worker.health.waiting[0])
        original_send(messages)

    def commit(records: Sequence[Record]) -> None:
        seen.append(worker.health.waiting and worker.health.waiting[0])
        original_commit(records)

    worker._producer = producer
    producer.send = send  # type: ignore[method-assign]
    consumer.commit = commit  # type: ignore[method-assign]
    while worker.run_batch():
        pass
    assert seen[:3] == [None, "produce", "commit"]
    assert worker.health.waiting is None
