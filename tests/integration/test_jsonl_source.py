"""`embedstream index --jsonl FILE|-`: valid lines are indexed exactly, bad ones reported and dead-lettered.

Through typer's CliRunner on the real app, the embedded Qdrant engine and the tiny real
model; the index is compared with ground truth including vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.bus.dead_letters import LocalDeadLetters
from pipeline.cli import EXIT_OK, app
from pipeline.config.settings import Settings
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.versions.spec import live_version
from tests.groundtruth import assert_index_equals, expected_chunks

# No EMBEDSTREAM_* variable or ./embedstream.toml from outside (tests/cli_runner.py).
pytestmark = pytest.mark.usefixtures("isolated")

#: One of each kind of bad line, cycled through.
MALFORMED = [
    "{not json",
    '["a", "list"]',
    '{"text": "no id at all"}',
    '{"doc_id": "x"}',
    '{"doc_id": "x", "text": ""}',
    '{"doc_id": "x", "op": "delete", "text": "a delete with text"}',
    '{"doc_id": "x", "text": "a string version", "version": "7"}',
    '{"doc_id": "x", "text": "unknown field", "colour": "red"}',
    '{"doc_id": "x", "text": "another source", "source": "elsewhere"}',
    '{"doc_id": 12, "text": "a numeric id"}',
]


@pytest.fixture
def settings(tmp_path: Path, tiny_model: Path) -> Settings:
    chunking = {"max_tokens": 64, "overlap_tokens": 8}
    return Settings.load(state_dir=tmp_path / "state", model={"name": str(tiny_model)}, chunking=chunking)


def index(settings: Settings, target: str, stdin: str | None = None) -> dict[str, Any]:
    args = ["index", "--jsonl", target, "--json", "--state-dir", str(settings.state_dir)]
    env = {"EMBEDSTREAM_MODEL__NAME": settings.model.name, "EMBEDSTREAM_CHUNKING__MAX_TOKENS": "64",
           "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": "8"}  # fmt: skip
    result = CliRunner().invoke(app, args, input=stdin, env=env)
    assert result.exit_code == EXIT_OK, result.output
    return dict(json.loads(result.stdout))


def assert_index_holds(settings: Settings, documents: dict[str, str]) -> None:
    with EmbeddedPipeline(settings) as pipe:
        version = live_version(pipe.store, "docs")
        assert version is not None
        expected = expected_chunks(documents, make_chunker(pipe.encoder, settings), source="jsonl")
        assert_index_equals(pipe.store, version, expected, pipe.encoder)


def note(number: int) -> str:
    return f"Note {number}: the hub pairs with sensor {number} after a long press of {number % 7} seconds."


def test_a_thousand_lines_with_fifty_bad_ones(settings, tmp_path):
    """1,000 lines, 50 malformed: 950 indexed exactly, the 50 reported and dead-lettered by line number."""
    lines, bad, documents = [], [], {}
    for number in range(1, 1001):
        if number % 20 == 0:
            lines.append(MALFORMED[len(bad) % len(MALFORMED)])
            bad.append(number)
        else:
            documents[f"n{number}"] = note(number)
            line = {"doc_id": f"n{number}", "text": note(number), "metadata": {"shelf": number % 3}}
            lines.append(json.dumps(line))
    path = tmp_path / "changes.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = index(settings, str(path))
    assert summary["docs"]["added"] == 950
    assert [line["line"] for line in summary["invalid_lines"]] == bad
    letters = LocalDeadLetters(settings.state_dir / "dlq.jsonl").read(limit=100)
    assert [int(letter.original_offset) for letter in letters] == bad
    assert {letter.reason for letter in letters} == {"invalid_event"}
    assert_index_holds(settings, documents)


def test_stdin_edits_a_b_a_end_at_a_and_metadata_alone_encodes_nothing(settings):
    """Through stdin: A, then B, then A again ends at A; a metadata-only line encodes 0 chunks."""
    a, b = note(1), note(2) + " A different text."
    for text in (a, b, a):
        index(settings, "-", stdin=json.dumps({"doc_id": "faq", "text": text}) + "\n")
    assert_index_holds(settings, {"faq": a})
    summary = index(settings, "-", stdin=json.dumps({"doc_id": "faq", "text": a, "metadata": {"lang": "en"}}))
    assert (summary["docs"]["changed"], summary["chunks"]["encoded"]) == (1, 0)
    deleted = index(settings, "-", stdin='{"key": "jsonl/faq", "op": "delete"}\n')
    assert deleted["docs"]["deleted"] == 1
    assert_index_holds(settings, {})
