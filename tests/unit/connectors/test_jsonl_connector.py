"""Unit tests for the JSON lines source: line validation, line numbers, versions, dead letters."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from connectors.jsonl import STDIN, JsonlSource, parse_line
from pipeline.bus import Record
from pipeline.core.errors import EmbedstreamError, InvalidEvent
from pipeline.sources import PassReport


class Collected:
    """A Rejects that keeps what it was given."""

    def __init__(self) -> None:
        self.letters: list[tuple[Record, EmbedstreamError]] = []

    def reject(self, record: Record, error: EmbedstreamError) -> None:
        self.letters.append((record, error))


def source(tmp_path: Path, text: str, rejects: Collected | None = None) -> JsonlSource:
    path = tmp_path / "changes.jsonl"
    path.write_text(text, encoding="utf-8")
    return JsonlSource(path, tmp_path / "checkpoint.sqlite", name="notes", rejects=rejects)


def run(src: JsonlSource) -> list:
    report = PassReport()
    changes = list(src.changes(report))
    src.commit(changes)
    return [c.event for c in changes if c.event is not None]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "JSON object"),
        ('{"text": "no id"}', "doc_id and key"),
        ('{"doc_id": "a", "key": "notes/a", "text": "x"}', "doc_id and key"),
        ('{"doc_id": "a"}', "non-empty text"),
        ('{"doc_id": "a", "text": "   "}', "non-empty text"),
        ('{"doc_id": "a", "op": "delete", "text": "x"}', "no text"),
        ('{"doc_id": "a", "op": "rename", "text": "x"}', "op"),
        ('{"doc_id": "a", "text": "x", "version": "5"}', "version"),
        ('{"doc_id": "a", "text": "x", "version": -1}', "version"),
        ('{"doc_id": 7, "text": "x"}', "doc_id"),
        ('{"doc_id": "a", "text": "x", "metadata": [1]}', "metadata"),
        ('{"doc_id": "a", "text": "x", "colour": "red"}', "colour"),
        ('{"doc_id": "a", "text": "x", "source": "other"}', "--source other"),
        ('{"key": "other/a", "text": "x"}', "--source other"),
        ('{"key": "notes/a", "source": "notes", "text": "x"}', "no separate source field"),
    ],
)
def test_malformed_lines_say_what_is_wrong(line, message):
    """Each kind of bad line is refused with a message naming the problem."""
    with pytest.raises(InvalidEvent, match=message):
        parse_line(line.encode(), "notes")


def test_good_lines_by_doc_id_or_full_key():
    """doc_id (optionally with this source's name) and key 'source/doc_id' name the same document."""
    assert parse_line(b'{"doc_id": "a/b", "text": "x"}', "notes").identity() == (None, "a/b")
    assert parse_line(b'{"key": "notes/a/b", "text": "x"}', "notes").identity() == ("notes", "a/b")
    assert parse_line(b'{"doc_id": "a", "source": "notes", "op": "delete"}', "notes").op == "delete"


def test_a_key_without_a_source_is_the_document_id():
    """An exported event's bare key ({"key": "a"}) names document a of this stream, instead of
    making every line invalid (and the run exit 0 with nothing indexed)."""
    assert parse_line(b'{"key": "a", "text": "x"}', "notes").identity() == (None, "a")


def test_bad_lines_are_reported_by_number_and_dead_lettered(tmp_path: Path):
    """Good lines become events; bad ones are reported with their line numbers and dead-lettered whole."""
    rejects = Collected()
    lines = ['{"doc_id": "a", "text": "A"}', "{oops", "", '{"doc_id": "b"}', '{"doc_id": "c", "text": "C"}']
    src = source(tmp_path, "\n".join(lines) + "\n", rejects)
    events = run(src)
    assert [e.doc_id for e in events] == ["a", "c"]
    assert [bad.line for bad in src.invalid] == [2, 4]
    assert src.invalid[0].error.startswith("invalid JSON")
    assert src.invalid[1].error == "an upsert needs a non-empty text (or op 'delete')"
    assert [(r.offset, r.value) for r, _ in rejects.letters] == [(2, b"{oops"), (4, b'{"doc_id": "b"}')]
    assert all(isinstance(error, InvalidEvent) for _, error in rejects.letters)


def test_the_last_line_about_a_document_wins(tmp_path: Path):
    """Only a document's last line counts, and its version rises above the last one emitted
    even when the line names an older version."""
    lines = ['{"doc_id": "a", "text": "A", "version": 50}', '{"doc_id": "a", "text": "B", "version": 10}']
    src = source(tmp_path, lines[0])
    (first,) = run(src)
    (tmp_path / "changes.jsonl").write_text("\n".join(lines))
    (second,) = run(src)
    assert second.version > first.version
    assert second.text == "B"
    assert run(src) == []  # the same file again: the repeated doc_id emits nothing


def test_a_second_run_of_the_same_file_emits_nothing(tmp_path: Path):
    """Lines equal to what was indexed (text and metadata) emit no event the next time."""
    lines = ['{"doc_id": "a", "text": "A", "metadata": {"lang": "en"}}', '{"doc_id": "b", "op": "delete"}']
    src = source(tmp_path, "\n".join(lines))
    assert len(run(src)) == 2
    assert run(src) == []


def test_a_metadata_change_alone_is_an_upsert(tmp_path: Path):
    """Same text with new metadata is emitted (the sink then rewrites payloads only)."""
    path = tmp_path / "changes.jsonl"
    src = source(tmp_path, '{"doc_id": "a", "text": "A", "metadata": {"lang": "en"}}\n')
    run(src)
    path.write_text('{"doc_id": "a", "text": "A", "metadata": {"lang": "de"}}\n')
    (event,) = run(src)
    assert event.metadata == {"lang": "de"}


def test_stdin_is_read_once(tmp_path: Path):
    """'-' reads the given binary stream; its size is unknown up front."""
    stream = io.BytesIO(b'{"doc_id": "a", "text": "A"}\n')
    src = JsonlSource(STDIN, tmp_path / "c.sqlite", name="notes", stdin=stream)
    assert src.estimate() is None
    assert [e.doc_id for e in run(src)] == ["a"]
