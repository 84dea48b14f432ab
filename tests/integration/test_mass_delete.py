"""The mass-delete guard holds on every pass of ``watch``, not only on its first."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core.errors import Refused
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, watch_source
from tests.groundtruth import paragraphs


def test_watch_refuses_a_later_pass_that_would_delete_most_of_the_index(
    tmp_path: Path, tiny_settings: Settings
):
    """Deleting 5 of 6 files while watch runs: the next pass is refused, nothing is deleted."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.md").write_text(paragraphs(f"topic {i}", 2), encoding="utf-8")
    source = FilesystemSource(docs, tmp_path / "fs.json", name="fs")
    passes: list[IndexSummary] = []

    def after(summary: IndexSummary) -> None:
        passes.append(summary)
        for i in range(5):
            (docs / f"d{i}.md").unlink()

    with EmbeddedPipeline(tiny_settings) as pipeline:
        with pytest.raises(Refused, match="would delete 5 of the 6"):
            watch_source(pipeline, source, threading.Event(), interval_s=0.01, on_pass=after)
        assert len(passes) == 1
        assert len(pipeline.indexed("fs")) == 6
