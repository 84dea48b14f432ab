"""Pure helpers of the encoder adapter: output shape checks and token-budget batching."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoder import check_shape, token_batches
from pipeline.errors import InvalidVectors


def test_non_finite_rows_pass_the_shape_check():
    """A NaN row is left for the embed stage to dead-letter per document, not the whole batch."""
    matrix = np.ones((3, 4), dtype=np.float32)
    matrix[1, 2] = np.nan
    assert check_shape(matrix, 3) is matrix


def test_wrong_row_count_is_invalid_vectors():
    """An encoder that returns fewer rows than texts is rejected as InvalidVectors."""
    with pytest.raises(InvalidVectors, match="shape"):
        check_shape(np.ones((2, 4), dtype=np.float32), 3)


def test_token_batches_respect_the_budget_and_cover_every_text():
    """Batches sorted by length never exceed count x longest > budget, and lose no text."""
    lengths = [5, 250, 30, 120, 7, 250, 64, 3]
    batches = token_batches(lengths, budget=512)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 512
    assert batches[0][0] in (1, 5)  # longest first
