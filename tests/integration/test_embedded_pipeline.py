"""The embedded pipeline over the real embedded Qdrant engine and a real (tiny) model.

These guard DESIGN §3 invariants 2 (exact point sets), 3 (stale events), 4 (never
re-encode) and 5 (bad input never stops the stream) end to end in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core.events import ChangeEvent, Matrix
from pipeline.encoding import Encoder
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.versions.spec import live_version
from tests.groundtruth import actual_points, expected_points, paragraphs


class CountingEncoder:
    """The real encoder, counting every text it is asked to encode."""

    def __init__(self, inner: SentenceTransformerEncoder) -> None:
        self._inner = inner
        self.encoded: list[str] = []

    @property
    def fingerprint(self) -> str:
        return self._inner.fingerprint

    @property
    def max_tokens(self) -> int:
        return self._inner.max_tokens

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self._inner.offsets(text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._inner.count_tokens(texts)

    def encode_documents(self, texts: Sequence[str]) -> Matrix:
        self.encoded.extend(texts)
        return self._inner.encode_documents(texts)

    def encode_queries(self, texts: Sequence[str]) -> Matrix:
        return self._inner.encode_queries(texts)


@pytest.fixture
def settings(tiny_settings: Settings) -> Settings:
    return tiny_settings


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "cats.md").write_text("# Cats\n\n" + paragraphs("cats", 12))
    (root / "guides" / "dogs.md").write_text("# Dogs\n\n" + paragraphs("dogs", 8))
    (root / "birds.txt").write_text(paragraphs("birds", 3))
    return root


def open_pipeline(settings: Settings) -> tuple[EmbeddedPipeline, CountingEncoder]:
    encoder = CountingEncoder(SentenceTransformerEncoder(settings.model))
    return EmbeddedPipeline(settings, encoder=encoder), encoder


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[tuple[EmbeddedPipeline, CountingEncoder]]:
    pipe, encoder = open_pipeline(settings)
    yield pipe, encoder
    pipe.close()


def fs_source(pipe: EmbeddedPipeline, root: Path, name: str = "fs") -> FilesystemSource:
    home = pipe.settings.state_dir / "indexes" / pipe.settings.index.name
    checkpoint = home / "checkpoints" / f"{name}.json"
    return FilesystemSource(root, checkpoint, name=name, max_bytes=20_000)


def run_index(pipe: EmbeddedPipeline, root: Path, **options: bool) -> dict[str, object]:
    return index_source(pipe, fs_source(pipe, root), **options).as_json()


def assert_index_matches(pipe: EmbeddedPipeline, root: Path, encoder: Encoder) -> None:
    version = live_version(pipe.store, pipe.settings.index.name)
    assert version is not None
    chunker = make_chunker(encoder, pipe.settings)
    assert actual_points(pipe.store, version) == expected_points(root, chunker)


def touch_later(path: Path, text: str) -> None:
    """Write and make sure the mtime moves even on coarse filesystem clocks."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns <= old:
        bumped = old + 1_000_000
        import os

        os.utime(path, ns=(bumped, bumped))


def test_first_index_matches_ground_truth(pipeline, docs):
    """Every file's point set in Qdrant equals its chunks computed from the file."""
    pipe, encoder = pipeline
    summary = run_index(pipe, docs)
    assert summary["docs"] == {"added": 3, "changed": 0, "unchanged": 0, "deleted": 0, "stale": 0}
    assert summary["chunks"]["encoded"] > 3
    assert_index_matches(pipe, docs, encoder)


def test_reindex_unchanged_tree_encodes_nothing(pipeline, docs):
    """A second pass over an unchanged tree encodes zero chunks and writes nothing."""
    pipe, encoder = pipeline
    run_index(pipe, docs)
    before = len(encoder.encoded)
    summary = run_index(pipe, docs)
    assert len(encoder.encoded) == before
    assert summary["chunks"] == {"encoded": 0, "reused": 0}
    assert summary["docs"]["unchanged"] == 3
    assert pipe.stats.points_upserted == sum(len(v) for v in actual_points_of(pipe).values())


def actual_points_of(pipe: EmbeddedPipeline) -> dict[str, set[str]]:
    version = live_version(pipe.store, pipe.settings.index.name)
    assert version is not None
    return actual_points(pipe.store, version)


def forget_checkpoints(settings: Settings) -> None:
    checkpoints = list(settings.state_dir.rglob("checkpoints/*.json"))
    assert checkpoints
    for checkpoint in checkpoints:
        checkpoint.unlink()


def test_lost_checkpoint_reemits_but_encodes_and_writes_nothing(pipeline, docs, settings):
    """Re-emitted unchanged documents hit the cache and the sink writes no vectors."""
    pipe, encoder = pipeline
    run_index(pipe, docs)
    forget_checkpoints(settings)
    encoded, upserted = len(encoder.encoded), pipe.stats.points_upserted
    summary = run_index(pipe, docs)
    assert len(encoder.encoded) == encoded
    assert pipe.stats.points_upserted == upserted
    assert summary["docs"]["unchanged"] == 3
    assert summary["chunks"]["reused"] > 0


def test_editing_one_paragraph_encodes_only_nearby_chunks(pipeline, docs):
    """A local edit re-encodes a few chunks, not the whole document."""
    pipe, encoder = pipeline
    long_doc = docs / "long.md"
    long_doc.write_text(paragraphs("lighthouses", 40))
    run_index(pipe, docs)
    total_chunks = len(actual_points_of(pipe)["fs/long.md"])
    before = len(encoder.encoded)
    touch_later(long_doc, long_doc.read_text().replace("detail number 20 ", "detail number twenty "))
    summary = run_index(pipe, docs)
    newly = len(encoder.encoded) - before
    assert summary["docs"]["changed"] == 1
    assert 1 <= newly <= 3 < total_chunks
    assert_index_matches(pipe, docs, encoder)


def test_identical_chunks_in_two_files_are_encoded_once(pipeline, tmp_path):
    """The same paragraph in two documents reaches the model once."""
    pipe, encoder = pipeline
    root = tmp_path / "twins"
    root.mkdir()
    shared = "A shared footer paragraph that appears verbatim in two different files."
    (root / "a.md").write_text(shared)
    (root / "b.md").write_text(shared)
    run_index(pipe, root)
    assert encoder.encoded.count(shared) == 1
    assert len(actual_points_of(pipe)) == 2


def test_dedup_state_survives_a_restart(settings, docs):
    """A new process with the same state dir re-encodes nothing, even without checkpoints."""
    pipe, encoder = open_pipeline(settings)
    run_index(pipe, docs)
    assert encoder.encoded
    pipe.close()
    forget_checkpoints(settings)
    pipe2, encoder2 = open_pipeline(settings)
    try:
        summary = run_index(pipe2, docs)
        assert encoder2.encoded == []
        assert summary["docs"]["unchanged"] == 3
        assert_index_matches(pipe2, docs, encoder2)
    finally:
        pipe2.close()


def test_a_different_model_fingerprint_never_reuses_vectors(settings, docs, other_tiny_model):
    """Sharing one cache, a second model encodes every chunk itself."""
    pipe, encoder = open_pipeline(settings)
    run_index(pipe, docs)
    first = len(encoder.encoded)
    pipe.close()
    other = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"name": str(other_tiny_model)}),
            "index": settings.index.model_copy(update={"name": "other"}),
        }
    )
    pipe2, encoder2 = open_pipeline(other)
    try:
        assert encoder2.fingerprint != encoder.fingerprint
        run_index(pipe2, docs)
        assert len(encoder2.encoded) == first
    finally:
        pipe2.close()


def test_prefix_change_changes_the_fingerprint(settings):
    """Any change to how text is fed to the model yields a new fingerprint."""
    plain = SentenceTransformerEncoder(settings.model)
    prefixed = SentenceTransformerEncoder(settings.model.model_copy(update={"document_prefix": "passage: "}))
    assert plain.fingerprint != prefixed.fingerprint


def test_shrinking_document_loses_its_extra_points(pipeline, docs):
    """Write new, delete old: a shorter document keeps exactly its current chunks."""
    pipe, encoder = pipeline
    run_index(pipe, docs)
    before = len(actual_points_of(pipe)["fs/cats.md"])
    touch_later(docs / "cats.md", "# Cats\n\n" + paragraphs("cats", 2))
    run_index(pipe, docs)
    after = actual_points_of(pipe)["fs/cats.md"]
    assert len(after) < before
    assert_index_matches(pipe, docs, encoder)


def test_deleted_document_has_no_points(pipeline, docs):
    """Removing a file removes every one of its points and the document count drops."""
    pipe, encoder = pipeline
    run_index(pipe, docs)
    (docs / "guides" / "dogs.md").unlink()
    summary = run_index(pipe, docs)
    assert summary["docs"]["deleted"] == 1
    assert "fs/guides/dogs.md" not in actual_points_of(pipe)
    assert pipe.status()["versions"][0]["documents"] == 2
    assert_index_matches(pipe, docs, encoder)


def event(doc_id: str, version: int, text: str | None) -> ChangeEvent:
    op = "upsert" if text is not None else "delete"
    return ChangeEvent(source="t", doc_id=doc_id, op=op, text=text, version=version)


def doc_texts(pipe: EmbeddedPipeline, key: str) -> set[str]:
    version = live_version(pipe.store, pipe.settings.index.name)
    assert version is not None
    ids = [i for i, _ in pipe.store.scroll(version.collection)]
    return {p["text"] for p in pipe.store.retrieve(version.collection, ids).values() if p["doc_key"] == key}


def test_stale_upsert_does_not_change_the_index(pipeline):
    """An event older than what the index reflects is ignored."""
    pipe, _ = pipeline
    pipe.process([event("x", 2, "The newer text about ships.")])
    pipe.process([event("x", 1, "The older text about trains.")])
    assert doc_texts(pipe, "t/x") == {"The newer text about ships."}
    assert pipe.stats.docs["stale"] == 1


def test_stale_delete_does_not_remove_a_newer_document(pipeline):
    """A deletion older than the indexed version leaves the document in place."""
    pipe, _ = pipeline
    pipe.process([event("x", 5, "Still here.")])
    pipe.process([event("x", 4, None)])
    assert doc_texts(pipe, "t/x") == {"Still here."}


def test_upsert_older_than_a_deletion_stays_deleted(pipeline):
    """A tombstone outranks late upserts of older versions."""
    pipe, _ = pipeline
    pipe.process([event("x", 1, "First."), event("x", 3, None)])
    pipe.process([event("x", 2, "Late arrival.")])
    assert doc_texts(pipe, "t/x") == set()


def test_a_b_a_edits_end_at_a(pipeline):
    """A→B→A within one batch and across batches ends with A's points only."""
    pipe, _ = pipeline
    pipe.process([event("x", 1, "Alpha text."), event("x", 2, "Beta text."), event("x", 3, "Alpha text.")])
    assert doc_texts(pipe, "t/x") == {"Alpha text."}
    pipe.process([event("y", 1, "Alpha text.")])
    pipe.process([event("y", 2, "Beta text.")])
    pipe.process([event("y", 3, "Alpha text.")])
    assert doc_texts(pipe, "t/y") == {"Alpha text."}


def test_delete_then_readd_in_one_batch_keeps_the_document(pipeline):
    """Netting a batch's writes: delete then re-add of the same chunk keeps the point."""
    pipe, _ = pipeline
    pipe.process([event("x", 1, "Same words.")])
    pipe.process([event("x", 2, None), event("x", 3, "Same words.")])
    assert doc_texts(pipe, "t/x") == {"Same words."}


def test_bad_files_are_reported_and_the_run_continues(pipeline, docs):
    """Undecodable, binary and oversized files are skipped with reasons; the rest is indexed."""
    pipe, _ = pipeline
    (docs / "bad.md").write_bytes(b"\xff\xfe\xfa not utf-8")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (docs / "huge.md").write_text("word " * 10_000)
    summary = run_index(pipe, docs)
    assert summary["skipped"] == {"undecodable": 1, "binary": 1, "too_large": 1}
    assert summary["docs"]["added"] == 3


def test_poison_events_go_to_the_dlq_and_the_rest_is_indexed(pipeline):
    """Oversized and empty texts are dead-lettered with reasons; later events still land."""
    pipe, _ = pipeline
    pipe.process([event("big", 1, "word " * 10_000), event("empty", 1, "   \n "), event("ok", 1, "Fine.")])
    reasons = sorted(letter["error.reason"] for letter in pipe.dead_letters())
    assert reasons == ["empty_text", "too_large"]
    assert doc_texts(pipe, "t/ok") == {"Fine."}


def test_search_finds_documents_and_filters_by_metadata(pipeline, docs):
    """Search returns one result per document and honours metadata filters."""
    pipe, _ = pipeline
    run_index(pipe, docs)
    results = pipe.search("cats", k=10)
    assert len({r.doc_id for r in results}) == len(results) == 3
    only_txt = pipe.search("cats", k=10, filters={"ext": ".txt"})
    assert [r.doc_id for r in only_txt] == ["birds.txt"]


def test_second_process_on_the_same_store_fails_fast(settings):
    """The embedded engine admits one owner; a second opener gets a clear StoreLocked."""
    import subprocess
    import sys

    from pipeline.store.edge import EdgeStore

    store = EdgeStore(settings.qdrant_dir)
    try:
        code = (
            "import sys\nfrom pathlib import Path\nfrom pipeline.store.edge import EdgeStore\n"
            "from pipeline.core.errors import StoreLocked\n"
            f"try:\n    EdgeStore(Path({str(settings.qdrant_dir)!r}))\nexcept StoreLocked as e:\n"
            "    print(e); sys.exit(7)\n"
        )
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 7, result.stderr
        assert "in use by pid" in result.stdout
        assert time.monotonic() - started < 30
    finally:
        store.close()


def test_truncated_half_precision_index_still_finds_documents(settings, docs):
    """index.dims + float16 + int8 quantization: stored at 16 dims, search still ranks sensibly."""
    compact = settings.model_copy(
        update={
            "index": settings.index.model_copy(
                update={"dims": 16, "datatype": "float16", "quantization": "int8"}
            )
        }
    )
    pipe, _ = open_pipeline(compact)
    try:
        run_index(pipe, docs)
        status = pipe.status()["versions"][0]
        assert (status["dims"], status["datatype"], status["quantization"]) == (16, "float16", "int8")
        exact = (docs / "birds.txt").read_text().split("\n\n")[1]
        assert pipe.search(exact, k=1)[0].doc_id == "birds.txt"
    finally:
        pipe.close()
