"""Sink stage: vectors events in, each document's exact point set in Qdrant out.

:func:`pipeline.core.planner.plan_batch` decides per document what the batch changes. The
stage then, for the whole batch: writes points (guarded, so an older version never
overwrites a newer one), records the documents' states (guarded the same way), reads back
which state won, and sweeps every point of each document that the winning state does not
list. Sweeping by document key rather than by remembered ids is what makes any crash,
followed by any later event, converge: points of an attempt that died before recording
its state are found and removed too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.bus import Outgoing, Record
from pipeline.bus.dead_letters import dead_letter
from pipeline.config.settings import IndexSettings
from pipeline.core.errors import ForeignModel, InvalidVectors, PoisonError, StoreRejected
from pipeline.core.events import UNINDEXABLE, VectorsEvent
from pipeline.core.faults import crash_point
from pipeline.core.planner import DocState, Incoming, Outcome, Write, WritePlan, metadata_hash, plan_batch
from pipeline.observability import Observer
from pipeline.store import PointWrite, Sweep, VectorStore
from pipeline.store.payload import DOC_KEY, VERSION
from pipeline.versions.doc_states import DocStates
from pipeline.versions.spec import IndexVersion, create_version, ensure_alias, read_version

log = logging.getLogger(__name__)

#: The spec of a version the sink creates, from the first event's model fingerprint and
#: vector size: the registered spec (Kafka), or the settings' plan.
PlanVersion = Callable[[str, int], IndexVersion]


class SinkStage:
    name = "sink"

    def __init__(
        self,
        store: VectorStore,
        index: IndexSettings,
        version: int,
        dlq_topic: str,
        observer: Observer,
        plan: PlanVersion | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._version_number = version
        self._dlq_topic = dlq_topic
        self._observer = observer
        self._plan = plan
        self._version: IndexVersion | None = None
        self._foreign: Counter[str] = Counter()  # fingerprint -> events dead-lettered

    @property
    def version(self) -> IndexVersion | None:
        return self._version

    def problem(self) -> str | None:
        """Why this sink is not doing its job although it runs (for /readyz), or None."""
        if not self._foreign or self._version is None:
            return None
        seen = ", ".join(f"{n} from {fingerprint}" for fingerprint, n in self._foreign.most_common(3))
        return (
            f"vectors of another model reach {self._version.collection}, which holds "
            f"{self._version.fingerprint} ({seen} dead-lettered): an embed worker runs another model. "
            f"Stop it; to change the model use `embedstream migrate start {self._version.name} --model ...`, "
            "then `embedstream dlq replay --reason foreign_model` for the letters"
        )

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        out: list[Outgoing] = []
        accepted: list[tuple[Record, VectorsEvent]] = []
        for record in records:
            try:
                event = VectorsEvent.from_bytes(record.value)
                self._observer.event_in(self.name, event.op)
                if self._accept(event):
                    accepted.append((record, event))
            except PoisonError as error:
                out.append(self._dead_letter(record, error))
        if accepted:
            try:
                self._write([e for _, e in accepted])
            except StoreRejected:
                out.extend(self._write_one_by_one(accepted))
        return out

    def _write_one_by_one(self, accepted: Sequence[tuple[Record, VectorsEvent]]) -> list[Outgoing]:
        """The store refused the batch: find the event(s) it refuses, dead-letter them, keep the rest."""
        out: list[Outgoing] = []
        for record, event in accepted:
            try:
                self._write([event])
            except StoreRejected as error:
                out.append(self._dead_letter(record, error))
        return out

    def _dead_letter(self, record: Record, error: PoisonError) -> Outgoing:
        if isinstance(error, ForeignModel):
            self._foreign[error.fingerprint] += 1
        self._observer.dead_lettered(self.name, error.reason)
        return dead_letter(record, error, self.name, self._dlq_topic)

    def _accept(self, event: VectorsEvent) -> bool:
        version = self._ensure_version(event)
        if version is None:
            # A delete reaching an index that was never created: nothing to remove.
            self._observer.doc_outcome(Outcome.UNCHANGED)
            return False
        if event.op == "upsert":
            _check_vectors(event, version)
        return True

    def _ensure_version(self, event: VectorsEvent) -> IndexVersion | None:
        if self._version is None:
            collection = f"{self._index.name}__v{self._version_number}"
            found = read_version(self._store, collection)
            if found is None:
                if event.op != "upsert" or not event.chunks:
                    return None
                # The vector dimension comes from the encoder's output, never configured twice.
                dims = event.vectors.shape[1]
                found = (
                    self._plan(event.fingerprint, dims)
                    if self._plan is not None
                    else IndexVersion.plan(self._index, self._version_number, event.fingerprint, dims)
                )
                create_version(self._store, found)
                log.info("created index version %s", found.collection)
            else:
                ensure_alias(self._store, found)
            self._version = found  # only once every creation step has succeeded
        return self._version

    def _write(self, events: Sequence[VectorsEvent]) -> None:
        version = self._version
        assert version is not None  # set by _accept for every accepted event
        doc_states = DocStates(self._store, version)
        recorded = doc_states.get(list(dict.fromkeys(e.key for e in events)))
        batch = plan_batch([(e.key, _incoming(e)) for e in events], recorded)
        writes = {key: (events[i], plan) for key, (i, plan) in batch.writes.items()}
        started = time.perf_counter()
        points = [
            p
            for event, plan in writes.values()
            if plan.write is Write.POINTS
            for p in _points(event, version)
        ]
        self._store.upsert(version.collection, points, guarded=True)
        crash_point("sink.after_upsert")
        for event, plan in writes.values():
            if plan.write is Write.PAYLOAD:
                self._store.set_payload(version.collection, _ids(event), _shared_payload(event))
        doc_states.put({key: plan.state for key, (_, plan) in writes.items() if plan.state is not None})
        crash_point("sink.after_state")
        deleted = self._sweep(doc_states, version, writes)
        crash_point("sink.after_delete")
        self._store.flush()
        crash_point("sink.after_flush")
        # Reported once durable: a batch that failed and is retried (or split) counts once.
        for event, outcome in zip(events, batch.outcomes, strict=True):
            if UNINDEXABLE not in event.metadata:  # its dead letter is what happened to it
                self._observer.doc_outcome(outcome)
            if outcome is Outcome.STALE:
                log.info("ignored stale %s v%d: the index reflects a newer version", event.key, event.version)
        self._observer.upserted(time.perf_counter() - started, len(points), deleted)
        now = time.time()
        self._observer.freshness(self.name, [max(0.0, now - e.emitted_at) for e in events])

    def _sweep(
        self, doc_states: DocStates, version: IndexVersion, writes: dict[str, tuple[VectorsEvent, WritePlan]]
    ) -> int:
        """Remove every point of these documents that the *winning* recorded state does not
        list: ours, or a newer one another sink recorded meanwhile (then our own points of
        an older version go, and its points, stamped newer, are never touched)."""
        winners = doc_states.get(list(writes))
        sweeps = [_sweep_for(key, winners.get(key)) for key in writes]
        return self._store.sweep(version.collection, [s for s in sweeps if s is not None])


def _sweep_for(key: str, state: DocState | None) -> Sweep | None:
    if state is None:
        return None  # nothing recorded (a delete of a never-created document): nothing to sweep
    return Sweep(key, state.version, frozenset(state.point_ids))


def _check_vectors(event: VectorsEvent, version: IndexVersion) -> None:
    if event.fingerprint != version.fingerprint:
        held = version.fingerprint
        message = f"vectors from model {event.fingerprint}, but {version.collection} holds {held}"
        raise ForeignModel(message, fingerprint=event.fingerprint)
    if event.vectors.shape != (len(event.chunks), version.full_dims):
        raise InvalidVectors(
            f"vectors of shape {event.vectors.shape}, expected ({len(event.chunks)}, {version.full_dims})"
        )
    if not np.isfinite(event.vectors).all():
        raise InvalidVectors("vectors contain NaN or infinity")


def _incoming(event: VectorsEvent) -> Incoming:
    return Incoming(
        op=event.op,
        version=event.version,
        content_hash=event.content_hash,
        meta_hash=metadata_hash(event.metadata),
        point_ids=_ids(event),
    )


def _ids(event: VectorsEvent) -> tuple[str, ...]:
    return tuple(c.point_id for c in event.chunks)


def _points(event: VectorsEvent, version: IndexVersion) -> list[PointWrite]:
    stored = version.to_storage(event.vectors)
    shared = _shared_payload(event)
    return [
        PointWrite(
            chunk.point_id, vector.tolist(), {**shared, "chunk_hash": chunk.chunk_hash, "text": chunk.text}
        )
        for chunk, vector in zip(event.chunks, stored, strict=True)
    ]


def _shared_payload(event: VectorsEvent) -> dict[str, object]:
    """The payload fields every chunk of a document shares (a metadata-only change sets these)."""
    return {
        DOC_KEY: event.key,
        "source": event.source,
        "doc_id": event.doc_id,
        VERSION: event.version,
        "metadata": event.metadata,
    }
