"""Test doubles users can import, as bytewax ships ``bytewax.testing``: a list-backed
:class:`ListSource` (the ``Source`` port over a dict of documents), a :class:`Collector`
that plays the delivery side of :func:`pipeline.runtime.passes.run_source_pass`, and the
in-process bus (:class:`~pipeline.bus.memory.InMemoryBus`), which is a complete ``Bus``.

>>> source = ListSource("notes", {"a": "alpha"})
>>> source.put("b", "beta")
>>> sorted(c.doc_id for c in source.changes(PassReport()))
['a', 'b']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.bus.memory import InMemoryBus
from pipeline.core.events import ChangeEvent
from pipeline.sources import Change, PassReport, next_version

__all__ = ["Collector", "InMemoryBus", "ListSource", "PassReport"]


class ListSource:
    """Documents held in a dict; each pass emits what differs from the last committed pass.

    Versions are the source's own clock (one tick per :meth:`put` or :meth:`remove`), kept
    monotonic per document through :func:`~pipeline.sources.next_version`, deletions
    included, exactly as a real connector must.
    """

    def __init__(self, name: str, documents: Mapping[str, str] | None = None) -> None:
        self._name = name
        self._docs: dict[str, str] = dict(documents or {})
        self._clock = 0
        self._touched: dict[str, int] = dict.fromkeys(self._docs, 0)
        self._committed: dict[str, tuple[str | None, int]] = {}  # doc_id -> (text, version)
        self._reserved: dict[str, int] = {}  # doc_id -> highest version handed to the runner

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        return f"list:{self._name}"

    def put(self, doc_id: str, text: str, clock: int | None = None) -> None:
        """``clock``: the document's own clock (an mtime, an updated_at), which may go back
        (a restored copy); by default the source's, one tick per change."""
        self._clock += 1
        self._docs[doc_id] = text
        self._touched[doc_id] = self._clock if clock is None else clock

    def remove(self, doc_id: str) -> None:
        """A deletion has no clock of its own: it is numbered above the document's last version."""
        self._docs.pop(doc_id, None)
        self._touched[doc_id] = 0

    def changes(self, report: PassReport) -> Iterator[Change]:
        for doc_id in sorted(self._touched.keys() | self._committed.keys() | self._reserved.keys()):
            text = self._docs.get(doc_id)
            last = self._committed.get(doc_id)
            settled = self._reserved.get(doc_id, -1) <= (last[1] if last else -1)
            if settled and (last[0] if last else None) == text:  # as committed, or never seen and gone
                report.unchanged += 1 if text is not None else 0
                continue
            version = next_version(self._touched.get(doc_id, 0), self._floor(doc_id))
            yield Change(self._event(doc_id, text, version), doc_id, (text, version))

    def reserve(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.event is not None:
                held = self._reserved.get(change.doc_id, change.event.version)
                self._reserved[change.doc_id] = max(held, change.event.version)

    def commit(self, changes: Sequence[Change]) -> None:
        for change in changes:
            assert isinstance(change.state, tuple)
            self._committed[change.doc_id] = change.state

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        deleted = {doc_id for doc_id, (text, _) in self._committed.items() if text is None}
        gone = sorted(doc_id for doc_id in indexed if doc_id not in self._docs and doc_id not in deleted)
        return [self._deletion(doc_id, indexed[doc_id]) for doc_id in gone]

    def estimate(self) -> int | None:
        return len(self._docs)

    def _floor(self, doc_id: str) -> int | None:
        """The highest version that may have reached the index for ``doc_id``."""
        known = [
            v
            for v in (self._committed.get(doc_id, (None, None))[1], self._reserved.get(doc_id))
            if v is not None
        ]
        return max(known) if known else None

    def _deletion(self, doc_id: str, indexed_version: int) -> Change:
        version = next_version(0, max(indexed_version, self._floor(doc_id) or 0))
        return Change(self._event(doc_id, None, version), doc_id, (None, version))

    def _event(self, doc_id: str, text: str | None, version: int) -> ChangeEvent:
        op = "delete" if text is None else "upsert"
        return ChangeEvent(source=self._name, doc_id=doc_id, op=op, text=text, version=version)


@dataclass
class Collector:
    """The delivery side of a source pass: keeps every event it is handed, and reports the
    keys in ``failing`` as not indexed (dead-lettered), as the embedded pipeline would."""

    events: list[ChangeEvent] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def __call__(self, events: Sequence[ChangeEvent]) -> set[str]:
        self.events.extend(events)
        return {e.key for e in events if e.key in self.failing}

    def indexed(self) -> dict[str, int]:
        """doc_id -> version of the live documents, as an index fed these events holds them."""
        state: dict[str, int] = {}
        for event in self.events:
            if event.op == "delete":
                state.pop(event.doc_id, None)
            else:
                state[event.doc_id] = event.version
        return state

    def live(self) -> dict[str, str]:
        """doc_id -> text of the latest event per document, deletions applied."""
        state: dict[str, str] = {}
        for event in self.events:
            if event.op == "delete":
                state.pop(event.doc_id, None)
            else:
                state[event.doc_id] = event.text or ""
        return state
