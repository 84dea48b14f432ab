"""``embedstream verify`` finds what differs between an index and its folder, and
``--repair`` makes them equal: planted ghosts, stale texts and wrong vectors, on the real
embedded engine with the tiny model, through the CLI as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import Settings
from pipeline.core.hashing import point_id
from pipeline.store import PointWrite
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import live_version
from tests.cli_runner import cli
from tests.groundtruth import paragraphs

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def indexed(tmp_path: Path, tiny_model: Path) -> tuple[Path, list[str]]:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, topic in (("a.md", "apples"), ("b.md", "boats"), ("c.md", "clouds")):
        (docs / name).write_text(paragraphs(topic, 4), encoding="utf-8")
    common = ["--state-dir", str(tmp_path / "state"), "--model", str(tiny_model)]
    assert cli("index", str(docs), *common).exit_code == 0
    return docs, common


def verified(docs: Path, common: list[str], *extra: str) -> tuple[int, dict]:
    result = cli("verify", str(docs), *common, "--json", *extra)
    return result.exit_code, json.loads(result.stdout)


def plant(tmp_path: Path, tiny_model: Path, write) -> None:
    """Open the index's store directly (as a bug or a hand edit would) and write to it."""
    settings = Settings.load(state_dir=tmp_path / "state", model={"name": str(tiny_model)})
    store = EdgeStore(settings.qdrant_dir)
    try:
        version = live_version(store, settings.index.name)
        assert version is not None
        write(store, version)
        store.flush()
    finally:
        store.close()


def test_an_index_just_built_verifies_equal(indexed):
    docs, common = indexed
    code, report = verified(docs, common)
    assert (code, report["equal"], report["documents"]) == (0, True, 3)
    assert report["vectors_checked"] > 0


def test_a_ghost_document_is_found_and_repaired(indexed, tmp_path, tiny_model):
    """Points of a document no folder holds (a crash, a bug): exit 1 naming it; --repair removes them."""
    docs, common = indexed

    def ghost(store, version):
        key = "fs/ghost.md"
        payload = {"doc_key": key, "source": "fs", "doc_id": "ghost.md", "version": 10**15, "text": "boo"}
        vector = np.ones(version.dims, dtype=np.float32) / np.sqrt(version.dims)
        store.upsert(version.collection, [PointWrite(point_id(key, "h", 0), vector.tolist(), payload)])

    plant(tmp_path, tiny_model, ghost)
    code, report = verified(docs, common)
    assert code == 1
    assert [(f["kind"], f["doc_id"]) for f in report["findings"]] == [("ghost", "ghost.md")]
    code, report = verified(docs, common, "--repair")
    assert (code, report["after_repair"]["equal"]) == (0, True)
    assert verified(docs, common)[0] == 0


def test_a_stale_text_is_found_and_repaired(indexed, tmp_path, tiny_model):
    """A point that holds another text than its chunk's: found; --repair rewrites it."""
    docs, common = indexed

    def stale(store, version):
        some_id, payload = next(
            (pid, p) for pid, p in store.scroll(version.collection) if p["doc_id"] == "b.md"
        )
        vector = store.retrieve_vectors(version.collection, [some_id])[some_id]
        store.upsert(version.collection, [PointWrite(some_id, vector, {**payload, "text": "old words"})])

    plant(tmp_path, tiny_model, stale)
    code, report = verified(docs, common)
    assert (code, [(f["kind"], f["doc_id"]) for f in report["findings"]]) == (1, [("stale_text", "b.md")])
    code, report = verified(docs, common, "--repair")
    assert (code, report["after_repair"]["equal"]) == (0, True)


def test_a_wrong_vector_is_found_and_repaired(indexed, tmp_path, tiny_model):
    """A stored vector that is not its chunk's encoding: found by the sample; --repair re-encodes."""
    docs, common = indexed

    def wrong(store, version):
        for pid, payload in store.scroll(version.collection):
            if payload["doc_id"] == "c.md":
                rng = np.random.default_rng(0)
                vector = rng.standard_normal(version.dims).astype(np.float32)
                unit = (vector / np.linalg.norm(vector)).tolist()
                store.upsert(version.collection, [PointWrite(pid, unit, payload)])

    plant(tmp_path, tiny_model, wrong)
    code, report = verified(docs, common, "--sample", "1000")
    assert code == 1
    assert {(f["kind"], f["doc_id"]) for f in report["findings"]} == {("wrong_vector", "c.md")}
    code, report = verified(docs, common, "--sample", "1000", "--repair")
    assert (code, report["after_repair"]["equal"]) == (0, True)


def test_a_changed_folder_is_not_equal_until_indexed(indexed):
    """An edit and a deletion not yet indexed are differences (missing / stale, ghost)."""
    docs, common = indexed
    (docs / "a.md").write_text(paragraphs("a new subject", 3), encoding="utf-8")
    (docs / "b.md").unlink()
    (docs / "d.md").write_text(paragraphs("dunes", 2), encoding="utf-8")
    code, report = verified(docs, common)
    kinds = {(f["kind"], f["doc_id"]) for f in report["findings"]}
    assert (code, kinds) == (1, {("stale_text", "a.md"), ("ghost", "b.md"), ("missing", "d.md")})
    assert cli("index", str(docs), *common).exit_code == 0
    assert verified(docs, common)[0] == 0


def test_verify_without_an_index_says_so(tmp_path, tiny_model):
    result = cli("verify", "--state-dir", str(tmp_path / "none"), "--model", str(tiny_model))
    assert result.exit_code == 3
    assert "no index" in result.output
