"""JSON lines: only the last line about a document counts, and a new index version is
backfilled with every document the source ever delivered, although the source itself
cannot be read again (stdin is consumed, earlier files are gone): the embedded mode keeps
the last change per document, its stand-in for Kafka's compacted changes topic.

Real embedded engine and tiny model; versions compared with ground truth, vectors included.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from connectors.jsonl import STDIN, JsonlSource
from pipeline.config.settings import Settings
from pipeline.runtime.admin import Admin, StorageChoice, start
from pipeline.runtime.backfill import backfill_source
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import index_source
from pipeline.sources import SourceBindings
from pipeline.versions.spec import find_version
from tests.groundtruth import assert_index_equals, expected_chunks
from tests.integration.test_jsonl_source import assert_index_holds, index, note
from tests.integration.test_jsonl_source import settings as settings  # noqa: PLC0414 -- the fixture

pytestmark = pytest.mark.usefixtures("isolated")


def write_lines(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_repeated_doc_id_counts_once_and_is_not_re_emitted(settings, tmp_path):
    """A file saying a=1, b, a=3: only a=3 and b are indexed, and the same file again emits nothing."""
    lines = [{"doc_id": d, "text": note(n)} for d, n in (("a", 1), ("b", 2), ("a", 3))]
    path = write_lines(tmp_path / "changes.jsonl", lines)
    first = index(settings, str(path))
    assert (first["docs"]["added"], first["docs"]["changed"]) == (2, 0)
    again = index(settings, str(path))
    assert again["docs"] | {"seconds": 0} == {"added": 0, "changed": 0, "unchanged": 2, "deleted": 0,
                                              "stale": 0, "seconds": 0}  # fmt: skip
    assert again["chunks"] == {"encoded": 0, "reused": 0}
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    assert index(settings, "-", stdin=stdin)["docs"]["unchanged"] == 2
    assert_index_holds(settings, {"a": note(3), "b": note(2)})


def _jsonl(path: Path | str, home: Path) -> JsonlSource:
    """What `embedstream index --jsonl PATH` builds, its checkpoint and binding under ``home``."""
    source = JsonlSource(path, home / "checkpoints" / "jsonl.sqlite", name="jsonl", stdin=None)
    SourceBindings.of(home).bind("jsonl", source.identity)
    return source


def _index(pipe: EmbeddedPipeline, path: Path) -> None:
    """`embedstream index --jsonl PATH`: a pass, then the backfill of any version being built."""
    source = _jsonl(path, pipe.settings.index_home)
    try:
        index_source(pipe, source)
    finally:
        source.close()
    backfill_source(pipe, "jsonl", partial(_jsonl, path))


def test_a_new_version_is_backfilled_with_every_file_indexed_before(settings: Settings, tmp_path):
    """File A, then file B (other documents, one of A's deleted), `migrate start`, file B
    again: the new version holds A's and B's documents, exactly."""
    file_a = write_lines(tmp_path / "a.jsonl", [{"doc_id": f"a{i}", "text": note(i)} for i in range(1, 4)])
    file_b = write_lines(
        tmp_path / "b.jsonl",
        [*({"doc_id": f"b{i}", "text": note(10 + i)} for i in range(1, 3)), {"doc_id": "a3", "op": "delete"}],
    )
    expected = {"a1": note(1), "a2": note(2), "b1": note(11), "b2": note(12)}
    with EmbeddedPipeline(settings) as pipe:
        _index(pipe, file_a)
        _index(pipe, file_b)
        with pipe.locked():
            start(Admin(settings, pipe.runtime), StorageChoice(datatype="uint8"))
        pipe.refresh_versions()
        _index(pipe, file_b)
        encoders = pipe.runtime.encoders
        for number in (1, 2):
            version = find_version(pipe.store, "docs", number)
            assert version is not None
            truth = expected_chunks(expected, encoders.chunker_for(version), source="jsonl")
            assert_index_equals(pipe.store, version, truth, encoders.for_version(version))


def test_stdin_cannot_be_read_again_but_its_documents_reach_a_new_version(settings: Settings, tmp_path):
    """Two runs from stdin, then a migration started and a third run: the new version holds all."""
    index(settings, STDIN, stdin=json.dumps({"doc_id": "s1", "text": note(21)}) + "\n")
    index(settings, STDIN, stdin=json.dumps({"doc_id": "s2", "text": note(22)}) + "\n")
    with EmbeddedPipeline(settings) as pipe, pipe.locked():
        start(Admin(settings, pipe.runtime), StorageChoice(datatype="uint8"))
    index(settings, STDIN, stdin=json.dumps({"doc_id": "s3", "text": note(23)}) + "\n")
    with EmbeddedPipeline(settings) as pipe:
        version = find_version(pipe.store, "docs", 2)
        assert version is not None
        encoders = pipe.runtime.encoders
        documents = {"s1": note(21), "s2": note(22), "s3": note(23)}
        truth = expected_chunks(documents, encoders.chunker_for(version), source="jsonl")
        assert_index_equals(pipe.store, version, truth, encoders.for_version(version))
