"""Sink stage: vectors events in, the document's exact point set in Qdrant out.

For each document, :func:`pipeline.planner.plan_write` compares the event with the
recorded :class:`DocState`; the stage nets the plans of a whole batch into one upsert, one
delete and one state write (in that order), then flushes before the loop commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.bus import Outgoing, Record
from pipeline.errors import InvalidVectors, PoisonError
from pipeline.events import VectorsEvent
from pipeline.faults import crash_point
from pipeline.index import DocStates, IndexVersion, create_version, read_version
from pipeline.observe import Observer
from pipeline.planner import DocState, Incoming, Outcome, metadata_hash, plan_write
from pipeline.settings import IndexSettings
from pipeline.stages import dead_letter
from pipeline.store import PointWrite, VectorStore

log = logging.getLogger(__name__)


@dataclass
class _BatchWrites:
    """Point writes of a batch, netted per id so the last decision for a point wins."""

    points: dict[str, PointWrite | None] = field(default_factory=dict)
    states: dict[str, DocState] = field(default_factory=dict)

    def upsert(self, point: PointWrite) -> None:
        self.points[point.id] = point

    def delete(self, point_id: str) -> None:
        self.points[point_id] = None

    @property
    def upserts(self) -> list[PointWrite]:
        return [p for p in self.points.values() if p is not None]

    @property
    def deletes(self) -> list[str]:
        return [i for i, p in self.points.items() if p is None]


class SinkStage:
    name = "sink"

    def __init__(
        self,
        store: VectorStore,
        index: IndexSettings,
        version: int,
        dlq_topic: str,
        observer: Observer,
    ) -> None:
        self._store = store
        self._index = index
        self._version_number = version
        self._dlq_topic = dlq_topic
        self._observer = observer
        self._version: IndexVersion | None = None

    @property
    def version(self) -> IndexVersion | None:
        return self._version

    def handle(self, records: Sequence[Record]) -> list[Outgoing]:
        out: list[Outgoing] = []
        events: list[VectorsEvent] = []
        for record in records:
            try:
                event = VectorsEvent.from_bytes(record.value)
                self._observer.event_in(self.name, event.op)
                if self._accept(event):
                    events.append(event)
            except PoisonError as error:
                self._observer.dead_lettered(self.name, error.reason)
                out.append(dead_letter(record, error, self.name, self._dlq_topic))
        if events:
            self._write(events)
        return out

    def _accept(self, event: VectorsEvent) -> bool:
        version = self._ensure_version(event)
        if version is None:
            # A delete reaching an index that was never created: nothing to remove.
            self._observer.doc_outcome(Outcome.UNCHANGED)
            return False
        if event.op == "upsert" and event.fingerprint != version.fingerprint:
            held = version.fingerprint
            msg = f"vectors from model {event.fingerprint}, but {version.collection} holds {held}"
            raise InvalidVectors(msg)
        if event.op == "upsert" and event.vectors.shape != (len(event.chunks), version.full_dims):
            raise InvalidVectors(f"vectors of shape {event.vectors.shape}, expected (n, {version.full_dims})")
        return True

    def _ensure_version(self, event: VectorsEvent) -> IndexVersion | None:
        if self._version is None:
            collection = f"{self._index.name}__v{self._version_number}"
            self._version = read_version(self._store, collection)
        if self._version is None:
            if event.op != "upsert":
                return None
            # The vector dimension comes from the encoder's output, never configured twice.
            self._version = IndexVersion.plan(
                self._index, self._version_number, event.fingerprint, event.vectors.shape[1]
            )
            create_version(self._store, self._version)
            if self._store.get_alias(self._index.name) is None:
                self._store.set_alias(self._index.name, self._version.collection)
            log.info("created index version %s", self._version.collection)
        return self._version

    def _write(self, events: Sequence[VectorsEvent]) -> None:
        version = self._version
        assert version is not None  # set by _check for every accepted event
        doc_states = DocStates(self._store, version)
        states = doc_states.get(list(dict.fromkeys(e.key for e in events)))
        writes = _BatchWrites()
        for event in events:
            plan = plan_write(_incoming(event), states.get(event.key))
            self._observer.doc_outcome(plan.outcome)
            if plan.outcome is Outcome.STALE:
                log.info(
                    "ignored stale %s v%d (index has v%d)",
                    event.key,
                    event.version,
                    states[event.key].version,
                )
                continue
            if plan.upsert:
                stored = version.to_storage(event.vectors[list(plan.upsert)])
                for vector, ordinal in zip(stored, plan.upsert, strict=True):
                    point = PointWrite(
                        event.chunks[ordinal].point_id, vector.tolist(), _payload(event, ordinal)
                    )
                    writes.upsert(point)
            for point_id in plan.delete:
                writes.delete(point_id)
            if plan.state is not None:
                states[event.key] = writes.states[event.key] = plan.state
        started = time.perf_counter()
        self._store.upsert(version.collection, writes.upserts)
        crash_point("sink.after_upsert")
        self._store.delete(version.collection, writes.deletes)
        crash_point("sink.after_delete")
        doc_states.put(writes.states)
        self._store.flush()
        crash_point("sink.after_flush")
        self._observer.upserted(time.perf_counter() - started, len(writes.upserts), len(writes.deletes))
        now = time.time()
        self._observer.freshness(self.name, [max(0.0, now - e.emitted_at) for e in events])


def _incoming(event: VectorsEvent) -> Incoming:
    return Incoming(
        op=event.op,
        version=event.version,
        content_hash=event.content_hash,
        meta_hash=metadata_hash(event.metadata),
        point_ids=tuple(c.point_id for c in event.chunks),
    )


def _payload(event: VectorsEvent, ordinal: int) -> dict[str, object]:
    chunk = event.chunks[ordinal]
    return {
        "doc_key": event.key,
        "source": event.source,
        "doc_id": event.doc_id,
        "chunk_hash": chunk.chunk_hash,
        "text": chunk.text,
        "metadata": event.metadata,
    }
