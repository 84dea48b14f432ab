"""Which files of the tree a filesystem source indexes: include/exclude globs and the walk."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from connectors.filesystem.text import TEXT_EXTENSIONS
from pipeline.core.hashing import is_utf8
from pipeline.sources import PassReport

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_INCLUDE", "PathFilter", "is_under", "list_files"]

DEFAULT_INCLUDE: tuple[str, ...] = tuple(f"*{ext}" for ext in TEXT_EXTENSIONS)
# Any hidden path part: keeps our own ``.embedstream/`` state and ``.git/`` out of the index.
DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "**/.*/**")


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


class PathFilter:
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


def list_files(
    root: Path, selection: PathFilter, report: PassReport, *, follow_symlinks: bool
) -> tuple[list[str], list[str]]:
    """Included file relpaths (sorted) and the folders that could not be listed."""
    files: list[str] = []
    blind: list[str] = []
    pending = [""]
    while pending:
        reldir = pending.pop()
        try:
            with os.scandir(root / reldir) as listing:
                entries = list(listing)
        except OSError as exc:
            blind.append(reldir)
            report.skip("unreadable", reldir or ".", str(exc))
            continue
        for entry in entries:
            relpath = f"{reldir}/{entry.name}" if reldir else entry.name
            if _is_real_dir(entry):
                if not selection.prunes(relpath):
                    pending.append(relpath)
            elif _is_file(entry):
                reason = _rejects(entry, relpath, root, selection, follow_symlinks)
                if reason is None:
                    files.append(relpath)
                elif reason:
                    report.skip(reason, ascii(relpath))
    return sorted(files), blind


def _rejects(
    entry: os.DirEntry[str], relpath: str, root: Path, selection: PathFilter, follow_symlinks: bool
) -> str | None:
    """Why a listed file is not indexed: a reason to report, "" to pass over silently
    (excluded on purpose), None to index it."""
    if selection.excludes(relpath):
        return ""
    if not selection.includes(relpath):
        return "unsupported"
    if not is_utf8(relpath):
        # Keys and events are UTF-8; a name that is not cannot be one, losslessly.
        return "undecodable_name"
    if not follow_symlinks and entry.is_symlink() and not _inside_root(entry.path, root):
        return "symlink_outside_root"
    return None


def _inside_root(path: str, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


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


def is_under(relpath: str, folders: list[str]) -> bool:
    return any(folder == "" or relpath.startswith(f"{folder}/") for folder in folders)
