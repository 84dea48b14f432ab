"""Every name and size a deployment derives from its settings, without opening anything:
topics and their specs, consumer groups, the largest message. Cheap: the CLI builds one to
learn names, the :class:`~pipeline.runtime.Runtime` holds one."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.bus import TopicSpec
from pipeline.config.settings import Settings
from pipeline.core.names import Topics

#: Room above the largest accepted document for JSON escaping and metadata, so an accepted
#: change event always fits a Kafka message.
MESSAGE_HEADROOM = 1 << 20


@dataclass(frozen=True)
class Topology:
    settings: Settings

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.kafka.topic_prefix)

    @property
    def index(self) -> str:
        return self.settings.index.name

    @property
    def message_limit(self) -> int:
        """Largest Kafka message: any accepted document's change event fits."""
        return 2 * self.settings.limits.max_doc_bytes + MESSAGE_HEADROOM

    def topic_specs(self, version: int) -> list[TopicSpec]:
        kafka, topics = self.settings.kafka, self.topics

        def spec(name: str, partitions: int, *, compacted: bool) -> TopicSpec:
            return TopicSpec(name, partitions, kafka.replication, compacted, kafka.min_insync_replicas)

        return [
            spec(topics.changes, kafka.partitions, compacted=True),
            spec(topics.vectors(self.index, version), kafka.partitions, compacted=True),
            spec(topics.dlq, kafka.partitions, compacted=False),
            # The index versions' specs: one small compacted table (pipeline/runtime/registry.py).
            spec(topics.versions, 1, compacted=True),
        ]

    def group_id(self, stage: str, version: int) -> str:
        """One consumer group per stage and index version: a new version backfills from offset 0."""
        return self.topics.group(stage, self.index, version)

    def input_topic(self, stage: str, version: int) -> str:
        return self.topics.changes if stage == "embed" else self.topics.vectors(self.index, version)
