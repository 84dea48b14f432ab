"""The one observability hook: stages report what happened, implementations count it.

Stages call an :class:`Observer`; they never touch Prometheus or loggers for metrics.
:class:`RunStats` counts a single run for the CLI summary, the Prometheus implementation
lives in :mod:`pipeline.observability.prometheus`, and :class:`Observers` fans out to several.

An observer that labels its figures by index version has a ``for_version(n)`` method
(:class:`VersionedObserver`); :func:`for_version` binds any observer to a version, leaving
those without one as they are, so the runtime binds each lane's observers in one call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Observer(Protocol):
    def event_in(self, stage: str, op: str) -> None: ...
    def event_out(self, stage: str, op: str) -> None: ...
    def dead_lettered(self, stage: str, reason: str) -> None: ...
    def error(self, stage: str, kind: str) -> None: ...
    def doc_outcome(self, outcome: str) -> None: ...
    def chunks(self, encoded: int, reused: int, tokens: int) -> None: ...
    def encode_batch(self, seconds: float) -> None: ...
    def encoding(self, done: int, total: int) -> None: ...
    def upserted(self, seconds: float, points: int, deleted: int) -> None: ...
    def freshness(self, stage: str, seconds: Sequence[float]) -> None: ...
    def committed(self, stage: str) -> None: ...
    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None: ...
    def reconciled(self, source: str, deleted: int) -> None: ...


@runtime_checkable
class VersionedObserver(Observer, Protocol):
    """An observer whose figures carry the index version they belong to."""

    def for_version(self, version: int) -> Observer: ...


def for_version(observer: Observer, version: int) -> Observer:
    """``observer`` bound to index version ``version`` where it labels figures by version
    (the Prometheus one, :class:`Observers` holding one); any other observer unchanged."""
    bind = getattr(observer, "for_version", None)
    return bind(version) if callable(bind) else observer


class NullObserver:
    """Observer that ignores everything; the base of the others."""

    def event_in(self, stage: str, op: str) -> None:
        pass

    def event_out(self, stage: str, op: str) -> None:
        pass

    def dead_lettered(self, stage: str, reason: str) -> None:
        pass

    def error(self, stage: str, kind: str) -> None:
        pass

    def doc_outcome(self, outcome: str) -> None:
        pass

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        pass

    def encode_batch(self, seconds: float) -> None:
        pass

    def encoding(self, done: int, total: int) -> None:
        """Progress of the chunks one embed batch must encode (for progress bars)."""

    def upserted(self, seconds: float, points: int, deleted: int) -> None:
        pass

    def freshness(self, stage: str, seconds: Sequence[float]) -> None:
        pass

    def committed(self, stage: str) -> None:
        pass

    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None:
        pass

    def reconciled(self, source: str, deleted: int) -> None:
        """A pass compared ``source`` with the index and deleted what it no longer has."""


@dataclass
class RunStats(NullObserver):
    """Totals of one run: what ``embedstream index`` prints."""

    docs: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    encoded: int = 0
    reused: int = 0
    tokens: int = 0
    points_upserted: int = 0
    points_deleted: int = 0
    events_in: Counter[str] = field(default_factory=Counter)

    def event_in(self, stage: str, op: str) -> None:
        self.events_in[stage] += 1

    def dead_lettered(self, stage: str, reason: str) -> None:
        self.dead[reason] += 1

    def doc_outcome(self, outcome: str) -> None:
        self.docs[outcome] += 1

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        self.encoded += encoded
        self.reused += reused
        self.tokens += tokens

    def upserted(self, seconds: float, points: int, deleted: int) -> None:
        self.points_upserted += points
        self.points_deleted += deleted


class Observers(NullObserver):
    """Fan-out to several observers."""

    def __init__(self, *members: Observer) -> None:
        self._members = members

    def for_version(self, version: int) -> Observers:
        """Every member bound to ``version`` (see :func:`for_version`)."""
        return Observers(*(for_version(m, version) for m in self._members))

    def event_in(self, stage: str, op: str) -> None:
        for m in self._members:
            m.event_in(stage, op)

    def event_out(self, stage: str, op: str) -> None:
        for m in self._members:
            m.event_out(stage, op)

    def dead_lettered(self, stage: str, reason: str) -> None:
        for m in self._members:
            m.dead_lettered(stage, reason)

    def error(self, stage: str, kind: str) -> None:
        for m in self._members:
            m.error(stage, kind)

    def doc_outcome(self, outcome: str) -> None:
        for m in self._members:
            m.doc_outcome(outcome)

    def chunks(self, encoded: int, reused: int, tokens: int) -> None:
        for m in self._members:
            m.chunks(encoded, reused, tokens)

    def encode_batch(self, seconds: float) -> None:
        for m in self._members:
            m.encode_batch(seconds)

    def encoding(self, done: int, total: int) -> None:
        for m in self._members:
            m.encoding(done, total)

    def upserted(self, seconds: float, points: int, deleted: int) -> None:
        for m in self._members:
            m.upserted(seconds, points, deleted)

    def freshness(self, stage: str, seconds: Sequence[float]) -> None:
        for m in self._members:
            m.freshness(stage, seconds)

    def committed(self, stage: str) -> None:
        for m in self._members:
            m.committed(stage)

    def lag(self, stage: str, topic: str, partition: int, lag: int) -> None:
        for m in self._members:
            m.lag(stage, topic, partition, lag)

    def reconciled(self, source: str, deleted: int) -> None:
        for m in self._members:
            m.reconciled(source, deleted)
