"""The two-tier embedding cache (local SQLite first, the shared tier behind it), with an
in-memory stand-in for the Qdrant server's cache collections."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, FatalError, StoreUnavailable
from pipeline.encoding.cache import SqliteEmbeddingCache
from pipeline.encoding.shared_cache import (
    CHUNK_HASH,
    FINGERPRINT,
    CachePoint,
    SharedEmbeddingCache,
    TieredEmbeddingCache,
    cache_point_id,
)
from pipeline.runtime.adapters import open_cache
from pipeline.store.server import ServerStore

FP = "tiny@0123456789abcdef"
OTHER_FP = "tiny@fedcba9876543210"


class FakeCollections:
    """Cache collections in memory; ``down`` makes every call fail as an outage does."""

    def __init__(self) -> None:
        self.points: dict[str, dict[str, CachePoint]] = {}
        self.created: list[str] = []
        self.reads: list[tuple[str, int]] = []
        self.writes = 0
        self.down = False
        self.closed = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("Qdrant server: connection refused")

    def names(self) -> list[str]:
        self._check()
        return sorted(self.points)

    def create(self, name: str, dims: int) -> None:
        self._check()
        self.created.append(name)
        self.points.setdefault(name, {})

    def write(self, name: str, points: Mapping[str, CachePoint]) -> None:
        self._check()
        if name not in self.points:
            raise FatalError(f"Qdrant server answered 404: collection {name} not found")
        self.writes += 1
        self.points[name].update(points)

    def read(self, name: str, ids: Sequence[str]) -> dict[str, CachePoint]:
        self._check()
        self.reads.append((name, len(ids)))
        held = self.points.get(name, {})
        return {i: held[i] for i in ids if i in held}

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vec(seed: int, dims: int = 8) -> np.ndarray:
    """A vector that is not unit length: the shared tier must keep it as it is."""
    return np.random.default_rng(seed).normal(size=dims).astype(np.float32) * 3


@pytest.fixture
def server() -> FakeCollections:
    return FakeCollections()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def host(tmp_path: Path, name: str, server: FakeCollections, clock: Clock, **options) -> TieredEmbeddingCache:
    local = SqliteEmbeddingCache(tmp_path / name / "cache.sqlite")
    return TieredEmbeddingCache(local, SharedEmbeddingCache(server, "cache"), clock=clock, **options)


def test_a_vector_written_on_one_host_is_read_on_another_exactly(tmp_path, server, clock):
    a, b = host(tmp_path, "a", server, clock), host(tmp_path, "b", server, clock)
    vectors = {"h1": vec(1), "h2": vec(2)}
    a.put_many(FP, vectors)
    assert server.created == ["cache__8"]
    found = b.get_many(FP, ["h1", "h2", "h3"])
    assert set(found) == {"h1", "h2"}
    for key, vector in vectors.items():
        assert found[key].dtype == np.float32
        assert found[key].tobytes() == vector.tobytes()  # bit for bit, not normalized
    assert b.counts["shared_hits"] == 2


def test_points_are_keyed_by_fingerprint_and_hash(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    a.put_many(FP, {"h1": vec(1)})
    point_id = cache_point_id(FP, "h1")
    assert point_id == cache_point_id(FP, "h1") != cache_point_id(OTHER_FP, "h1")
    vector, payload = server.points["cache__8"][point_id]
    assert payload == {FINGERPRINT: FP, CHUNK_HASH: "h1"}
    assert vector == vec(1).tolist()
    # Another model never sees it, though the hash is the same.
    b = host(tmp_path, "b", server, clock)
    assert b.get_many(OTHER_FP, ["h1"]) == {}


def test_rewriting_the_same_chunk_is_idempotent(tmp_path, server, clock):
    a, b = host(tmp_path, "a", server, clock), host(tmp_path, "b", server, clock)
    a.put_many(FP, {"h1": vec(1)})
    b.put_many(FP, {"h1": vec(1)})
    assert len(server.points["cache__8"]) == 1


def test_the_local_tier_answers_first(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    a.put_many(FP, {"h1": vec(1)})
    server.reads.clear()
    assert set(a.get_many(FP, ["h1"])) == {"h1"}
    assert server.reads == []  # all found locally: the server is not asked


def test_only_the_local_misses_go_to_the_server_and_its_hits_fill_the_local_tier(tmp_path, server, clock):
    a, b = host(tmp_path, "a", server, clock), host(tmp_path, "b", server, clock)
    a.put_many(FP, {"h1": vec(1), "h2": vec(2)})
    b.put_many(FP, {"h3": vec(3)})
    server.reads.clear()
    assert set(b.get_many(FP, ["h1", "h2", "h3", "h1"])) == {"h1", "h2", "h3"}
    assert server.reads == [("cache__8", 2)]  # h1 and h2, once each
    server.down = True  # now b's own file holds all three
    assert set(b.get_many(FP, ["h1", "h2", "h3"])) == {"h1", "h2", "h3"}
    assert b.counts["shared_cache_read"] == 0


def test_a_point_whose_payload_is_not_its_key_is_not_used(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    a.put_many(FP, {"h1": vec(1)})
    point_id = cache_point_id(FP, "h1")
    vector, _ = server.points["cache__8"][point_id]
    server.points["cache__8"][point_id] = (vector, {FINGERPRINT: OTHER_FP, CHUNK_HASH: "h1"})
    b = host(tmp_path, "b", server, clock)
    assert b.get_many(FP, ["h1"]) == {}


def test_one_collection_per_dimension_found_without_a_write(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    a.put_many(FP, {"h1": vec(1, dims=8)})
    a.put_many(OTHER_FP, {"h1": vec(2, dims=16)})
    server.points["docs__v1"] = {}  # not a cache collection
    assert sorted(server.created) == ["cache__16", "cache__8"]
    b = host(tmp_path, "b", server, clock)  # knows nothing: looks in each cache collection
    assert b.get_many(OTHER_FP, ["h1"])["h1"].tobytes() == vec(2, dims=16).tobytes()
    assert {name for name, _ in server.reads} <= {"cache__8", "cache__16"}
    server.reads.clear()
    b.get_many(OTHER_FP, ["h9"])  # now it knows where that model lives
    assert server.reads == [("cache__16", 1)]


def test_a_collection_is_created_once_per_process(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    for seed in range(3):
        a.put_many(FP, {f"h{seed}": vec(seed)})
    assert server.created == ["cache__8"]
    assert server.writes == 3


def test_large_lookups_and_writes_are_batched(tmp_path, server, clock):
    a, b = host(tmp_path, "a", server, clock), host(tmp_path, "b", server, clock)
    vectors = {f"h{i}": vec(i) for i in range(1200)}
    a.put_many(FP, vectors)
    assert server.writes == 5  # 256 points per request
    server.reads.clear()
    assert len(b.get_many(FP, list(vectors))) == 1200
    assert [n for _, n in server.reads] == [500, 500, 200]


def test_an_outage_while_reading_falls_back_to_the_local_tier(tmp_path, server, clock, caplog):
    failures: list[str] = []
    a = host(tmp_path, "a", server, clock, on_failure=failures.append, pause_s=30)
    a.put_many(FP, {"h1": vec(1)})
    server.down = True
    with caplog.at_level("WARNING"):
        found = a.get_many(FP, ["h1", "h2"])
    assert set(found) == {"h1"}  # the caller encodes h2
    assert a.counts["shared_cache_read"] == 1
    assert failures == ["shared_cache_read"]
    assert "shared embedding cache lookup failed" in caplog.text
    # Left alone for a while: no call per batch to a server that is down.
    server.down = False
    server.reads.clear()
    assert set(a.get_many(FP, ["h1", "h2"])) == {"h1"}
    assert server.reads == []
    assert a.counts["shared_read_skipped"] == 1
    clock.now += 31
    b = host(tmp_path, "b", server, clock)
    b.put_many(FP, {"h2": vec(2)})
    assert set(a.get_many(FP, ["h1", "h2"])) == {"h1", "h2"}


def test_a_failed_shared_write_is_counted_not_raised(tmp_path, server, clock, caplog):
    failures: list[str] = []
    a = host(tmp_path, "a", server, clock, on_failure=failures.append)
    server.down = True
    with caplog.at_level("WARNING"):
        a.put_many(FP, {"h1": vec(1)})
    assert failures == ["shared_cache_write"]
    assert a.counts["shared_cache_write"] == 1
    assert "shared embedding cache write failed" in caplog.text
    assert set(a.get_many(FP, ["h1"])) == {"h1"}  # the local tier has it
    a.put_many(FP, {"h2": vec(2)})  # still paused: skipped, counted
    assert a.counts["shared_write_skipped"] == 1
    server.down = False
    clock.now += 31
    a.put_many(FP, {"h3": vec(3)})
    assert server.created == ["cache__8"]  # created once the server answered
    assert [p[CHUNK_HASH] for _, p in server.points["cache__8"].values()] == ["h3"]


def test_a_dropped_cache_collection_is_created_again(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock, pause_s=0)
    a.put_many(FP, {"h1": vec(1)})
    del server.points["cache__8"]  # someone dropped it: the next write answers 404
    a.put_many(FP, {"h2": vec(2)})
    assert a.counts["shared_cache_write"] == 1
    a.put_many(FP, {"h3": vec(3)})
    assert server.created == ["cache__8", "cache__8"]
    assert [p[CHUNK_HASH] for _, p in server.points["cache__8"].values()] == ["h3"]


def test_close_closes_both_tiers(tmp_path, server, clock):
    a = host(tmp_path, "a", server, clock)
    a.close()
    assert server.closed


def test_shared_cache_needs_a_server_url(tmp_path):
    settings = Settings.load(state_dir=tmp_path, cache={"shared": True})
    with pytest.raises(ConfigError, match=re.escape("cache.shared=true needs store.url")):
        open_cache(settings)


def test_shared_cache_is_off_by_default_and_on_from_the_environment(tmp_path, monkeypatch):
    # qdrant-client's local mode stands in for the server the URL names.
    local_mode = staticmethod(lambda _settings: ServerStore(location=":memory:"))
    monkeypatch.setattr(ServerStore, "from_settings", local_mode)
    assert isinstance(open_cache(Settings.load(state_dir=tmp_path)), SqliteEmbeddingCache)
    monkeypatch.setenv("EMBEDSTREAM_CACHE__SHARED", "true")
    monkeypatch.setenv("EMBEDSTREAM_STORE__URL", "http://127.0.0.1:9")
    settings = Settings.load(state_dir=tmp_path)
    assert settings.cache.shared
    assert settings.cache.collection_prefix == "embedstream_cache"
    cache = open_cache(settings)
    try:
        assert isinstance(cache, TieredEmbeddingCache)
    finally:
        cache.close()
