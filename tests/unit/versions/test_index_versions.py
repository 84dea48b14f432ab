"""Index versions as data: their stored form, uint8 codes, and the control-topic registry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.bus import Outgoing
from pipeline.bus.memory import InMemoryBus
from pipeline.config.settings import IndexSettings, ModelSettings
from pipeline.core.errors import ConfigError, InvalidEvent
from pipeline.core.names import Topics
from pipeline.runtime.registry import (
    check_worker,
    claim_version,
    forget_version,
    publish_version,
    read_versions,
)
from pipeline.versions.spec import IndexVersion

TOPICS = Topics("t")


def version(number: int = 1, **settings: object) -> IndexVersion:
    model = ModelSettings(name="all-MiniLM-L6-v2", query_prefix="query: ")
    return IndexVersion.plan(IndexSettings(**settings), number, "m@1", 32, model=model, chunking=(64, 8))


def unit_rows(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_a_spec_written_before_versions_recorded_their_model_reads_back():
    """An older build's spec (no model, chunker, vectors source) loads with defaults; unknown keys go."""
    old = {
        "name": "docs", "version": 1, "fingerprint": "m@1", "full_dims": 32, "dims": 32,
        "datatype": "float32", "quantization": "int8", "oversampling": 2.0, "rescore": True,
        "written_by_a_newer_build": 1,
    }  # fmt: skip
    loaded = IndexVersion.from_json(old)
    assert (loaded.model, loaded.chunk_tokens, loaded.vectors_version) == ("", 0, 1)


def test_a_spec_round_trips_through_json():
    """Every field survives the store's and the control topic's JSON."""
    spec = version(2, datatype="uint8", quantization="product", dims=16)
    assert IndexVersion.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_uint8_codes_rank_like_the_cosine():
    """uint8 storage codes vectors as integers 1..255; Euclidean distance between codes maps back
    to the cosine closely enough that the nearest neighbours are the cosine's."""
    spec = version(datatype="uint8", quantization="none")
    vectors = unit_rows(200, 32)
    codes = spec.to_storage(vectors)
    assert codes.min() >= 1
    assert codes.max() <= 255
    assert np.array_equal(codes, np.rint(codes))
    query, query_code = vectors[:1], spec.to_storage(vectors[:1])
    distances = np.linalg.norm(codes - query_code, axis=1)
    similarities = np.array([spec.similarity(float(d)) for d in distances])
    cosines = (vectors @ query.T)[:, 0]
    assert np.abs(similarities - cosines).max() < 0.03
    assert list(np.argsort(-similarities)[:5]) == list(np.argsort(-cosines)[:5])


def test_float_scores_are_cosines_already():
    """Cosine collections answer similarities; only uint8 (Euclidean) scores are converted."""
    assert version().similarity(0.42) == 0.42


def test_matryoshka_truncation_then_uint8_codes():
    """dims cuts and renormalizes first, then codes: the stored vector has ``dims`` components."""
    spec = version(datatype="uint8", dims=16)
    assert spec.to_storage(unit_rows(3, 32)).shape == (3, 16)


def test_the_registry_keeps_the_latest_spec_per_version_and_forgets_dropped_ones():
    """The control topic is a table: specs by index and number; a tombstone removes a dropped version."""
    bus = InMemoryBus()
    first, second = version(1), version(2, quantization="binary")
    other_index = dataclasses.replace(version(1), name="other")
    for spec in (first, second, other_index):
        publish_version(bus, TOPICS, spec)
    assert read_versions(bus, TOPICS, "docs") == {1: first, 2: second}
    forget_version(bus, TOPICS, second)
    assert read_versions(bus, TOPICS, "docs") == {1: first}


def test_the_first_embed_worker_registers_version_one_and_later_ones_read_it():
    """Version 1 is claimed from the first worker's plan; a second claim returns the registered spec."""
    bus = InMemoryBus()
    first = claim_version(bus, TOPICS, "docs", 1, lambda: version(1))
    again = claim_version(bus, TOPICS, "docs", 1, lambda: version(1, quantization="binary"))
    assert again == first
    assert again.quantization == "int8"


def test_a_missing_later_version_is_not_invented():
    """Only `migrate start` creates versions above 1: a worker for an unknown one is a ConfigError."""
    with pytest.raises(ConfigError, match="migrate start"):
        claim_version(InMemoryBus(), TOPICS, "docs", 2, lambda: version(2))


def test_an_embed_worker_of_another_model_or_chunker_is_refused():
    """A worker whose fingerprint or chunker differs from the version's spec refuses, pointing at migrate."""
    spec = version(1)
    check_worker(spec, "m@1", (64, 8))
    with pytest.raises(
        ConfigError, match=r"model: docs@v1 was built with m@1, this worker runs other@2.*migrate start"
    ):
        check_worker(spec, "other@2", (64, 8))
    with pytest.raises(ConfigError, match="chunking"):
        check_worker(spec, "m@1", (128, 8))


def test_a_rebuild_version_has_no_embed_workers():
    """A version filled from another version's vectors refuses embed workers, naming the one to run."""
    rebuild = dataclasses.replace(version(2, quantization="binary"), vectors_from=1)
    with pytest.raises(ConfigError, match=r"embed --version 1"):
        check_worker(rebuild, "m@1", (64, 8))


def test_unreadable_specs_are_reported_by_key():
    """A record that is not a spec names its key instead of crashing with a bare JSON error."""
    bus = InMemoryBus()
    bus.producer().send([Outgoing(TOPICS.versions, "docs/v1", b"not json")])
    with pytest.raises(InvalidEvent, match="docs/v1"):
        read_versions(bus, TOPICS, "docs")
