"""Storage form of an index version: Matryoshka truncation and renormalization."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.settings import IndexSettings
from pipeline.core.errors import ConfigError
from pipeline.versions.spec import IndexVersion


def version(dims: int | None) -> IndexVersion:
    return IndexVersion.plan(IndexSettings(dims=dims), 1, "m@abc", 32)


def test_full_dimension_is_stored_unchanged():
    """Without index.dims the encoder's vectors are stored as they are."""
    matrix = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    assert version(None).to_storage(matrix) is matrix
    assert version(None).collection == "docs__v1"
    assert version(None).docs_collection == "docs__v1__docs"


def test_truncation_keeps_the_prefix_and_renormalizes():
    """index.dims keeps the first dims components and rescales each row to unit length."""
    matrix = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    stored = version(16).to_storage(matrix)
    assert stored.shape == (4, 16)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)
    assert np.allclose(stored / stored[:, :1], matrix[:, :16] / matrix[:, :1], atol=1e-5)


def test_dims_larger_than_the_model_are_rejected():
    """Asking for more dimensions than the model produces is a configuration error."""
    with pytest.raises(ConfigError, match="exceeds"):
        version(64)
