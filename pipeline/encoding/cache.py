"""The ``EmbeddingCache`` port and its SQLite adapter: the never-re-encode memory.

Keys are (model fingerprint, chunk hash), so identical chunks in different documents
share one vector and a changed model never sees an old one. SQLite in WAL mode lets
several embed workers on one host share the file; it survives restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.core.errors import ConfigError

Vector = np.ndarray[tuple[int], np.dtype[np.float32]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    fingerprint TEXT NOT NULL,
    chunk_hash  TEXT NOT NULL,
    vector      BLOB NOT NULL,
    PRIMARY KEY (fingerprint, chunk_hash)
) WITHOUT ROWID
"""
_LOOKUP_BATCH = 500  # below SQLite's host-parameter limit
_LOOKUP = "SELECT chunk_hash, vector FROM vectors WHERE fingerprint = ? AND chunk_hash IN ({marks})"
# SQLite's names for a file that is not, or no longer, a database it can read.
_DAMAGED = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


class EmbeddingCache(Protocol):
    def get_many(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, Vector]: ...

    def put_many(self, fingerprint: str, vectors: Mapping[str, Vector]) -> None: ...

    def close(self) -> None: ...


class SqliteEmbeddingCache:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            with self._lock, self._damage_is_config_error():
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(_SCHEMA)
                self._conn.commit()
        except ConfigError:
            self._conn.close()
            raise

    def get_many(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, Vector]:
        unique = list(dict.fromkeys(hashes))
        found: dict[str, Vector] = {}
        with self._lock, self._damage_is_config_error():
            for offset in range(0, len(unique), _LOOKUP_BATCH):
                part = unique[offset : offset + _LOOKUP_BATCH]
                marks = ",".join("?" * len(part))
                # Only "?" placeholders are interpolated; the values are bound by SQLite.
                query = _LOOKUP.format(marks=marks)
                rows = self._conn.execute(query, [fingerprint, *part])
                for chunk_hash, blob in rows:
                    found[chunk_hash] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def put_many(self, fingerprint: str, vectors: Mapping[str, Vector]) -> None:
        rows = [(fingerprint, h, np.asarray(v, dtype="<f4").tobytes()) for h, v in vectors.items()]
        with self._lock, self._damage_is_config_error():
            self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
            self._conn.commit()

    def count(self, fingerprint: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM vectors WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _damage_is_config_error(self) -> Iterator[None]:
        """A damaged file is the operator's to remove, not a bug: say which and why it is safe."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorname not in _DAMAGED:
                raise
            msg = (
                f"the embedding cache {self._path} is not a readable SQLite database ({exc}): "
                "delete it (and its -wal/-shm files) and run again; nothing is lost, its vectors "
                "are re-encoded"
            )
            raise ConfigError(msg) from exc
