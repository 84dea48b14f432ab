"""A stateful property test: random edits, deletes, restores, renames, unreadable files and
crashes between passes, with ``verify`` as the invariant after every normal pass.

Hypothesis drives a folder and an embedded index (real engine, tiny model); a crash is a
pass that dies at a random crash point (:class:`~pipeline.core.faults.SimulatedCrash`).
After each normal pass :func:`pipeline.runtime.verify.verify` must find the index equal to
the folder, vectors included; a failure shrinks to the shortest sequence that breaks it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from connectors.filesystem import FilesystemSource
from pipeline.config.settings import Settings
from pipeline.core import faults
from pipeline.encoding import Encoder
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.runtime.verify import verify
from tests.groundtruth import paragraphs

pytestmark = pytest.mark.slow

NAMES = ("a.md", "b.md", "c.txt", "d/e.md")
TOPICS = ("apples", "boats", "clouds", "deserts", "engines")
CRASH_POINTS = (
    "source.after_reserve", "embed.after_encode", "sink.after_upsert", "sink.after_state",
    "sink.after_delete", "sink.before_commit", "source.after_publish",
)  # fmt: skip
BASE = 1_700_000_000


class IndexMachine(RuleBasedStateMachine):
    model: Path
    encoder: Encoder

    @initialize()
    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.docs = self.tmp / "docs"
        self.docs.mkdir()
        self.settings = Settings.load(
            state_dir=self.tmp / "state",
            model={"name": str(self.model)},
            chunking={"max_tokens": 64, "overlap_tokens": 8},
        )
        self.clock = BASE
        self.history: dict[str, list[tuple[str, int]]] = {}  # every text a name had, with its mtime

    def teardown(self) -> None:
        faults.disarm()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _present(self) -> list[str]:
        return [n for n in NAMES if (self.docs / n).is_file()]

    def _write(self, name: str, text: str | bytes, mtime: int) -> None:
        path = self.docs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
            self.history.setdefault(name, []).append((text, mtime))
        os.utime(path, (mtime, mtime))

    @rule(name=st.sampled_from(NAMES), topic=st.sampled_from(TOPICS), size=st.integers(1, 5))
    def write(self, name: str, topic: str, size: int) -> None:
        self.clock += 10
        self._write(name, paragraphs(topic, size), self.clock)

    @precondition(lambda self: bool(self._present()))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        (self.docs / data.draw(st.sampled_from(self._present()))).unlink()

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data())
    def restore_an_older_copy(self, data: st.DataObject) -> None:
        """cp -p from a backup: an earlier text with its earlier mtime."""
        name = data.draw(st.sampled_from(sorted(self.history)))
        text, mtime = data.draw(st.sampled_from(self.history[name]))
        self._write(name, text, mtime)

    @precondition(lambda self: bool(self._present()))
    @rule(data=st.data(), to=st.sampled_from(NAMES))
    def rename(self, data: st.DataObject, to: str) -> None:
        source, target = data.draw(st.sampled_from(self._present())), to
        if source != target:
            (self.docs / target).parent.mkdir(parents=True, exist_ok=True)
            (self.docs / source).replace(self.docs / target)

    @precondition(lambda self: bool(self._present()))
    @rule(data=st.data())
    def make_unreadable(self, data: st.DataObject) -> None:
        self.clock += 10
        self._write(data.draw(st.sampled_from(self._present())), b"\x00\xff binary \x00" * 8, self.clock)

    @rule(point=st.sampled_from(CRASH_POINTS))
    def crashing_pass(self, point: str) -> None:
        """A pass that dies at ``point`` (if it gets there: an idle pass never encodes)."""
        self._pass(crash_at=point)

    @rule()
    def normal_pass(self) -> None:
        self._pass()
        pipeline = EmbeddedPipeline(self.settings, encoder=self.encoder)
        try:
            found = verify(pipeline, [self._source()], sample=20)
        finally:
            pipeline.close()
        assert found.equal, [f.as_json() for f in found.findings]

    def _source(self) -> FilesystemSource:
        return FilesystemSource(self.docs, self.tmp / "state" / "fs.json", name="fs")

    def _pass(self, crash_at: str | None = None) -> None:
        pipeline = EmbeddedPipeline(self.settings, encoder=self.encoder)
        if crash_at is not None:
            faults.arm(crash_at, kill=False)
        try:
            index_source(pipeline, self._source(), allow_mass_delete=True)
        except faults.SimulatedCrash:
            pass
        finally:
            faults.disarm()
            pipeline.close()


def test_random_sequences_of_changes_crashes_and_passes_keep_the_index_exact(tiny_model: Path):
    """Whatever the sequence, every normal pass leaves an index that verifies equal."""
    IndexMachine.model = tiny_model
    IndexMachine.encoder = SentenceTransformerEncoder(
        Settings.load(model={"name": str(tiny_model)}).model
    )
    run_state_machine_as_test(
        IndexMachine,
        settings=settings(
            max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "200")),
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
            derandomize=True,
        ),
    )
