"""Topic names, in one place: ``<prefix>.changes``, ``<prefix>.vectors.<index>-v<N>``, ``<prefix>.dlq``."""

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

    def vectors(self, index: str, version: int) -> str:
        return f"{self.prefix}.vectors.{index}-v{version}"
