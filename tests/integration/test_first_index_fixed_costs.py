"""A first index preloads the model while the source is read, builds no ONNX export inside
the pass, and encodes chunks from the chunker's own token ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source


def test_first_index_preloads_and_leaves_the_export_to_the_background(
    tiny_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    spawned: list[str] = []
    monkeypatch.setattr(
        SentenceTransformerEncoder, "_spawn_builder", lambda self: spawned.append(self.fingerprint)
    )
    folder = tmp_path / "docs"
    folder.mkdir()
    for n in range(5):
        (folder / f"d{n}.md").write_text(
            f"Document {n} talks about door sensors and batteries.\n\nSecond part {n}.\n"
        )
    with EmbeddedPipeline(tiny_settings) as pipeline:
        encoder = pipeline.encoder
        assert isinstance(encoder, SentenceTransformerEncoder)
        source = FilesystemSource(folder, tiny_settings.state_dir / "checkpoint.json", name="fs")
        summary = index_source(pipeline, source)
        assert summary.encoded > 0
        assert encoder._loader is not None, "an empty index preloads the model"
        assert encoder.timings["reused_ids"] >= summary.encoded, "every chunk's ids came from the chunker"
        assert not any((tiny_settings.state_dir / "models").rglob("model.onnx")), "no export inside the pass"
        assert spawned == [encoder.fingerprint], "a small pass that wanted it: built in the background"
        assert encoder.prepare_small_backend() is False  # the CLI's call after the pass does nothing
        (folder / "d0.md").write_text("An edited document about consumer groups.\n")
        again = index_source(pipeline, source)
        assert again.encoded >= 1
        assert spawned == [encoder.fingerprint], "once per process"
