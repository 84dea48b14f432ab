"""The SQLite embedding cache shared by several worker processes on one host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.encoding.cache import SqliteEmbeddingCache

WRITER = """
import sys, numpy as np
from pipeline.encoding.cache import SqliteEmbeddingCache
cache = SqliteEmbeddingCache(sys.argv[1])
name = sys.argv[2]
for batch in range(40):
    vectors = {f"{name}-{batch}-{i}": np.full(4, batch, dtype=np.float32) for i in range(25)}
    cache.put_many("fp", vectors)
    assert len(cache.get_many("fp", list(vectors))) == 25
cache.close()
"""


def test_concurrent_workers_share_one_cache_file(tmp_path: Path):
    """Two processes writing at once both succeed, and each sees the other's vectors."""
    path = tmp_path / "cache.sqlite"
    SqliteEmbeddingCache(path).close()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    cache = SqliteEmbeddingCache(path)
    try:
        assert cache.count("fp") == 2 * 40 * 25
        found = cache.get_many("fp", ["a-39-0", "b-12-3"])
        assert np.array_equal(found["b-12-3"], np.full(4, 12, dtype=np.float32))
        assert cache.get_many("other-model", ["a-39-0"]) == {}
    finally:
        cache.close()
