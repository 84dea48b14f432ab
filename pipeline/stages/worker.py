"""The thin loop around a stage: poll, handle, produce, commit; retry what is transient.

The one place that decides from an exception's type: retryable errors are retried with
capped, jittered exponential backoff while nothing is committed and health reports
degraded; poison never reaches here (stages dead-letter it); anything else is a bug and
propagates, so the process exits and the batch is redelivered after restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from pipeline.bus import Consumer, Producer
from pipeline.core.errors import CommitLost, EmbedstreamError
from pipeline.core.faults import crash_point
from pipeline.observability import Observer
from pipeline.stages import Stage

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_seconds(attempt: int, base: float = 0.2, cap: float = 15.0, jitter: float | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    fraction = random.random() if jitter is None else jitter  # noqa: S311 -- not crypto
    return float(ceiling * fraction)


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, EmbedstreamError) and error.retryable


#: A broker call outstanding this long means the broker is not answering: /readyz says
#: so at once instead of after the client's own timeout (a send waits for acks up to the
#: delivery timeout, minutes by default).
STALL_S = 5.0


@dataclass
class Health:
    """What ``/readyz`` reports: ready unless a transient fault is being retried or a
    broker call has been waiting longer than :data:`STALL_S`."""

    degraded: str | None = None
    last_commit: float = 0.0
    started: float = field(default_factory=time.time)
    #: The broker call in flight and when it began (monotonic), if any.
    waiting: tuple[str, float] | None = None

    @property
    def ready(self) -> bool:
        return self.readiness()[0]

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        if self.degraded is not None:
            return False, self.degraded
        waiting = self.waiting  # one read: the worker thread may reset it meanwhile
        if waiting is not None:
            op, since = waiting
            waited = (time.monotonic() if now is None else now) - since
            if waited > STALL_S:
                return False, f"{op}: no answer from the broker for {waited:.0f} s"
        return True, "ok"

    @contextmanager
    def awaiting(self, op: str) -> Iterator[None]:
        """Mark a broker call in flight for the length of the block."""
        self.waiting = (op, time.monotonic())
        try:
            yield
        finally:
            self.waiting = None


class Worker:
    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        stage: Stage,
        observer: Observer,
        *,
        max_records: int = 256,
        poll_timeout_s: float = 0.2,
        stop: threading.Event | None = None,
        health: Health | None = None,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._stage = stage
        self._observer = observer
        self._max_records = max_records
        self._poll_timeout_s = poll_timeout_s
        self.stop = stop or threading.Event()
        self.health = health or Health()

    def run_batch(self) -> int:
        """Process one batch end to end; returns how many records it held."""
        records = self._retry(lambda: self._consumer.poll(self._max_records, self._poll_timeout_s))
        if not records:
            return 0
        with self._consumer.processing():  # a slow batch must not get this worker evicted
            out = self._retry(lambda: self._stage.handle(records))
            if out:
                self._retry(lambda: self._producer.send(out), awaiting="produce")
        crash_point(f"{self._stage.name}.before_commit")
        try:
            self._retry(lambda: self._consumer.commit(records), awaiting="commit")
        except CommitLost as exc:
            # The output is durable; the partitions' new owner redelivers this batch and
            # idempotent writes absorb the repeat, so crashing would only add a restart.
            partitions = sorted({(r.topic, r.partition) for r in records})
            log.warning("%s: commit lost, %s moved to another worker: %s", self._stage.name, partitions, exc)
            self._observer.error(self._stage.name, CommitLost.reason)
            return len(records)
        self.health.last_commit = time.time()
        self._observer.committed(self._stage.name)
        return len(records)

    def run(self, on_idle: Callable[[], None] | None = None) -> None:
        """Run until :attr:`stop` is set; the current batch always finishes first."""
        while not self.stop.is_set():
            if self.run_batch() == 0 and on_idle is not None:
                on_idle()

    def report_lag(self) -> dict[tuple[str, int], int]:
        lag = self._retry(self._consumer.lag, awaiting="lag")
        for (topic, partition), value in lag.items():
            self._observer.lag(self._stage.name, topic, partition, value)
        return lag

    def _retry(self, call: Callable[[], T], awaiting: str | None = None) -> T:
        return call_with_retry(
            call, self.stop, self.health, self._observer, self._stage.name, awaiting=awaiting
        )


def call_with_retry(
    call: Callable[[], T],
    stop: threading.Event,
    health: Health,
    observer: Observer | None = None,
    name: str = "worker",
    *,
    awaiting: str | None = None,
) -> T:
    """Run ``call``, retrying retryable errors until it succeeds or ``stop`` is set.

    Health reports degraded while retrying; a stop request cuts a backoff short and
    re-raises the last error, so nothing after it (a commit) runs. ``awaiting`` names a
    broker call: each attempt is then marked in flight, so a stall shows on /readyz.
    """

    def attempt() -> T:
        if awaiting is None:
            return call()
        with health.awaiting(awaiting):
            return call()

    def degraded(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        kind = error.reason if isinstance(error, EmbedstreamError) else "unknown"
        health.degraded = f"{kind}: {error}"
        if observer is not None:
            observer.error(name, kind)
        log.warning("%s: transient fault, retry %d: %s", name, state.attempt_number, error)

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # a stop request cuts a backoff short

    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        wait=lambda state: backoff_seconds(state.attempt_number),
        stop=lambda _state: stop.is_set(),
        sleep=sleep,
        before_sleep=degraded,
        reraise=True,
    )
    result = retrying(attempt)
    if health.degraded is not None:
        log.info("%s recovered", name)
        health.degraded = None
    return result
