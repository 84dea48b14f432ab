"""Filesystem source: a directory of text documents as a stream of ``ChangeEvent`` s.

A scan walks the tree and compares every file with a persisted :class:`Checkpoint`. The
cheap ``(mtime_ns, size)`` check comes first so an unchanged tree is never read; only files
whose stat changed are read, decoded and hashed, and only a changed content hash becomes an
upsert. Files that were in the checkpoint but are gone (or now excluded) become deletes.

The scan never writes the checkpoint itself. It yields :class:`Change` s carrying the state
to record, and the runner records it only after the event is durably indexed: a crash in
between re-emits the change on the next scan (harmless, the sink is idempotent) instead of
silently losing it.
"""

from __future__ import annotations

import builtins
import collections
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from pipeline.errors import ConfigError
from pipeline.events import ChangeEvent
from pipeline.hashing import content_hash, normalize_text

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "TEXT_EXTENSIONS",
    "Change",
    "Checkpoint",
    "FileState",
    "FilesystemSource",
    "ScanReport",
    "checkpoint_path",
    "html_to_text",
    "title_of",
]

_log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".text")
DEFAULT_INCLUDE: tuple[str, ...] = tuple(f"**/*{ext}" for ext in TEXT_EXTENSIONS)
# Any hidden path part: keeps our own ``.embedstream/`` state and ``.git/`` out of the index.
DEFAULT_EXCLUDE: tuple[str, ...] = ("**/.*", "**/.*/**")

_HTML_EXTS = frozenset({".html", ".htm"})
_MARKDOWN_EXTS = frozenset({".md", ".markdown", ".txt", ".text"})
_SNIFF_BYTES = 8192  # same window git uses to call a file binary
_CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class FileState:
    """What the index reflects for one file: enough to skip it without reading it."""

    mtime_ns: int
    size: int
    content_hash: str


def checkpoint_path(state_dir: Path, source: str, root: Path) -> Path:
    """One checkpoint per (source, root), so two roots under one source never collide."""
    digest = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:12]
    return state_dir / "checkpoints" / f"{source}-{digest}.json"


class Checkpoint:
    """The persisted map relpath -> :class:`FileState` for one (source, root)."""

    def __init__(self, states: dict[str, FileState] | None = None) -> None:
        self._states: dict[str, FileState] = dict(states or {})

    def __len__(self) -> int:
        return len(self._states)

    def get(self, relpath: str) -> FileState | None:
        return self._states.get(relpath)

    def set(self, relpath: str, state: FileState) -> None:
        self._states[relpath] = state

    def remove(self, relpath: str) -> None:
        self._states.pop(relpath, None)

    def paths(self) -> builtins.set[str]:
        return builtins.set(self._states)

    def apply(self, change: Change) -> None:
        """Record a change once it is durably indexed (a ``None`` state means deleted)."""
        if change.state is None:
            self.remove(change.relpath)
        else:
            self.set(change.relpath, change.state)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Missing or corrupt -> empty: the worst case is one full re-scan, never a crash."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            return cls(_states_from_json(json.loads(raw)))
        except (ValueError, TypeError, KeyError) as exc:
            _log.warning("checkpoint %s is corrupt (%s); starting from an empty one", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        """Write atomically (tmp + fsync + rename) so a crash leaves the old or the new file."""
        files = {rel: vars(state) for rel, state in sorted(self._states.items())}
        body = json.dumps({"format": _CHECKPOINT_FORMAT, "files": files}, ensure_ascii=False)
        _atomic_write(path, body.encode("utf-8"))


def _states_from_json(doc: object) -> dict[str, FileState]:
    if not isinstance(doc, dict) or doc.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError("not an embedstream filesystem checkpoint")
    files = doc["files"]
    if not isinstance(files, dict):
        raise TypeError("'files' is not an object")
    return {str(rel): _state_from_json(entry) for rel, entry in files.items()}


def _state_from_json(entry: object) -> FileState:
    if not isinstance(entry, dict):
        raise TypeError("file entry is not an object")
    mtime_ns, size, digest = entry["mtime_ns"], entry["size"], entry["content_hash"]
    ints_ok = all(type(v) is int for v in (mtime_ns, size))
    if not ints_ok or not isinstance(digest, str):
        raise TypeError("file entry has wrong field types")
    return FileState(mtime_ns, size, digest)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- text extraction


class _SkipFileError(Exception):
    """Internal: this file is not indexed this scan, for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decode(raw: bytes) -> str:
    """Strict UTF-8 (BOM tolerated): guessing an encoding would index mojibake."""
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise _SkipFileError("binary")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _SkipFileError("undecodable") from None


_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4",
        "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
        "table", "tbody", "thead", "tfoot", "tr", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_DROP_TAGS = frozenset({"script", "style", "template"})
_HTML_SPACE = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects visible text, the ``<title>`` and the first ``<h1>`` of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive already unescaped
        self.parts: list[str] = []
        self.title: str | None = None
        self.h1: str | None = None
        self._drop = 0
        self._pre = 0
        self._title_buf: list[str] | None = None
        self._h1_buf: list[str] | None = None
        self._at_space = True  # collapse HTML whitespace across element boundaries

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: ARG002
        if tag in _DROP_TAGS:
            self._drop += 1
        elif tag == "title":
            self._title_buf = []
        else:
            if tag == "h1" and self.h1 is None:
                self._h1_buf = []
            self._pre += tag == "pre"
            self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS:
            self._drop = max(0, self._drop - 1)
        elif tag == "title" and self._title_buf is not None:
            self.title = self.title or _one_line("".join(self._title_buf))
            self._title_buf = None
        elif tag != "br":
            if tag == "h1" and self._h1_buf is not None:
                self.h1 = _one_line("".join(self._h1_buf))
                self._h1_buf = None
            self._pre = max(0, self._pre - (tag == "pre"))
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._drop:
            return
        if self._title_buf is not None:
            self._title_buf.append(data)
            return
        if not self._pre:
            data = _HTML_SPACE.sub(" ", data)
            data = data.lstrip() if self._at_space else data
        if data:
            self._emit(data)
            if self._h1_buf is not None:
                self._h1_buf.append(data)

    def _break(self, tag: str) -> None:
        """Block elements become blank lines so paragraphs survive as chunk boundaries."""
        if tag == "br":
            self._emit("\n")
        elif tag in _BLOCK_TAGS:
            self._emit("\n\n")
        elif tag in _CELL_TAGS and not self._at_space:
            self._emit(" ")

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self._at_space = text[-1:].isspace()


def _one_line(text: str) -> str | None:
    return _HTML_SPACE.sub(" ", text).strip() or None


def html_to_text(html: str) -> tuple[str, str | None]:
    """Visible text of an HTML page (normalized) and its title (``<title>``, else first ``<h1>``)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return normalize_text("".join(parser.parts)), parser.title or parser.h1


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def title_of(text: str, ext: str) -> str | None:
    """The document's own title, so search results show it rather than a file name."""
    ext = ext.lower()
    if ext in _HTML_EXTS:
        return html_to_text(text)[1]
    if ext == ".rst":
        return _rst_title(text.splitlines())
    if ext in _MARKDOWN_EXTS:
        return _markdown_title(text.splitlines())
    return None


def _markdown_title(lines: list[str]) -> str | None:
    """First ``# heading`` (or ``===`` underlined line); front matter and code fences
    are skipped because a ``# comment`` inside a shell snippet is not a title."""
    in_fence = False
    for i in range(_front_matter_end(lines), len(lines)):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (title := _markdown_heading(lines, i)):
            return title
    return None


def _markdown_heading(lines: list[str], i: int) -> str | None:
    if match := _ATX_H1.match(lines[i]):
        return match.group(1).strip() or None
    is_setext = i + 1 < len(lines) and _SETEXT_H1.match(lines[i + 1])
    return lines[i].strip() or None if is_setext else None


def _front_matter_end(lines: list[str]) -> int:
    if not lines or lines[0].strip() != "---":
        return 0
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return i + 1
    return 0


def _rst_title(lines: list[str]) -> str | None:
    """First unindented text line underlined with an adornment (``===``, ``---``, ...)."""
    for line, below in itertools.pairwise(lines):
        is_text = bool(line.strip()) and not line[0].isspace() and not _RST_ADORNMENT.match(line)
        if is_text and _RST_ADORNMENT.match(below):
            return line.strip()
    return None


# --------------------------------------------------------------------------- path selection


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch-style glob on POSIX relpaths: ``*`` stays in one folder, ``**`` spans
    folders, and ``**/`` may match no folder at all so ``**/*.md`` matches ``a.md``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            piece, i = _glob_piece(pattern, i)
            out.append(piece)
    return re.compile("".join(out), re.DOTALL)


def _glob_piece(pattern: str, i: int) -> tuple[str, int]:
    char = pattern[i]
    if char == "*":
        return "[^/]*", i + 1
    if char == "?":
        return "[^/]", i + 1
    end = pattern.find("]", i + 2)
    if char != "[" or end == -1:
        return re.escape(char), i + 1
    body = pattern[i + 1 : end].replace("\\", "\\\\")
    body = "^/" + body[1:] if body.startswith("!") else body
    return f"[{body}]", end + 1


class _PathFilter:
    """Include/exclude decisions, plus which folders need not be entered at all."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._include = [_glob_regex(p) for p in include]
        self._exclude = [_glob_regex(p) for p in exclude]
        # A folder matching the head of an ``X/**`` exclude holds only excluded paths.
        self._prune = [_glob_regex(p[:-3]) for p in exclude if p.endswith("/**")]

    def wants(self, relpath: str) -> bool:
        return any(r.fullmatch(relpath) for r in self._include) and not any(
            r.fullmatch(relpath) for r in self._exclude
        )

    def prunes(self, reldir: str) -> bool:
        return any(r.fullmatch(reldir) for r in self._prune)


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class Change:
    """One thing the runner must index, then record in the checkpoint.

    ``event`` None is a checkpoint-only update (touched, not edited); ``state`` None is a
    deletion. The runner applies ``state`` only after ``event`` is durably indexed.
    """

    event: ChangeEvent | None
    relpath: str
    state: FileState | None


@dataclass
class ScanReport:
    """Counts for one scan, so an operator can see why a file is not in the index."""

    unchanged: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)


class FilesystemSource:
    """Initial scan and incremental rescans of one directory tree."""

    def __init__(
        self,
        root: Path,
        *,
        source: str = "fs",
        include: Sequence[str] = DEFAULT_INCLUDE,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        max_bytes: int = 2_000_000,
    ) -> None:
        self.root = Path(root)
        self.source = source
        self.max_bytes = max_bytes
        self._filter = _PathFilter(include, exclude)

    def scan(self, checkpoint: Checkpoint, report: ScanReport) -> Iterator[Change]:
        """Yield the changes since ``checkpoint``, files in sorted relpath order, then deletes.

        Raises :class:`ConfigError` when the root is not a directory: treating an unmounted
        volume as "every file deleted" would wipe the index.
        """
        if not self.root.is_dir():
            raise ConfigError(f"filesystem source root {self.root} is not a directory")
        files, blind = self._list_files(report)
        seen: set[str] = set()
        for relpath in files:
            present, change = self._visit(relpath, checkpoint.get(relpath), report)
            if present:
                seen.add(relpath)
            if change is not None:
                yield change
        yield from self._deletions(checkpoint, seen, blind)

    def count_candidates(self) -> int:
        """How many files a scan will consider: the total behind a progress bar's ETA."""
        if not self.root.is_dir():
            return 0
        return len(self._list_files(ScanReport())[0])

    # -- walking

    def _list_files(self, report: ScanReport) -> tuple[list[str], list[str]]:
        """Included file relpaths (sorted) and the folders that could not be listed."""
        files: list[str] = []
        blind: list[str] = []
        pending = [""]
        while pending:
            reldir = pending.pop()
            try:
                with os.scandir(self.root / reldir) as listing:
                    entries = list(listing)
            except OSError as exc:
                blind.append(reldir)
                self._skip(report, reldir or ".", "unreadable", exc)
                continue
            for entry in entries:
                relpath = f"{reldir}/{entry.name}" if reldir else entry.name
                if _is_real_dir(entry):
                    if not self._filter.prunes(relpath):
                        pending.append(relpath)
                elif _is_file(entry) and self._filter.wants(relpath):
                    files.append(relpath)
        return sorted(files), blind

    def _deletions(self, checkpoint: Checkpoint, seen: set[str], blind: list[str]) -> Iterator[Change]:
        """Known files not seen this scan; those under an unlistable folder are not known
        to be gone, so they are kept rather than deleted on a transient error."""
        for relpath in sorted(checkpoint.paths() - seen):
            last = checkpoint.get(relpath)
            if last is not None and not _is_under(relpath, blind):
                version = max(time.time_ns(), last.mtime_ns + 1)
                yield Change(self._delete_event(relpath, version), relpath, None)

    # -- one file

    def _visit(self, relpath: str, last: FileState | None, report: ScanReport) -> tuple[bool, Change | None]:
        """``(still present, change)`` for one listed file."""
        try:
            stat = (self.root / relpath).stat()
            if last is not None and (last.mtime_ns, last.size) == (stat.st_mtime_ns, stat.st_size):
                report.unchanged += 1
                return True, None
            return True, self._read_change(relpath, stat, last, report)
        except FileNotFoundError:  # vanished since listing: the deletion pass handles it
            return False, None
        except OSError as exc:
            self._skip(report, relpath, "unreadable", exc)
        except _SkipFileError as skip:
            self._skip(report, relpath, skip.reason)
        return True, None

    def _read_change(
        self, relpath: str, stat: os.stat_result, last: FileState | None, report: ScanReport
    ) -> Change | None:
        ext = PurePosixPath(relpath).suffix.lower()
        text, title = self._extract(relpath, stat.st_size, ext)
        if not text:
            if last is None:
                raise _SkipFileError("empty")
            version = max(stat.st_mtime_ns, last.mtime_ns + 1)
            return Change(self._delete_event(relpath, version), relpath, None)
        state = FileState(stat.st_mtime_ns, stat.st_size, content_hash(text))
        if last is not None and last.content_hash == state.content_hash:
            report.unchanged += 1
            return Change(None, relpath, state)
        title = title or PurePosixPath(relpath).stem
        return Change(self._upsert_event(relpath, text, state, title, ext), relpath, state)

    def _extract(self, relpath: str, size: int, ext: str) -> tuple[str, str | None]:
        """Normalized text and title; the size is checked before reading a single byte."""
        if size > self.max_bytes:
            raise _SkipFileError("too_large")
        with (self.root / relpath).open("rb") as handle:
            raw = handle.read(self.max_bytes + 1)  # the file may have grown since stat
        if len(raw) > self.max_bytes:
            raise _SkipFileError("too_large")
        decoded = _decode(raw)
        if ext in _HTML_EXTS:
            try:
                return html_to_text(decoded)
            except AssertionError:  # older html.parser's signal for markup it cannot parse
                raise _SkipFileError("undecodable") from None
        text = normalize_text(decoded)
        return text, title_of(text, ext)

    def _upsert_event(self, relpath: str, text: str, state: FileState, title: str, ext: str) -> ChangeEvent:
        return ChangeEvent(
            source=self.source,
            doc_id=relpath,
            op="upsert",
            text=text,
            version=state.mtime_ns,
            content_hash=state.content_hash,
            metadata={"path": relpath, "title": title, "ext": ext, "bytes": state.size},
        )

    def _delete_event(self, relpath: str, version: int) -> ChangeEvent:
        return ChangeEvent(
            source=self.source, doc_id=relpath, op="delete", version=version, metadata={"path": relpath}
        )

    @staticmethod
    def _skip(report: ScanReport, relpath: str, reason: str, exc: OSError | None = None) -> None:
        report.skipped[reason] += 1
        detail = f" ({exc})" if exc is not None else ""
        _log.info("skipping %s: %s%s", relpath, reason, detail)


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    """Directory symlinks are not entered: they can loop or leave the root."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Regular files, including symlinks to them; broken links and sockets are ignored."""
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def _is_under(relpath: str, folders: list[str]) -> bool:
    return any(folder == "" or relpath.startswith(f"{folder}/") for folder in folders)
