"""Pure helpers of the encoder adapter: shape checks, token-budget batching, the model fingerprint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import ModelSettings
from pipeline.core.errors import InvalidVectors
from pipeline.encoding import model_files
from pipeline.encoding.model_files import DigestMemo, model_fingerprint
from pipeline.encoding.plan import token_batches
from pipeline.encoding.transformer import check_shape


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


def fake_model_dir(root: Path) -> Path:
    """A sentence-transformers layout on disk: root transformer, pooling and a Dense module."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    files = {
        "modules.json": json.dumps(modules),
        "config.json": '{"hidden_size": 32}',
        "model.safetensors": "root weights",
        "tokenizer.json": "{}",
        "README.md": "model card",
        "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
        "2_Dense/config.json": '{"in_features": 32, "out_features": 16}',
        "2_Dense/model.safetensors": "dense weights",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def fingerprint_of(path: Path) -> str:
    return model_fingerprint(path, ModelSettings(), 128, label="m")


@pytest.mark.parametrize(
    "changed", ["2_Dense/model.safetensors", "2_Dense/config.json", "1_Pooling/config.json", "config.json"]
)
def test_fingerprint_covers_every_file_of_every_module(tmp_path, changed):
    """Two model folders that differ in any file of any listed module never share a fingerprint."""
    original = fake_model_dir(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    assert fingerprint_of(copy) == fingerprint_of(original)
    (copy / changed).write_text((copy / changed).read_text() + " changed")
    assert fingerprint_of(copy) != fingerprint_of(original)


def test_fingerprint_reads_module_folders_recursively(tmp_path):
    """A file nested below a module folder (weights in a sub-folder) is part of the fingerprint."""
    model = fake_model_dir(tmp_path / "a")
    before = fingerprint_of(model)
    (model / "2_Dense" / "extra").mkdir()
    (model / "2_Dense" / "extra" / "weights.bin").write_bytes(b"\x00\x01")
    assert fingerprint_of(model) != before


def test_fingerprint_ignores_the_model_card_and_hidden_files(tmp_path):
    """Re-saving a model card or a hub cache folder does not orphan the embedding cache."""
    model = fake_model_dir(tmp_path / "a")
    before = fingerprint_of(model)
    (model / "README.md").write_text("a new model card")
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("x")
    assert fingerprint_of(model) == before


def test_remembered_digests_give_the_same_fingerprint(tmp_path, monkeypatch):
    """A fingerprint computed from remembered file digests equals one computed from the bytes."""
    monkeypatch.setattr(model_files, "RACY_SECONDS", 0.0)
    model = fake_model_dir(tmp_path / "a")
    memo_file = tmp_path / "digests.json"
    first = model_fingerprint(model, ModelSettings(), 128, "m", DigestMemo(memo_file))
    assert memo_file.is_file()
    assert model_fingerprint(model, ModelSettings(), 128, "m", DigestMemo(memo_file)) == first
    assert fingerprint_of(model) == first


def test_a_rewritten_file_is_hashed_again_even_with_its_old_mtime(tmp_path, monkeypatch):
    """New bytes of the same size with the old mtime restored still change the digest (ctime moves)."""
    monkeypatch.setattr(model_files, "RACY_SECONDS", 0.0)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"A" * 64)
    before = weights.stat()
    memo_file = tmp_path / "digests.json"
    memo = DigestMemo(memo_file)
    old = memo.digest(weights)
    memo.save()
    weights.write_bytes(b"B" * 64)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert DigestMemo(memo_file).digest(weights) != old


def test_a_file_changed_just_now_is_not_remembered(tmp_path):
    """A file written within the racy window is hashed but not remembered: it may change again unseen."""
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"fresh")
    memo = DigestMemo(tmp_path / "digests.json")
    memo.digest(weights)
    memo.save()
    assert not (tmp_path / "digests.json").exists()


def test_abandoned_onnx_builds_are_removed_but_live_ones_kept(tmp_path):
    """A build killed half-way does not leave ~90 MB behind for good; one still running is untouched."""
    from pipeline.encoding.onnx import ABANDONED_AFTER_S, _remove_abandoned

    old, live = tmp_path / ".build-old", tmp_path / ".build-live"
    for folder in (old, live):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"x")
    past = old.stat().st_mtime - ABANDONED_AFTER_S - 60
    os.utime(old, (past, past))
    _remove_abandoned(tmp_path)
    assert not old.exists()
    assert live.exists()
