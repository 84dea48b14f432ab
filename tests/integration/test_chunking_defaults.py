"""An index keeps its recorded chunker when the chunking settings are left at their defaults
(a default that changes between releases must not lock an existing index out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from tests.groundtruth import paragraphs


def _index(settings: Settings, docs: Path, checkpoint: Path) -> int:
    with EmbeddedPipeline(settings) as pipeline:
        return index_source(pipeline, FilesystemSource(docs, checkpoint, name="fs")).added


def test_default_chunking_follows_the_recorded_chunker_and_explicit_chunking_must_match(
    tmp_path: Path, tiny_model: Path
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(paragraphs("apples", 6), encoding="utf-8")
    state, model = tmp_path / "state", {"name": str(tiny_model)}
    recorded = Settings.load(state_dir=state, model=model, chunking={"max_tokens": 64, "overlap_tokens": 24})
    assert _index(recorded, docs, tmp_path / "fs.json") == 1

    (docs / "b.md").write_text(paragraphs("boats", 6), encoding="utf-8")
    defaults = Settings.load(state_dir=state, model=model)
    assert not defaults.chunking.model_fields_set
    assert _index(defaults, docs, tmp_path / "fs.json") == 1  # no "cannot change in place"

    explicit = Settings.load(state_dir=state, model=model, chunking={"max_tokens": 64, "overlap_tokens": 0})
    with pytest.raises(ConfigError, match="cannot change in place"):
        EmbeddedPipeline(explicit)
