"""Filesystem source: a directory of text documents as a stream of ``ChangeEvent`` s.

A pass walks the tree and compares every file with a persisted :class:`Checkpoint`. The
cheap ``(mtime_ns, size)`` check comes first so an unchanged tree is never read; only files
whose stat changed (or whose last read was racy, see :data:`RACY_NS`) are read, decoded and
hashed, and only a changed content hash becomes an upsert. Files that were in the
checkpoint but are gone (or now excluded, or no longer indexable) become deletes.

Versions are owned here: a document's version is its mtime, but never at or below the last
version this source emitted for it, deletions included (tombstones stay in the checkpoint).
So renaming a file away and back, or restoring an older copy (``cp -p``, ``rsync -a``,
``tar x``), outranks the deletion it follows.

The pass never writes the checkpoint itself. It yields :class:`Change` s carrying the state
to record, and the runner commits them only after the event is durably indexed: a crash in
between re-emits the change on the next pass (harmless, the sink is idempotent) instead of
silently losing it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.core.files import atomic_write
from pipeline.core.hashing import content_hash, is_utf8, normalize_text
from pipeline.sources import Change, PassReport, next_version

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "RACY_NS",
    "TEXT_EXTENSIONS",
    "Checkpoint",
    "FileState",
    "FilesystemSource",
    "html_to_text",
    "title_of",
]

_log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".text")
DEFAULT_INCLUDE: tuple[str, ...] = tuple(f"*{ext}" for ext in TEXT_EXTENSIONS)
# Any hidden path part: keeps our own ``.embedstream/`` state and ``.git/`` out of the index.
DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "**/.*/**")
#: A file modified this close to the moment it was read may change again within the same
#: timestamp tick (coarse filesystems: 1-2 s), invisibly to an (mtime, size) check; git's
#: "racy" rule: such a file is read and hashed again on the next pass.
RACY_NS = 2_000_000_000

_HTML_EXTS = frozenset({".html", ".htm"})
_MARKDOWN_EXTS = frozenset({".md", ".markdown", ".txt", ".text"})
_SNIFF_BYTES = 8192  # same window git uses to call a file binary
_CHECKPOINT_FORMAT = 2


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class FileState:
    """What the index reflects for one file: enough to skip it without reading it, and the
    last version emitted for it. A tombstone (``deleted``) keeps only the version."""

    mtime_ns: int
    size: int
    content_hash: str
    version: int
    deleted: bool = False
    racy: bool = False

    @classmethod
    def tombstone(cls, version: int) -> FileState:
        return cls(0, -1, "", version, deleted=True)


class Checkpoint:
    """The persisted map relpath -> :class:`FileState` for one source name."""

    def __init__(self, states: dict[str, FileState] | None = None) -> None:
        self._states: dict[str, FileState] = dict(states or {})

    def get(self, relpath: str) -> FileState | None:
        return self._states.get(relpath)

    def live(self) -> set[str]:
        return {rel for rel, state in self._states.items() if not state.deleted}

    def apply(self, change: Change) -> None:
        """Record a change once it is durably indexed."""
        if isinstance(change.state, FileState):
            self._states[change.doc_id] = change.state

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Missing or corrupt -> empty: the worst case is one full re-scan, never a crash
        (the index itself still knows every document's version and points)."""
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
        files = {rel: asdict(state) for rel, state in sorted(self._states.items())}
        body = json.dumps({"format": _CHECKPOINT_FORMAT, "files": files}, ensure_ascii=False)
        atomic_write(path, body.encode("utf-8"))


def _states_from_json(doc: object) -> dict[str, FileState]:
    if not isinstance(doc, dict) or doc.get("format") not in (1, _CHECKPOINT_FORMAT):
        raise ValueError("not an embedstream filesystem checkpoint")
    files = doc["files"]
    if not isinstance(files, dict):
        raise TypeError("'files' is not an object")
    return {str(rel): _state_from_json(entry) for rel, entry in files.items()}


def _state_from_json(entry: object) -> FileState:
    if not isinstance(entry, dict):
        raise TypeError("file entry is not an object")
    mtime_ns, size, digest = entry["mtime_ns"], entry["size"], entry["content_hash"]
    version: object = entry.get("version", mtime_ns)  # format 1 versions were the mtime
    flags = (entry.get("deleted", False), entry.get("racy", False))
    ints_ok = all(type(v) is int for v in (mtime_ns, size, version))
    if not ints_ok or not isinstance(digest, str) or not all(type(f) is bool for f in flags):
        raise TypeError("file entry has wrong field types")
    assert isinstance(version, int)
    return FileState(mtime_ns, size, digest, version, *flags)


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
    """gitignore-style glob on POSIX relpaths: a pattern without a ``/`` matches at any
    depth (``*.md`` is ``**/*.md``), a leading ``/`` anchors at the root; ``*`` stays in
    one folder, ``**`` spans folders, and ``**/`` may match no folder at all."""
    if "/" not in pattern:
        pattern = f"**/{pattern}"
    pattern = pattern.removeprefix("/")
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

    def excludes(self, relpath: str) -> bool:
        return any(r.fullmatch(relpath) for r in self._exclude)

    def includes(self, relpath: str) -> bool:
        return any(r.fullmatch(relpath) for r in self._include)

    def prunes(self, reldir: str) -> bool:
        return any(r.fullmatch(reldir) for r in self._prune)


# --------------------------------------------------------------------------- the source


class FilesystemSource:
    """One directory tree as a :class:`pipeline.sources.Source`: passes, checkpoint, versions."""

    def __init__(
        self,
        root: Path,
        checkpoint: Path,
        *,
        name: str = "fs",
        include: Sequence[str] = DEFAULT_INCLUDE,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        max_bytes: int = 2_000_000,
        follow_symlinks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.follow_symlinks = follow_symlinks
        self._name = name
        self._filter = _PathFilter(include, exclude)
        self._checkpoint_path = checkpoint
        self._checkpoint = Checkpoint.load(checkpoint)
        self._seen: set[str] | None = None  # set by a complete, fully listed pass

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        return f"fs:{self.root.resolve()}"

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    def changes(self, report: PassReport) -> Iterator[Change]:
        """The changes since the checkpoint: files in sorted relpath order, then deletions.

        Raises :class:`ConfigError` when the root is not a directory: treating an unmounted
        volume as "every file deleted" would wipe the index.
        """
        if not self.root.is_dir():
            raise ConfigError(f"filesystem source root {self.root} is not a directory")
        self._seen = None
        files, blind = self._list_files(report)
        seen: set[str] = set()
        for relpath in files:
            present, change = self._visit(relpath, self._checkpoint.get(relpath), report)
            if present:
                seen.add(relpath)
            if change is not None:
                yield change
        yield from self._deletions(seen, blind)
        self._seen = None if blind else seen

    def commit(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for change in changes:
            self._checkpoint.apply(change)
        self._checkpoint.save(self._checkpoint_path)

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        """Deletions for documents the index holds that the last complete pass did not see
        (a lost checkpoint, a folder renamed and --rebind, a crash before a checkpoint)."""
        if self._seen is None:
            return []
        return [
            self._deletion(doc_id, version + 1)
            for doc_id, version in sorted(indexed.items())
            if doc_id not in self._seen
        ]

    def estimate(self) -> int | None:
        """How many files a pass will consider: the total behind a progress bar's ETA."""
        if not self.root.is_dir():
            return None
        return len(self._list_files(PassReport())[0])

    # -- walking

    def _list_files(self, report: PassReport) -> tuple[list[str], list[str]]:
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
                report.skip("unreadable", reldir or ".", str(exc))
                continue
            for entry in entries:
                relpath = f"{reldir}/{entry.name}" if reldir else entry.name
                if _is_real_dir(entry):
                    if not self._filter.prunes(relpath):
                        pending.append(relpath)
                elif _is_file(entry):
                    reason = self._rejects(entry, relpath)
                    if reason is None:
                        files.append(relpath)
                    elif reason:
                        report.skip(reason, ascii(relpath))
        return sorted(files), blind

    def _rejects(self, entry: os.DirEntry[str], relpath: str) -> str | None:
        """Why a listed file is not indexed: a reason to report, "" to pass over silently
        (excluded on purpose), None to index it."""
        if self._filter.excludes(relpath):
            return ""
        if not self._filter.includes(relpath):
            return "unsupported"
        if not is_utf8(relpath):
            # Keys and events are UTF-8; a name that is not cannot be one, losslessly.
            return "undecodable_name"
        if not self.follow_symlinks and entry.is_symlink() and not self._inside_root(entry.path):
            return "symlink_outside_root"
        return None

    def _inside_root(self, path: str) -> bool:
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except (ValueError, OSError):
            return False
        return True

    def _deletions(self, seen: set[str], blind: list[str]) -> Iterator[Change]:
        """Known files not seen this pass; those under an unlistable folder are not known
        to be gone, so they are kept rather than deleted on a transient error."""
        for relpath in sorted(self._checkpoint.live() - seen):
            last = self._checkpoint.get(relpath)
            if last is not None and not _is_under(relpath, blind):
                yield self._deletion(relpath, last.version + 1)

    def _deletion(self, relpath: str, natural: int) -> Change:
        last = self._checkpoint.get(relpath)
        version = next_version(natural, last.version if last is not None else None)
        event = ChangeEvent(
            source=self._name, doc_id=relpath, op="delete", version=version, metadata={"path": relpath}
        )
        return Change(event, relpath, FileState.tombstone(version))

    # -- one file

    def _visit(self, relpath: str, last: FileState | None, report: PassReport) -> tuple[bool, Change | None]:
        """``(still present, change)`` for one listed file."""
        try:
            stat = (self.root / relpath).stat()
            if (
                last is not None
                and not last.deleted
                and not last.racy
                and (last.mtime_ns, last.size) == (stat.st_mtime_ns, stat.st_size)
            ):
                report.unchanged += 1
                return True, None
            return True, self._read_change(relpath, stat, last, report)
        except FileNotFoundError:  # vanished since listing: the deletion pass handles it
            return False, None
        except OSError as exc:
            report.skip("unreadable", relpath, str(exc))
        except _SkipFileError as skip:
            report.skip(skip.reason, relpath)
            return self._unindexable(relpath, last)
        return True, None

    def _unindexable(self, relpath: str, last: FileState | None) -> tuple[bool, Change | None]:
        """A file that can no longer be indexed (binary, undecodable, too large, empty) loses
        its points; its tombstone is recorded without a stat, so every pass reads it again
        and it returns as soon as it can be indexed (say, after a limit is raised)."""
        if last is None or last.deleted:
            return True, None
        return True, self._deletion(relpath, last.version + 1)

    def _read_change(
        self, relpath: str, stat: os.stat_result, last: FileState | None, report: PassReport
    ) -> Change | None:
        ext = PurePosixPath(relpath).suffix.lower()
        read_at = time.time_ns()
        text, title = self._extract(relpath, stat.st_size, ext)
        if not text:
            raise _SkipFileError("empty")
        digest = content_hash(text)
        racy = stat.st_mtime_ns >= read_at - RACY_NS
        live = last if last is not None and not last.deleted else None
        if live is not None and live.content_hash == digest:
            report.unchanged += 1
            return Change(
                None, relpath, replace(live, mtime_ns=stat.st_mtime_ns, size=stat.st_size, racy=racy)
            )
        version = next_version(stat.st_mtime_ns, last.version if last is not None else None)
        state = FileState(stat.st_mtime_ns, stat.st_size, digest, version, racy=racy)
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
            source=self._name,
            doc_id=relpath,
            op="upsert",
            text=text,
            version=state.version,
            content_hash=state.content_hash,
            metadata={"path": relpath, "title": title, "ext": ext, "bytes": state.size},
        )


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
