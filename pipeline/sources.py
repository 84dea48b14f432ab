"""The ``Source`` port: a system of record seen as change events plus a checkpoint.

A source instance has an identity (its kind and root, URL or table) bound to a name; the
name is the ``source`` field of its events, so document keys are ``name/doc_id`` and two
instances never share a key. The source owns its documents' versions: monotonic per
document, deletions included (:func:`next_version`), so a file moved back or restored from
an older copy still outranks the tombstone it left.

One pass (:meth:`Source.changes`) yields what changed since the checkpoint. The runner
(:func:`pipeline.runtime.passes.run_source_pass`) first reserves the versions it is about to
publish (:meth:`Source.reserve`, durably), then publishes the events and hands the durable
ones back to :meth:`Source.commit`; only then does the checkpoint move. A crash in between
re-emits (the sink is idempotent), it never loses; and because the reservation outlived the
crash, whatever comes next for that document (a delete, an emptied file, an older copy
restored) is numbered above every version that may have reached the index.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.core.files import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One thing to index, then record.

    ``event`` None means nothing to index: only the checkpoint moves (a file touched, not
    edited). ``state`` is the source's own bookkeeping for ``doc_id``, opaque to the runner.
    """

    event: ChangeEvent | None
    doc_id: str
    state: object | None


@dataclass
class PassReport:
    """Counts of one pass, so an operator can see why a document is not in the index."""

    unchanged: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)

    def skip(self, reason: str, what: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        log.info("skipping %s: %s%s", what, reason, f" ({detail})" if detail else "")


class Source(Protocol):
    @property
    def name(self) -> str:
        """The ``source`` field of every event: half of each document key."""

    @property
    def identity(self) -> str:
        """What the name stands for (``fs:/abs/root``, a database URL and table...)."""

    def changes(self, report: PassReport) -> Iterator[Change]:
        """One pass: what changed since the checkpoint, in an order safe to publish."""

    def reserve(self, changes: Sequence[Change]) -> None:
        """Durably note, before they are published, that these changes' versions may reach
        the index: until they are committed, each document's next version is numbered above
        them, and a reserved document that is gone gets a deletion (it may have points)."""

    def commit(self, changes: Sequence[Change]) -> None:
        """Record durably indexed changes in the checkpoint (and persist it)."""

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        """Deletions for documents the index holds (doc_id -> indexed version) that the
        last complete pass did not see; empty when the source cannot tell."""

    def estimate(self) -> int | None:
        """How many documents a pass will consider, for a progress bar (None: unknown)."""


@runtime_checkable
class Listable(Protocol):
    """A source that can list what it holds now, read in full (not from its checkpoint):
    what ``embedstream verify`` compares the index with. Change streams (JSON lines,
    Debezium) cannot: they hold changes, not states."""

    def documents(self, report: PassReport) -> Iterator[tuple[str, str]]:
        """(doc_id, text) of every document an index of this source must hold now."""


def next_version(natural: int, last: int | None) -> int:
    """The version of a document's next event: its own clock (mtime, updated_at, LSN),
    but never at or below the last version emitted for it, deletions included."""
    return natural if last is None else max(natural, last + 1)


class SourceBindings:
    """Which identity each source name stands for, per index: a name binds one root.

    Without it, two folders indexed under the default name would share keys and overwrite
    each other's documents, and deleting a file in one would delete it from the other.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    @classmethod
    def of(cls, home: Path) -> SourceBindings:
        """The bindings kept in an index's folder (:attr:`Settings.index_home`)."""
        return cls(home / "sources.json")

    def bind(self, name: str, identity: str, *, rebind: bool = False) -> None:
        bound = self._load()
        current = bound.get(name)
        if current == identity:
            return
        if current is not None and not rebind:
            msg = (
                f"source name {name!r} is bound to {current}, not {identity}. To index this as a "
                f"separate set of documents give it its own name (--source NAME); if the same "
                f"documents moved here (a renamed folder), pass --rebind"
            )
            raise ConfigError(msg)
        if current is not None:
            log.warning("source %s rebound from %s to %s", name, current, identity)
        bound[name] = identity
        atomic_write(self._path, json.dumps(bound, indent=2, sort_keys=True).encode("utf-8"))

    def names(self) -> dict[str, str]:
        return self._load()

    def _load(self) -> dict[str, str]:
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            msg = f"{self._path} is unreadable ({exc}); fix or delete it (it maps source names to folders)"
            raise ConfigError(msg) from exc
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise ConfigError(f"{self._path} is not a source binding file; fix or delete it")
        return {str(k): v for k, v in raw.items()}
