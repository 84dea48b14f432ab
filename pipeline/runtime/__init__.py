"""The one place that builds the pipeline from settings: source → bus → embed → sink.

The embedded mode (:mod:`pipeline.runtime.embedded`), the Kafka daemons
(:mod:`pipeline.runtime.daemons`) and the benchmark are short bindings of :class:`Runtime`
over a bus, so "the same stage code in every mode" holds by construction.
:func:`pipeline.runtime.passes.run_source_pass` is the one scan → publish → checkpoint loop,
whatever the source and wherever the events go.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from pipeline.bus import Consumer, Producer, TopicSpec
from pipeline.config.settings import Settings
from pipeline.encoding import Encoder
from pipeline.encoding.cache import EmbeddingCache
from pipeline.observability import Observer
from pipeline.runtime.adapters import kafka_bus, make_chunker, make_encoder, open_cache, open_store
from pipeline.runtime.models import VersionEncoders
from pipeline.runtime.topology import Topology
from pipeline.stages import Stage
from pipeline.stages.embed import EmbedStage
from pipeline.stages.sink import PlanVersion, SinkStage
from pipeline.stages.worker import Health, Worker
from pipeline.store import VectorStore
from pipeline.versions.spec import IndexVersion

if TYPE_CHECKING:
    from pipeline.bus.kafka import KafkaBus, KafkaTimeouts

log = logging.getLogger(__name__)


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
        self.topology = Topology(settings)
        self.topics = self.topology.topics
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
            self._cache = open_cache(
                self.settings, on_failure=lambda kind: self.observer.error("embed", kind)
            )
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
        return self.topology.message_limit

    def topic_specs(self, version: int) -> list[TopicSpec]:
        return self.topology.topic_specs(version)

    def group_id(self, stage: str, version: int) -> str:
        return self.topology.group_id(stage, version)

    def input_topic(self, stage: Stage, version: int) -> str:
        return self.topology.input_topic(stage.name, version)

    def kafka_bus(self, client: str, timeouts: KafkaTimeouts | None = None) -> KafkaBus:
        """A Kafka bus whose messages fit any accepted document (``client``: its client id)."""
        return kafka_bus(self.settings, client, timeouts)

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
