"""The one place that builds the pipeline from settings: source → bus → embed → sink.

The embedded mode (:mod:`pipeline.runtime.embedded`), the Kafka daemons (:mod:`pipeline.runtime.daemons`)
and the benchmark are short bindings of :class:`Runtime` over a bus, so "the same stage
code in every mode" holds by construction. :func:`run_source_pass` is the one scan →
publish → checkpoint loop, whatever the source and wherever the events go.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.bus import Consumer, Producer, TopicSpec
from pipeline.config.settings import Settings
from pipeline.core.errors import Refused
from pipeline.core.events import ChangeEvent
from pipeline.core.faults import crash_point
from pipeline.core.names import Topics
from pipeline.encoding.cache import EmbeddingCache
from pipeline.encoding.transformer import Encoder
from pipeline.observability import Observer
from pipeline.runtime.adapters import make_chunker, make_encoder, open_cache, open_store
from pipeline.runtime.models import VersionEncoders
from pipeline.sources import Change, PassReport, Source
from pipeline.stages import Stage
from pipeline.stages.embed import EmbedStage
from pipeline.stages.sink import PlanVersion, SinkStage
from pipeline.stages.worker import Health, Worker
from pipeline.store import VectorStore
from pipeline.versions.spec import IndexVersion

log = logging.getLogger(__name__)

#: Room above the largest accepted document for JSON escaping and metadata, so an accepted
#: change event always fits a Kafka message.
MESSAGE_HEADROOM = 1 << 20
#: A pass may delete at most half of a source's indexed documents (and at least this many
#: before the check applies) unless the caller allows more: an include glob that matches
#: nothing, or an empty mount point, must not wipe an index.
MASS_DELETE_MIN = 3


class _Closeable(Protocol):
    def close(self) -> None: ...


class Runtime:
    """Builds the stages of an index version from settings; adapters are made on first use."""

    def __init__(
        self,
        settings: Settings,
        observer: Observer,
        *,
        encoder: Encoder | None = None,
        cache: EmbeddingCache | None = None,
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings
        self.observer = observer
        self.topics = Topics(settings.kafka.topic_prefix)
        self._encoder = encoder
        self._cache = cache
        self._store = store
        self._encoders: VersionEncoders | None = None
        self._owned: list[_Closeable] = []

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = make_encoder(self.settings)
        return self._encoder

    @property
    def encoders(self) -> VersionEncoders:
        """Each index version's own encoder and chunker (a migration feeds several models)."""
        if self._encoders is None:
            self._encoders = VersionEncoders(self.settings, self.encoder)
        return self._encoders

    @property
    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            self._cache = open_cache(self.settings)
            self._owned.append(self._cache)
        return self._cache

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = open_store(self.settings)  # fails fast if another process owns it
            self._owned.append(self._store)
        return self._store

    @property
    def message_limit(self) -> int:
        """Largest Kafka message: any accepted document's change event fits."""
        return 2 * self.settings.limits.max_doc_bytes + MESSAGE_HEADROOM

    def topic_specs(self, version: int) -> list[TopicSpec]:
        kafka, topics = self.settings.kafka, self.topics
        return [
            TopicSpec(topics.changes, kafka.partitions, kafka.replication, compacted=True),
            TopicSpec(topics.vectors(self.settings.index.name, version), kafka.partitions, kafka.replication),
            TopicSpec(topics.dlq, kafka.partitions, kafka.replication, compacted=False),
            # The index versions' specs: one small compacted table (pipeline/runtime/registry.py).
            TopicSpec(topics.versions, 1, kafka.replication, compacted=True),
        ]

    def group_id(self, stage: str, version: int) -> str:
        """One consumer group per stage and index version: a new version backfills from offset 0."""
        return f"{self.settings.kafka.topic_prefix}.{stage}.{self.settings.index.name}-v{version}"

    def input_topic(self, stage: Stage, version: int) -> str:
        if stage.name == "embed":
            return self.topics.changes
        return self.topics.vectors(self.settings.index.name, version)

    def embed_stage(
        self, version: int, spec: IndexVersion | None = None, observer: Observer | None = None
    ) -> EmbedStage:
        """With ``spec``, the version's own model and chunker (else the settings')."""
        encoder = self.encoder if spec is None else self.encoders.for_version(spec)
        chunker = make_chunker(encoder, self.settings) if spec is None else self.encoders.chunker_for(spec)
        vectors = self.topics.vectors(self.settings.index.name, version)
        return EmbedStage(
            encoder, self.cache, chunker, self.settings.limits, vectors, self.topics.dlq,
            observer or self.observer,
        )  # fmt: skip

    def sink_stage(
        self, version: int, plan: PlanVersion | None = None, observer: Observer | None = None
    ) -> SinkStage:
        """``plan``: the spec a version the sink must create gets (default: the settings')."""
        return SinkStage(
            self.store, self.settings.index, version, self.topics.dlq, observer or self.observer, plan
        )

    def worker(
        self,
        stage: Stage,
        consumer: Consumer,
        producer: Producer,
        *,
        stop: threading.Event | None = None,
        health: Health | None = None,
        poll_timeout_s: float | None = None,
    ) -> Worker:
        kafka = self.settings.kafka
        wait = max(0.05, kafka.batch_max_wait_ms / 1000) if poll_timeout_s is None else poll_timeout_s
        return Worker(
            consumer, producer, stage, self.observer,
            max_records=kafka.batch_max_records, poll_timeout_s=wait, stop=stop, health=health,
        )  # fmt: skip

    def close(self) -> None:
        for resource in reversed(self._owned):
            resource.close()
        self._owned.clear()


# --------------------------------------------------------------------------- source passes

#: Publish events; return the keys of those that were not indexed (dead-lettered), whose
#: changes must therefore not be checkpointed (the next pass tries them again).
Deliver = Callable[[Sequence[ChangeEvent]], set[str]]
#: doc_id -> indexed version of the source's live documents, read from the index.
Indexed = Callable[[], Mapping[str, int]]


@dataclass
class PassResult:
    report: PassReport = field(default_factory=PassReport)
    published: int = 0
    deleted: int = 0
    orphans: int = 0


def run_source_pass(
    source: Source,
    deliver: Deliver,
    *,
    slice_size: int,
    indexed: Indexed | None = None,
    allow_mass_delete: bool = True,
) -> PassResult:
    """One pass: publish the source's changes in slices, checkpointing each slice only once
    it is delivered; unless ``allow_mass_delete``, deletions go last, after a check that
    they are not most of what the source has indexed.

    With ``indexed``, documents the index holds for this source but the pass did not see
    are deleted too (reconciling against the index, not only against the checkpoint).
    """
    result = PassResult()
    deletions: list[Change] = []
    changes = source.changes(result.report)
    # Deletions wait for the check only when there is one; otherwise events keep the order
    # the source gave them (a delete and a re-create of one document in the same pass).
    updates = changes if allow_mass_delete else (c for c in changes if not _is_deletion(c, deletions))
    for part in _slices(updates, slice_size):
        result.published += _deliver(source, deliver, part)
    if indexed is not None:
        known = indexed()
        pending = {c.doc_id for c in deletions}  # set aside above, still live in the index
        orphans = [c for c in source.orphans(known) if c.doc_id not in pending]
        result.orphans = len(orphans)
        deletions += orphans
        if not allow_mass_delete:
            _check_mass_deletion(source, len(deletions), len(known))
    for part in _slices(iter(deletions), slice_size):
        result.deleted += _deliver(source, deliver, part)
    return result


def _is_deletion(change: Change, deletions: list[Change]) -> bool:
    """Set deletions aside (they are published after the mass-deletion check)."""
    if change.event is not None and change.event.op == "delete":
        deletions.append(change)
        return True
    return False


def _deliver(source: Source, deliver: Deliver, part: Sequence[Change]) -> int:
    events = [c.event for c in part if c.event is not None]
    failed = deliver(events) if events else set()
    crash_point("source.after_publish")
    source.commit([c for c in part if c.event is None or c.event.key not in failed])
    return len(events)


def _check_mass_deletion(source: Source, deletions: int, indexed: int) -> None:
    if deletions >= MASS_DELETE_MIN and deletions * 2 > indexed:
        msg = (
            f"this pass would delete {deletions} of the {indexed} documents indexed from source "
            f"{source.name!r} ({source.identity}); nothing was deleted. If that is intended (you "
            "removed or excluded those files), run again with --allow-mass-delete; otherwise check "
            "the path and the --include/--exclude globs (a glob without '/' matches at any depth)"
        )
        raise Refused(msg)


def _slices(changes: Iterator[Change] | Iterable[Change], size: int) -> Iterator[list[Change]]:
    iterator = iter(changes)
    while part := list(itertools.islice(iterator, size)):
        yield part
