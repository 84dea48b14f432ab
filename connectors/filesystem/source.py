"""Filesystem source: a directory of text documents as a stream of ``ChangeEvent`` s.

A pass walks the tree and compares every file with a persisted :class:`Checkpoint`. The
cheap ``(mtime_ns, size)`` check comes first so an unchanged tree is never read; only files
whose stat changed (or whose last read was racy, see :data:`RACY_NS`) are read, decoded and
hashed, and only a changed content hash becomes an upsert. Files that were in the
checkpoint but are gone (or now excluded, or no longer indexable) become deletes.

Versions are owned here: a document's version is its mtime, but never at or below the last
version this source emitted for it, deletions included (tombstones stay in the checkpoint).
So renaming a file away and back, or restoring an older copy (``cp -p``, ``rsync -a``,
``tar x``), outranks the deletion it follows. "Emitted" includes versions reserved before
publishing and never committed (a crash in between): those files are read again, their next
version is above the reservation, and a reserved file that is gone gets a deletion.

The pass never writes the checkpoint itself. It yields :class:`Change` s carrying the state
to record, and the runner commits them only after the event is durably indexed: a crash in
between re-emits the change on the next pass (harmless, the sink is idempotent) instead of
silently losing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

from connectors.filesystem.checkpoint import Checkpoint, FileState
from connectors.filesystem.paths import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, PathFilter, is_under, list_files
from connectors.filesystem.text import SkipFileError, read_text
from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import content_hash
from pipeline.sources import Change, PassReport, next_version

__all__ = ["RACY_NS", "FilesystemSource"]

#: A file modified this close to the moment it was read may change again within the same
#: timestamp tick (coarse filesystems: 1-2 s), invisibly to an (mtime, size) check; git's
#: "racy" rule: such a file is read and hashed again on the next pass.
RACY_NS = 2_000_000_000


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
        self._filter = PathFilter(include, exclude)
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

    def reserve(self, changes: Sequence[Change]) -> None:
        self._checkpoint.reserve(changes)
        self._checkpoint.save(self._checkpoint_path)

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
            self._deletion(doc_id, version + 1)  # above the indexed version and the checkpoint
            for doc_id, version in sorted(indexed.items())
            if doc_id not in self._seen
        ]

    def documents(self, report: PassReport) -> Iterator[tuple[str, str]]:
        """Every indexable file's text, read now (the checkpoint is not consulted)."""
        for relpath in self._list_files(report)[0]:
            path = self.root / relpath
            try:
                text, _ = read_text(
                    path, path.stat().st_size, self.max_bytes, PurePosixPath(relpath).suffix.lower()
                )
            except FileNotFoundError:
                continue
            except OSError as exc:
                report.skip("unreadable", relpath, str(exc))
                continue
            except SkipFileError as skip:
                report.skip(skip.reason, relpath)
                continue
            if text:
                yield relpath, text

    def estimate(self) -> int | None:
        """How many files a pass will consider: the total behind a progress bar's ETA."""
        if not self.root.is_dir():
            return None
        return len(self._list_files(PassReport())[0])

    # -- walking

    def _list_files(self, report: PassReport) -> tuple[list[str], list[str]]:
        """Included file relpaths (sorted) and the folders that could not be listed."""
        return list_files(self.root, self._filter, report, follow_symlinks=self.follow_symlinks)

    def _deletions(self, seen: set[str], blind: list[str]) -> Iterator[Change]:
        """Known files not seen this pass; those under an unlistable folder are not known
        to be gone, so they are kept rather than deleted on a transient error."""
        for relpath in sorted((self._checkpoint.live() | self._checkpoint.unsettled()) - seen):
            if not is_under(relpath, blind):
                yield self._deletion(relpath)

    def _deletion(self, relpath: str, natural: int = 0) -> Change:
        version = next_version(natural, self._checkpoint.floor(relpath))
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
                and relpath not in self._checkpoint.unsettled()
            ):
                report.unchanged += 1
                return True, None
            return True, self._read_change(relpath, stat, last, report)
        except FileNotFoundError:  # vanished since listing: the deletion pass handles it
            return False, None
        except OSError as exc:
            report.skip("unreadable", relpath, str(exc))
        except SkipFileError as skip:
            report.skip(skip.reason, relpath)
            return self._unindexable(relpath, last)
        return True, None

    def _unindexable(self, relpath: str, last: FileState | None) -> tuple[bool, Change | None]:
        """A file that can no longer be indexed (binary, undecodable, too large, empty) loses
        its points; its tombstone is recorded without a stat, so every pass reads it again
        and it returns as soon as it can be indexed (say, after a limit is raised)."""
        if (last is None or last.deleted) and relpath not in self._checkpoint.unsettled():
            return True, None
        return True, self._deletion(relpath)

    def _read_change(
        self, relpath: str, stat: os.stat_result, last: FileState | None, report: PassReport
    ) -> Change | None:
        ext = PurePosixPath(relpath).suffix.lower()
        read_at = time.time_ns()
        text, title = read_text(self.root / relpath, stat.st_size, self.max_bytes, ext)
        if not text:
            raise SkipFileError("empty")
        digest = content_hash(text)
        racy = stat.st_mtime_ns >= read_at - RACY_NS
        live = last if last is not None and not last.deleted else None
        if live is not None and live.content_hash == digest and relpath not in self._checkpoint.unsettled():
            report.unchanged += 1
            return Change(
                None, relpath, replace(live, mtime_ns=stat.st_mtime_ns, size=stat.st_size, racy=racy)
            )
        version = next_version(stat.st_mtime_ns, self._checkpoint.floor(relpath))
        state = FileState(stat.st_mtime_ns, stat.st_size, digest, version, racy=racy)
        title = title or PurePosixPath(relpath).stem
        return Change(self._upsert_event(relpath, text, state, title, ext), relpath, state)

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
