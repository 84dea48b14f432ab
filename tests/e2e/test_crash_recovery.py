"""kill -9 of `embedstream index` anywhere, then *any* later event: the index is exact.

Real processes (the CLI with a tiny model), a real SIGKILL at each named crash point or at
a random moment, then a different edit, then a normal run; the index is compared with the
ground truth computed from the files, point ids and vectors (tests/groundtruth.py).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config.settings import Settings
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.adapters import make_chunker
from pipeline.store.edge import EdgeStore
from pipeline.versions.spec import live_version
from tests.conftest import REPO
from tests.groundtruth import actual_points, assert_index_equals, expected_chunks, text_files

CLI = [sys.executable, "-m", "pipeline.cli"]
CHUNKING = {"EMBEDSTREAM_CHUNKING__MAX_TOKENS": "48", "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": "8"}

pytestmark = pytest.mark.slow


def paragraphs(topic: str, count: int) -> str:
    return "\n\n".join(
        f"Paragraph {i} on {topic}: detail {i} of {topic}, told in a few plain words. Item {i * 7} ends it."
        for i in range(count)
    )


def index(
    state: Path, docs: Path, model: Path, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CHUNKING, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if crash_at:
        env["EMBEDSTREAM_CRASH_AT"] = crash_at
    command = [*CLI, "index", str(docs), "--state-dir", str(state), "--model", str(model), "--json"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def assert_exact(state: Path, docs: Path, model: Path) -> None:
    settings = Settings.load(
        state_dir=state, model={"name": str(model)}, chunking={"max_tokens": 48, "overlap_tokens": 8}
    )
    encoder = SentenceTransformerEncoder(settings.model)
    store = EdgeStore(settings.qdrant_dir)
    try:
        version = live_version(store, settings.index.name)
        assert version is not None
        expected = expected_chunks(text_files(docs), make_chunker(encoder, settings))
        assert_index_equals(store, version, expected, encoder)
    finally:
        store.close()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "cats.md").write_text("# Cats\n\n" + paragraphs("cats", 8))
    (root / "guides" / "dogs.md").write_text("# Dogs\n\n" + paragraphs("dogs", 5))
    (root / "birds.txt").write_text(paragraphs("birds", 3))
    return root


CRASH_POINTS = [
    "embed.after_encode",
    "embed.before_commit",
    "sink.after_upsert",
    "sink.after_state",
    "sink.after_delete",
    "sink.after_flush",
    "sink.before_commit",
    "source.after_publish",
]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_kill_9_at_a_crash_point_then_a_different_edit_ends_exact(tmp_path, docs, tiny_model, crash_at):
    """Index; edit (shrink one file, delete one); kill -9 at the point; edit again differently;
    index: the index equals the files, ids and vectors."""
    state = tmp_path / "state"
    assert index(state, docs, tiny_model).returncode == 0
    (docs / "cats.md").write_text("# Cats\n\n" + paragraphs("lions", 4))
    (docs / "birds.txt").unlink()
    crashed = index(state, docs, tiny_model, crash_at=crash_at)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    (docs / "cats.md").write_text("# Cats\n\n" + paragraphs("tigers", 6))
    (docs / "guides" / "dogs.md").write_text("# Dogs\n\n" + paragraphs("wolves", 2))
    again = index(state, docs, tiny_model)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_exact(state, docs, tiny_model)


def test_kill_9_while_creating_the_first_index_version_then_an_edit_ends_exact(tmp_path, docs, tiny_model):
    """A first index killed between creating the collection and recording its spec: the next
    run finishes creating it (alias included) and indexes the edited files exactly."""
    state = tmp_path / "state"
    crashed = index(state, docs, tiny_model, crash_at="index.create_version")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    (docs / "cats.md").write_text("# Cats\n\n" + paragraphs("lynxes", 3))
    assert index(state, docs, tiny_model).returncode == 0
    assert_exact(state, docs, tiny_model)


def test_a_first_index_killed_after_some_encoding_keeps_that_work(tmp_path, docs, tiny_model):
    """kill -9 after the first encode slice of a first index: the rerun encodes only the rest."""
    for n in range(30):  # ~60k tokens: more than one encode slice (ENCODE_SLICE_TOKENS)
        (docs / f"extra-{n}.md").write_text(f"# Extra {n}\n\n" + paragraphs(f"topic{n}", 40))
    fresh = json.loads(index(tmp_path / "fresh", docs, tiny_model).stdout)
    state = tmp_path / "state"
    crashed = index(state, docs, tiny_model, crash_at="embed.after_encode")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    rerun = json.loads(index(state, docs, tiny_model).stdout)
    assert 0 < rerun["chunks"]["encoded"] < fresh["chunks"]["encoded"]
    assert_exact(state, docs, tiny_model)


def _corpus(root: Path, count: int) -> None:
    for n in range(count):
        (root / f"doc-{n:03d}.md").write_text(f"# Document {n}\n\n" + paragraphs(f"subject {n}", 10))


def _points(state: Path, model: Path) -> dict[str, set[str]]:
    store = EdgeStore(Settings.load(state_dir=state, model={"name": str(model)}).qdrant_dir)
    try:
        version = live_version(store, "docs")
        assert version is not None
        return actual_points(store, version)
    finally:
        store.close()


@dataclass(frozen=True)
class Reference:
    docs: Path
    points: dict[str, set[str]]
    seconds: float


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Reference:
    """A 40-document folder, its fresh index's point sets, and how long that index took."""
    root = tmp_path_factory.mktemp("random-kills")
    docs = root / "docs"
    docs.mkdir()
    _corpus(docs, 40)
    started = time.monotonic()
    assert index(root / "fresh", docs, tiny_model).returncode == 0
    return Reference(docs, _points(root / "fresh", tiny_model), time.monotonic() - started)


@pytest.mark.parametrize("seed", range(5))
def test_kill_9_of_index_at_a_random_moment_then_index_again_equals_a_fresh_index(
    tmp_path, tiny_model, reference, seed
):
    """Five seeded trials: SIGKILL `index` at a random moment of its run, run it again; the
    result equals a fresh index of the same folder (documents, point ids, vectors)."""
    state = tmp_path / "state"
    env = {**os.environ, **CHUNKING, "HF_HUB_OFFLINE": "1"}
    command = [
        *CLI,
        "index",
        str(reference.docs),
        "--state-dir",
        str(state),
        "--model",
        str(tiny_model),
        "--json",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(random.Random(seed).uniform(0.2, 1.0) * reference.seconds)
    process.kill()
    process.wait(30)
    assert index(state, reference.docs, tiny_model).returncode == 0
    assert _points(state, tiny_model) == reference.points
    assert_exact(state, reference.docs, tiny_model)
