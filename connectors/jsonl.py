"""JSON lines connector: one change per line, from a file or stdin, for scripting.

A line is an object: ``doc_id`` (or ``key``, the full ``source/doc_id``), ``text`` for an
upsert or ``"op": "delete"``, and optionally ``version`` (an integer clock: an
``updated_at``, a sequence number) and ``metadata`` (an object)::

    {"doc_id": "faq-12", "text": "How do I pair the hub?", "metadata": {"lang": "en"}, "version": 17}
    {"doc_id": "faq-9", "op": "delete"}

Only the last line about a document counts (a file is read twice: once to find each
document's last line, once to emit those; stdin is spooled to a temporary file first), so
a file that repeats a ``doc_id`` emits nothing on its next run. A document's version is
its line's own (the current time when it has none), never at or below the last one this
source emitted for it, deletions included, so the last line wins, in this file or the
next. A line equal to what was last indexed emits nothing. Blank lines are ignored; a line that is not valid
JSON or not a valid change is reported with its line number and dead-lettered, and every
other line is still indexed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from connectors.kit.keystates import Documents, KeyStates
from connectors.kit.rejects import Rejects
from pipeline.bus import Record
from pipeline.core.errors import InvalidEvent
from pipeline.core.events import split_key
from pipeline.core.hashing import normalize_text
from pipeline.sources import Change, PassReport

__all__ = ["STDIN", "InvalidLine", "JsonlLine", "JsonlSource", "parse_line"]

STDIN = "-"


class JsonlLine(BaseModel):
    """One line, validated strictly: a string version or a text that is a number is an error."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key: str | None = Field(None, min_length=1)
    doc_id: str | None = Field(None, min_length=1, max_length=2000)
    source: str | None = None
    op: Literal["upsert", "delete"] = "upsert"
    text: str | None = None
    version: int | None = Field(None, ge=0, lt=2**63)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> JsonlLine:
        if (self.key is None) == (self.doc_id is None):
            raise ValueError("give exactly one of doc_id and key")
        if self.key is not None and self.source is not None:
            raise ValueError("key is 'source/doc_id' or a document id (with no separate source field)")
        if self.op == "upsert" and (self.text is None or not normalize_text(self.text)):
            raise ValueError("an upsert needs a non-empty text (or op 'delete')")
        if self.op == "delete" and self.text is not None:
            raise ValueError("a delete carries no text")
        return self

    def identity(self) -> tuple[str | None, str]:
        """(source named by the line, doc_id). A ``key`` without ``source/`` is a document id
        of this stream, as the key of an exported change event often is."""
        if self.key is not None:
            return split_key(self.key) if "/" in self.key else (None, self.key)
        assert self.doc_id is not None
        return self.source, self.doc_id


@dataclass(frozen=True)
class InvalidLine:
    """A reported line: where it is and what is wrong with it."""

    line: int
    error: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.error}


def parse_line(raw: bytes, source: str) -> JsonlLine:
    """Validate one line for the source named ``source``; :class:`InvalidEvent` says what is wrong."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidEvent("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"a line must be a JSON object, not {type(data).__name__}")
    try:
        line = JsonlLine.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # A rule of the whole line reads better without pydantic's "Value error, " prefix.
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise InvalidEvent(f"{where}: {message}" if where else message) from None
    named, _ = line.identity()
    if named is not None and named != source:
        raise InvalidEvent(f"source {named!r} is not this connector's ({source!r}); use --source {named}")
    return line


class JsonlSource:
    """A JSON lines file (or stdin, read once) as a :class:`pipeline.sources.Source`."""

    def __init__(
        self,
        path: Path | str,
        checkpoint: Path,
        *,
        name: str = "jsonl",
        rejects: Rejects | None = None,
        stdin: IO[bytes] | None = None,
    ) -> None:
        self.path = path
        self._name = name
        self._rejects = rejects
        self._stdin = stdin
        self._states = KeyStates(checkpoint)
        self._docs = Documents(name, self._states)
        self.invalid: list[InvalidLine] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        """Lines carry their own document ids: one name is one stream of changes,
        whatever file brings them (today's export, tomorrow's)."""
        return f"jsonl:{self._name}"

    def changes(self, report: PassReport) -> Iterator[Change]:
        self._docs.begin_pass()
        self.invalid = []
        with self._opened() as handle:
            last: dict[str, int] = {}  # doc_id -> its last valid line: the one that counts
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                try:
                    last[parse_line(raw, self._name).identity()[1]] = number
                except InvalidEvent as exc:
                    self._reject(number, raw, str(exc), report)
            counted = set(last.values())
            handle.seek(0)
            for number, raw in enumerate(handle, 1):
                if number not in counted:
                    continue
                change = self._change(parse_line(raw, self._name))
                if change.event is None:
                    report.unchanged += 1
                yield change

    def reserve(self, changes: Sequence[Change]) -> None:
        self._docs.reserve(changes)

    def commit(self, changes: Sequence[Change]) -> None:
        self._docs.commit(changes)

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:  # noqa: ARG002 -- port signature
        """A file of changes is not a full listing: absent documents are not deleted."""
        return []

    def estimate(self) -> int | None:
        if self.path == STDIN:
            return None
        with Path(self.path).open("rb") as handle:
            return sum(1 for line in handle if line.strip())

    def close(self) -> None:
        self._states.close()

    def _change(self, line: JsonlLine) -> Change:
        _, doc_id = line.identity()
        natural = line.version if line.version is not None else time.time_ns()
        if line.op == "delete":
            # Unknown here is not "not indexed" (a lost checkpoint): delete it; a tombstone stays one.
            return self._docs.delete(doc_id, natural, force=self._docs.last(doc_id) is None)
        assert line.text is not None
        return self._docs.upsert(doc_id, normalize_text(line.text), line.metadata, natural)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[IO[bytes]]:
        """The lines, readable twice: the file, or stdin spooled to a temporary file."""
        if self.path != STDIN:
            with Path(self.path).open("rb") as handle:
                yield handle
            return
        assert self._stdin is not None, "stdin was not given"
        with tempfile.TemporaryFile(dir=self._states.path.parent) as spool:
            shutil.copyfileobj(self._stdin, spool)
            spool.seek(0)
            yield spool

    def _reject(self, number: int, raw: bytes, error: str, report: PassReport) -> None:
        self.invalid.append(InvalidLine(number, error))
        report.skip("invalid_line", f"line {number}", error)
        if self._rejects is not None:
            where = f"jsonl:{self.path}"
            record = Record(where, 0, number, f"{self._name}/line-{number}", raw.rstrip(b"\r\n"))
            self._rejects.reject(record, InvalidEvent(f"line {number}: {error}"))
