"""The index is exactly the corpus under the sequences users and failures produce.

Real embedded Qdrant engine, real (tiny) model; every check compares with ground truth that
includes vectors (tests/groundtruth.py). Each test is named after the behaviour it guards;
the numbers refer to the problems listed in the exactness issue.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.filesystem import FilesystemSource
from pipeline.bus import Outgoing
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, StoreUnavailable
from pipeline.core.events import ChangeEvent, ChunkRef, VectorsEvent
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.sources import SourceBindings
from pipeline.store import VectorStore
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import live_version
from tests.groundtruth import assert_index_equals, expected_chunks, paragraphs, text_files

BASE_NS = 1_700_000_000_000_000_000


@pytest.fixture
def settings(tiny_settings: Settings) -> Settings:
    return tiny_settings


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    write(root, "cats.md", "# Cats\n\n" + paragraphs("cats", 6), BASE_NS)
    write(root, "dogs.md", "# Dogs\n\n" + paragraphs("dogs", 4), BASE_NS)
    write(root, "guides/birds.txt", paragraphs("birds", 3), BASE_NS)
    return root


def write(root: Path, relpath: str, text: str | bytes, mtime_ns: int | None = None) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


class Index:
    """One index state dir, reopened at will (a restart), indexing folders through sources."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline: EmbeddedPipeline | None = None

    def open(self, store: VectorStore | None = None, **limits: int) -> EmbeddedPipeline:
        self.close()
        settings = self.settings
        if limits:
            settings = settings.model_copy(update={"limits": settings.limits.model_copy(update=limits)})
        self.pipeline = EmbeddedPipeline(settings, store=store)
        return self.pipeline

    @property
    def pipe(self) -> EmbeddedPipeline:
        return self.pipeline or self.open()

    def source(self, root: Path, name: str = "fs", rebind: bool = False) -> FilesystemSource:
        home = self.settings.state_dir / "indexes" / self.settings.index.name
        source = FilesystemSource(
            root,
            home / "checkpoints" / f"{name}.json",
            name=name,
            max_bytes=self.pipe.settings.limits.max_doc_bytes,
        )
        SourceBindings.of(home).bind(name, source.identity, rebind=rebind)
        return source

    def run(self, root: Path, name: str = "fs", **options: Any) -> IndexSummary:
        rebind = options.pop("rebind", False)
        return index_source(self.pipe, self.source(root, name, rebind), **options)

    def assert_exact(self, folders: dict[str, Path]) -> None:
        """The index holds exactly the folders' files (source name -> folder), vectors included."""
        pipe = self.pipe
        version = live_version(pipe.store, pipe.settings.index.name)
        assert version is not None
        chunker = make_chunker(pipe.encoder, pipe.settings)
        expected = {}
        for name, root in folders.items():
            expected |= expected_chunks(text_files(root), chunker, source=name)
        assert_index_equals(pipe.store, version, expected, pipe.encoder)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None


@pytest.fixture
def index(settings: Settings) -> Iterator[Index]:
    handle = Index(settings)
    yield handle
    handle.close()


class FaultyStore:
    """The real store, with a hook that runs before chosen calls (to fail or interleave them)."""

    def __init__(self, inner: VectorStore, hooks: dict[str, Callable[..., None]]) -> None:
        self._inner = inner
        self.hooks = hooks

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        hook = self.hooks.get(name)
        if hook is None or not callable(attribute):
            return attribute

        def hooked(*args: Any, **kwargs: Any) -> Any:
            hook(*args, **kwargs)
            return attribute(*args, **kwargs)

        return hooked


class Crash(BaseException):
    """Stands for a kill -9: not an error any layer handles or retries."""


#: Named moments inside the sink's write: (store method, which call of it).
MOMENTS = {
    "points": ("upsert", lambda name: not name.endswith("__docs")),  # before the points are written
    "state": ("upsert", lambda name: name.endswith("__docs")),  # points written, state not yet
    "sweep": ("sweep", lambda name: True),  # state recorded, old points not yet swept
    "flush": ("flush", lambda *_: True),  # everything written, not yet flushed
}


def at(moment: str, action: Callable[[], None]) -> dict[str, Callable[..., None]]:
    """Hooks that run ``action`` at ``moment`` of a sink write."""
    method, matches = MOMENTS[moment]

    def hook(*args: Any, **_kwargs: Any) -> None:
        if matches(*args[:1]):
            action()

    return {method: hook}


# --------------------------------------------------------------------------- 1: versions


def test_a_file_renamed_away_and_back_is_indexed_again(index, docs):
    """mv a b; index; mv b a; index: the document is back (its upsert outranks its tombstone)."""
    index.run(docs)
    (docs / "cats.md").rename(docs / "kittens.md")
    index.run(docs)
    (docs / "kittens.md").rename(docs / "cats.md")
    summary = index.run(docs)
    assert summary.stale == 0
    index.assert_exact({"fs": docs})
    assert index.run(docs).added == 0  # and later passes agree


def test_restoring_an_older_copy_of_a_file_indexes_it(index, docs):
    """cp -p of an older version (an older mtime) replaces the newer text in the index."""
    original = (docs / "dogs.md").read_text()
    index.run(docs)
    write(docs, "dogs.md", "# Dogs\n\nA rewrite about wolves and foxes.", BASE_NS + 10**12)
    index.run(docs)
    write(docs, "dogs.md", original, BASE_NS)  # restored from a backup: old mtime
    summary = index.run(docs)
    assert (summary.changed, summary.stale) == (1, 0)
    index.assert_exact({"fs": docs})


def test_stale_drops_are_counted_in_the_summary(index):
    """An event older than what the index holds is dropped and counted as stale."""
    pipe = index.pipe
    pipe.process([ChangeEvent(source="t", doc_id="x", op="upsert", text="New text.", version=5)])
    before = pipe.stats.docs["stale"]
    pipe.process([ChangeEvent(source="t", doc_id="x", op="upsert", text="Old text.", version=4)])
    assert pipe.stats.docs["stale"] == before + 1
    assert IndexSummary(stale=1).as_json()["docs"]["stale"] == 1


# --------------------------------------------------------------------------- 2: ghost-proof sink


@pytest.mark.parametrize("dies_before", ["state", "sweep", "flush"])
def test_a_crash_mid_write_then_a_different_edit_leaves_no_ghost(index, docs, dies_before):
    """Points written by an attempt that died before recording its state are swept by the
    next write of the document, even when that write is a different edit."""
    index.run(docs)
    write(docs, "cats.md", "# Cats\n\n" + paragraphs("lions", 5))
    index.close()
    store = EdgeStore(index.settings.qdrant_dir)

    def die() -> None:
        raise Crash

    index.open(store=FaultyStore(store, at(dies_before, die)))  # type: ignore[arg-type]
    with pytest.raises(Crash):
        index.run(docs)
    index.close()
    store.close()
    write(docs, "cats.md", "# Cats\n\n" + paragraphs("tigers", 3))
    index.open()
    index.run(docs)
    index.assert_exact({"fs": docs})


def test_a_lost_checkpoint_and_a_deleted_file_reconcile_against_the_index(index, docs, settings):
    """With the checkpoint gone, a file deleted meanwhile is still removed: the pass compares
    what it saw with what the index holds, not only with its checkpoint."""
    index.run(docs)
    for checkpoint in settings.state_dir.rglob("checkpoints/*.json"):
        checkpoint.unlink()
    (docs / "dogs.md").unlink()
    summary = index.run(docs)
    assert summary.deleted == 1
    index.assert_exact({"fs": docs})


# --------------------------------------------------------------------------- 3: two sinks


V2_TEXT = "# Notes\n\n" + paragraphs("version two", 5)
V3_TEXT = "# Notes\n\n" + paragraphs("version three", 3)


@pytest.mark.parametrize("during", ["points", "state", "sweep", "flush"])
@pytest.mark.parametrize("late", ["older", "newer"])
def test_two_sinks_interleaved_on_one_document_leave_the_newest_version(settings, tmp_path, during, late):
    """Sink A is paused inside its write while sink B writes the same document completely;
    whichever version is newer is what remains, points, texts and vectors."""
    store = EdgeStore(tmp_path / "shared")
    first = EmbeddedPipeline(settings, store=store)
    first.process(
        [ChangeEvent(source="t", doc_id="n", op="upsert", text="# Notes\n\nThe first draft.", version=1)]
    )
    b = EmbeddedPipeline(settings, store=store)
    a_text, a_version, b_text, b_version = (
        (V2_TEXT, 2, V3_TEXT, 3) if late == "older" else (V3_TEXT, 3, V2_TEXT, 2)
    )
    fired = []

    def run_b() -> None:
        if not fired:
            fired.append(True)
            b.process([ChangeEvent(source="t", doc_id="n", op="upsert", text=b_text, version=b_version)])

    a = EmbeddedPipeline(settings, store=FaultyStore(store, at(during, run_b)))  # type: ignore[arg-type]
    try:
        a.process([ChangeEvent(source="t", doc_id="n", op="upsert", text=a_text, version=a_version)])
        assert fired
        version = live_version(store, settings.index.name)
        assert version is not None
        chunker = make_chunker(a.encoder, settings)
        assert_index_equals(store, version, expected_chunks({"n": V3_TEXT}, chunker, source="t"), a.encoder)
    finally:
        for pipe in (first, a, b):
            pipe.close()
        store.close()


# --------------------------------------------------------------------------- 4: index creation


@pytest.mark.parametrize("fails", ["create_collection", "upsert", "set_alias"])
def test_a_transient_fault_while_creating_the_first_version_is_retried_to_completion(
    index, docs, settings, fails
):
    """A store fault at any step of creating the first index version is retried from that step:
    the alias ends up set and search answers, now and after a restart."""
    store = EdgeStore(settings.qdrant_dir)
    calls = []

    def flaky(*_args: Any, **_kwargs: Any) -> None:
        calls.append(True)
        if len(calls) == 1:
            raise StoreUnavailable("injected: the store blinked")

    index.open(store=FaultyStore(store, {fails: flaky}))  # type: ignore[arg-type]
    index.run(docs)
    assert store.get_alias(settings.index.name) == f"{settings.index.name}__v1"
    index.close()
    store.close()
    index.open()
    assert index.pipe.search("cats", k=3)
    index.assert_exact({"fs": docs})


def test_a_batch_retried_after_a_store_fault_is_counted_once(index, docs, settings):
    """The sink's point write fails transiently and the batch is retried: the new document is
    reported once (as added), not once per attempt."""
    store = EdgeStore(settings.qdrant_dir)
    index.open(store=store)
    index.run(docs)  # the index version exists: the fault below hits a document batch
    write(docs, "fish.md", "# Fish\n\n" + paragraphs("fish", 3))
    calls = []

    def flaky(*_args: Any, **_kwargs: Any) -> None:
        calls.append(True)
        if len(calls) == 1:
            raise StoreUnavailable("injected: the store blinked")

    index.open(store=FaultyStore(store, {"upsert": flaky}))  # type: ignore[arg-type]
    summary = index.run(docs)
    assert len(calls) > 1  # the fault happened and the write was retried
    assert (summary.added, summary.changed, summary.unchanged) == (1, 0, 3)
    index.assert_exact({"fs": docs})


def test_a_first_document_without_readable_words_is_dead_lettered_not_retried(index, docs):
    """Zero-width spaces only: dead-lettered as empty; the next documents create the index."""
    write(docs, "aaa-invisible.md", "\u200b\u200b\u200b\n\n\u200b")
    summary = index.run(docs)
    assert [letter["error.reason"] for letter in summary.dead_letters] == ["empty_text"]
    os.remove(docs / "aaa-invisible.md")
    index.assert_exact({"fs": docs})


# --------------------------------------------------------------------------- 5: identity


def test_two_folders_under_one_source_name_are_refused_and_separate_names_coexist(index, docs, tmp_path):
    """A second folder cannot silently take the first one's keys; under its own name it is
    indexed beside it, and deleting its readme leaves the first folder's readme in place."""
    other = tmp_path / "other"
    write(docs, "readme.md", "# Readme\n\nThe first folder's readme about harbours.")
    write(other, "readme.md", "# Readme\n\nThe second folder's readme about mountains.")
    index.run(docs)
    with pytest.raises(ConfigError, match="--source NAME"):
        index.run(other)
    index.run(other, name="other")
    (other / "readme.md").unlink()
    index.run(other, name="other")
    assert index.run(docs).unchanged == 4
    index.assert_exact({"fs": docs, "other": other})


def test_a_renamed_folder_rebound_loses_the_file_deleted_meanwhile(index, docs, tmp_path):
    """mv docs docs2; rm docs2/dogs.md; index docs2 --rebind: dogs.md leaves the index and
    nothing else is re-encoded."""
    index.run(docs)
    moved = tmp_path / "moved"
    docs.rename(moved)
    (moved / "dogs.md").unlink()
    with pytest.raises(ConfigError, match="--rebind"):
        index.run(moved)
    summary = index.run(moved, rebind=True)
    assert (summary.deleted, summary.encoded) == (1, 0)
    index.assert_exact({"fs": moved})


# --------------------------------------------------------------------------- 6: unindexable


@pytest.mark.parametrize(
    ("becomes", "reason"),
    [
        (b"\x00\x01binary now", "binary"),
        (b"caf\xe9 latin-1 now", "undecodable"),
        ("x " * 15_000, "too_large"),
    ],
)
def test_a_file_that_becomes_unreadable_text_loses_its_points(index, docs, becomes, reason):
    """Binary, undecodable or over max_doc_bytes: the old text leaves the index, the reason is
    reported, and the file is indexed again once it is text again."""
    index.run(docs)
    old = (docs / "dogs.md").read_text()
    write(docs, "dogs.md", becomes)
    summary = index.run(docs)
    assert summary.skipped == {reason: 1}
    assert summary.deleted == 1
    os.rename(docs / "dogs.md", docs.parent / "aside.md")
    index.assert_exact({"fs": docs})
    os.rename(docs.parent / "aside.md", docs / "dogs.md")
    write(docs, "dogs.md", old)
    index.run(docs)
    index.assert_exact({"fs": docs})


def test_a_document_over_the_chunk_limit_is_dead_lettered_removed_and_retried(index, docs):
    """Over max_chunks_per_doc: dead-lettered and removed, not checkpointed, so raising the
    limit indexes it on the next pass without touching the file."""
    index.run(docs)
    write(docs, "cats.md", "# Cats\n\n" + paragraphs("cats", 60))
    summary = index.run(docs)
    assert [letter["error.reason"] for letter in summary.dead_letters] == ["too_large"]
    # Counted once, as dead-lettered (the counts add up), and its old points are gone.
    assert (summary.deleted, summary.unchanged) == (0, 2)
    assert "cats.md" not in index.pipe.indexed("fs")
    again = index.run(docs)
    assert len(again.dead_letters) == 1  # tried again, still too large
    index.open(max_chunks_per_doc=500)
    raised = index.run(docs)
    assert (raised.added, raised.dead_letters) == (1, [])
    index.assert_exact({"fs": docs})


# --------------------------------------------------------------------------- 8: racy edits


def test_an_edit_that_keeps_mtime_and_size_is_seen(index, docs):
    """A file rewritten within its timestamp tick, same size, is read again (git's racy rule)."""
    path = write(docs, "note.md", "# Note\n\nThe colour is blue.")
    index.run(docs)
    stat = path.stat()
    path.write_text("# Note\n\nThe colour is teal.", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
    summary = index.run(docs)
    assert summary.changed == 1
    index.assert_exact({"fs": docs})


# --------------------------------------------------------------------------- 9: NaN at the sink


def test_vectors_with_nan_from_another_producer_are_dead_lettered_not_stored(index, docs):
    """A vectors event carrying NaN is dead-lettered by the sink; nothing of it is stored."""
    index.run(docs)
    pipe = index.pipe
    version = live_version(pipe.store, pipe.settings.index.name)
    assert version is not None
    poisoned = VectorsEvent(
        source="fs", doc_id="nan.md", op="upsert", version=1, content_hash="h",
        fingerprint=version.fingerprint, metadata={}, emitted_at=0.0,
        chunks=(ChunkRef("7b0e3c9e-0000-5000-8000-000000000001", 0, "c", "text"),),
        vectors=np.full((1, version.full_dims), np.nan, dtype=np.float32),
    )  # fmt: skip
    vectors_topic = pipe.runtime.topics.vectors(pipe.settings.index.name, version.version)
    pipe.bus.producer().send([Outgoing(vectors_topic, poisoned.key, poisoned.to_bytes())])
    dead = pipe.process([])
    assert dead == {"fs/nan.md"}
    index.assert_exact({"fs": docs})


def test_moving_a_folder_aside_is_not_taken_for_its_deletion(index, docs):
    """A root that is not a directory (an unmounted volume) is an error, never a mass delete."""
    index.run(docs)
    shutil.move(docs, docs.parent / "elsewhere")
    with pytest.raises(ConfigError, match="not a directory"):
        index.run(docs)
    shutil.move(docs.parent / "elsewhere", docs)
    index.assert_exact({"fs": docs})
