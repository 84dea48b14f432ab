"""Topic and consumer-group names, in one place: ``<prefix>.changes``,
``<prefix>.vectors.<index>-v<N>``, ``<prefix>.dlq``, ``<prefix>.versions``, and the groups
``<prefix>.<stage>.<index>-v<N>`` and ``<prefix>.<connector>.<source>``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "embedstream"

    @property
    def changes(self) -> str:
        return f"{self.prefix}.changes"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def versions(self) -> str:
        """The compacted control topic of index versions (key ``<index>/v<N>``)."""
        return f"{self.prefix}.versions"

    def vectors(self, index: str, version: int) -> str:
        return f"{self.prefix}.vectors.{index}-v{version}"

    def group(self, stage: str, index: str, version: int) -> str:
        """One consumer group per stage and index version: a new version backfills from offset 0."""
        return f"{self.prefix}.{stage}.{index}-v{version}"

    def source_group(self, connector: str, source: str) -> str:
        """The consumer group of a source that reads Kafka itself (Debezium's change topics)."""
        return f"{self.prefix}.{connector}.{source}"

    def backfill(self, index: str, version: int) -> str:
        """Embedded mode only: the in-process topic replaying a source into one version."""
        return f"{self.prefix}.backfill.{index}-v{version}"
