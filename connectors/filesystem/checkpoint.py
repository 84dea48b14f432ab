"""What the filesystem source persists per file: :class:`FileState` s in a :class:`Checkpoint`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.files import atomic_write
from pipeline.sources import Change

__all__ = ["Checkpoint", "FileState"]

_log = logging.getLogger("connectors.filesystem")  # the package's logger, as before the split

_CHECKPOINT_FORMAT = 3  # 3 added "reserved"; 1 and 2 still load


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
    """The persisted map relpath -> :class:`FileState` for one source name, plus the
    versions reserved before publishing and not yet committed (see :meth:`reserve`)."""

    def __init__(
        self, states: dict[str, FileState] | None = None, reserved: dict[str, int] | None = None
    ) -> None:
        self._states: dict[str, FileState] = dict(states or {})
        self._reserved: dict[str, int] = dict(reserved or {})

    def get(self, relpath: str) -> FileState | None:
        return self._states.get(relpath)

    def live(self) -> set[str]:
        return {rel for rel, state in self._states.items() if not state.deleted}

    def floor(self, relpath: str) -> int | None:
        """The highest version of ``relpath`` that may have reached the index: the next one
        is numbered above it, whatever crashed between publishing and committing."""
        state = self._states.get(relpath)
        known = [v for v in (state.version if state else None, self._reserved.get(relpath)) if v is not None]
        return max(known) if known else None

    def unsettled(self) -> set[str]:
        """Files published at a version the checkpoint never recorded (a crash in between):
        the index may hold any of their versions, so no shortcut may call them unchanged."""
        return set(self._reserved)

    def reserve(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.event is not None:
                held = self._reserved.get(change.doc_id, change.event.version)
                self._reserved[change.doc_id] = max(held, change.event.version)

    def apply(self, change: Change) -> None:
        """Record a change once it is durably indexed."""
        if isinstance(change.state, FileState):
            self._states[change.doc_id] = change.state
            if self._reserved.get(change.doc_id, 0) <= change.state.version:
                self._reserved.pop(change.doc_id, None)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Missing or corrupt -> empty: the worst case is one full re-scan, never a crash
        (the index itself still knows every document's version and points)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(_states_from_json(doc), _reserved_from_json(doc))
        except (ValueError, TypeError, KeyError) as exc:
            _log.warning("checkpoint %s is corrupt (%s); starting from an empty one", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        """Write atomically (tmp + fsync + rename) so a crash leaves the old or the new file."""
        files = {rel: asdict(state) for rel, state in sorted(self._states.items())}
        reserved = dict(sorted(self._reserved.items()))
        body = json.dumps(
            {"format": _CHECKPOINT_FORMAT, "files": files, "reserved": reserved}, ensure_ascii=False
        )
        atomic_write(path, body.encode("utf-8"))


def _states_from_json(doc: object) -> dict[str, FileState]:
    if not isinstance(doc, dict) or doc.get("format") not in (1, 2, _CHECKPOINT_FORMAT):
        raise ValueError("not an embedstream filesystem checkpoint")
    files = doc["files"]
    if not isinstance(files, dict):
        raise TypeError("'files' is not an object")
    return {str(rel): _state_from_json(entry) for rel, entry in files.items()}


def _reserved_from_json(doc: dict[str, object]) -> dict[str, int]:
    reserved = doc.get("reserved", {})
    if not isinstance(reserved, dict) or not all(type(v) is int for v in reserved.values()):
        raise TypeError("'reserved' is not an object of integers")
    return {str(rel): version for rel, version in reserved.items()}


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
