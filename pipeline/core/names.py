"""Topic names, in one place: ``<prefix>.changes``, ``<prefix>.vectors.<index>-v<N>``, ``<prefix>.dlq``,
``<prefix>.versions``."""

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

    def backfill(self, index: str, version: int) -> str:
        """Embedded mode only: the in-process topic replaying a source into one version."""
        return f"{self.prefix}.backfill.{index}-v{version}"
