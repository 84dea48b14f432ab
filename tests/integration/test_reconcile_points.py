"""Reconciliation finds documents that have points but no recorded state (a crash between
the sink's write and its state record, for a document no checkpoint knows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core.hashing import point_id
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.runtime.verify import verify
from pipeline.store import PointWrite
from pipeline.versions.spec import live_version
from tests.groundtruth import paragraphs


def test_an_index_pass_deletes_points_that_have_no_state_and_no_file(tmp_path: Path, tiny_settings: Settings):
    """A point of fs/ghost.md with no state (and a version above anything the checkpoint
    knows) is deleted by the next index pass: verify then finds the index equal."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (docs / name).write_text(paragraphs(name, 2), encoding="utf-8")
    checkpoint = tmp_path / "fs.json"
    with EmbeddedPipeline(tiny_settings) as pipeline:
        index_source(pipeline, FilesystemSource(docs, checkpoint, name="fs"))
        version = live_version(pipeline.store, tiny_settings.index.name)
        assert version is not None
        key = "fs/ghost.md"
        payload = {"doc_key": key, "source": "fs", "doc_id": "ghost.md", "version": 10**15, "text": "boo"}
        vector = np.ones(version.dims, dtype=np.float32) / np.sqrt(version.dims)
        pipeline.store.upsert(
            version.collection, [PointWrite(point_id(key, "h", 0), vector.tolist(), payload)]
        )
        source = FilesystemSource(docs, checkpoint, name="fs")
        assert [f.kind for f in verify(pipeline, [source]).findings] == ["ghost"]
        index_source(pipeline, source)
        assert verify(pipeline, [source]).equal
