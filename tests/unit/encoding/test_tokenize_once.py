"""Each chunk is tokenized once (the chunker's ids reach the model), the model loads in the
background, the ONNX export stays out of a pass, and bf16 where the CPU has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import ModelSettings, Settings
from pipeline.core.chunking import Chunker, ChunkerConfig
from pipeline.core.hashing import normalize_text
from pipeline.encoding.plan import choose_dtype, cpu_has_bf16
from pipeline.encoding.token_ids import slices_are_exact
from pipeline.encoding.transformer import SentenceTransformerEncoder

TEXT = (
    """NAME-less page. The ls(1) command lists directory contents; it is internationalization-aware
and sorts entries alphabetically (by default) unless -t, -S or --sort=WORD is given.

OPTIONS
  -a, --all   do not ignore entries starting with "." — the café's naïve 東京 files, x86_64
  binaries and v1.2.3 tags included. A pathologically long word follows:
  supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidocious!

Exit status: 0 if OK, 1 if minor problems (e.g., cannot access subdirectory), 2 if serious trouble.
"""
    * 6
)


@pytest.fixture(scope="module")
def real() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(ModelSettings(compute_dtype="float32"))


def chunk_texts(encoder: SentenceTransformerEncoder, overlap: int) -> list[str]:
    chunker = Chunker(encoder, ChunkerConfig(max_tokens=48, overlap_tokens=overlap))
    return [c.text for c in chunker.chunk(normalize_text(TEXT))]


@pytest.mark.parametrize("overlap", [0, 12])
def test_the_chunkers_ids_are_the_chunks_own_tokenization(real: SentenceTransformerEncoder, overlap: int):
    texts = chunk_texts(real, overlap)
    remembered = {t: real._chunk_ids[t] for t in texts if t in real._chunk_ids}
    assert len(remembered) >= len(set(texts)) // 2, "most chunks start and end between words"
    for text, ids in remembered.items():
        assert list(ids) == real._tokenizer.encode(text, add_special_tokens=False).ids, text


def test_vectors_from_the_chunkers_ids_equal_plain_encode(real: SentenceTransformerEncoder):
    texts = chunk_texts(real, 12)
    before = dict(real.timings)
    vectors = real.encode_documents(texts)
    assert real.timings["reused_ids"] - before["reused_ids"] > 0
    assert real._torch_inputs, "sentence-transformers' preprocess is skipped on CPU too"
    plain = real.load().encode(texts, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    cosine = (vectors * plain).sum(axis=1)
    assert vectors.dtype == np.float32
    assert vectors.shape == plain.shape
    assert float(cosine.min()) >= 0.99999


def test_the_slice_check_refuses_a_byte_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(c): i for i, c in enumerate(range(33, 127))}
    bpe = Tokenizer(models.BPE(vocab={**vocab, "Ġ": len(vocab)}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert not slices_are_exact(bpe)


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no native bf16")
def test_bf16_vectors_stay_within_the_documented_tolerance(real: SentenceTransformerEncoder):
    texts = chunk_texts(real, 12)
    bf16 = SentenceTransformerEncoder(ModelSettings(compute_dtype="auto"))
    assert bf16.compute_dtype == "bfloat16"
    cosine = (bf16.encode_documents(texts) * real.encode_documents(texts)).sum(axis=1)
    assert bf16.encode_documents(texts).dtype == np.float32
    assert float(cosine.min()) >= 0.9999


def test_dtype_choice():
    assert choose_dtype("cpu", "auto", cpu_bf16=True) == "bfloat16"
    assert choose_dtype("cpu", "auto", cpu_bf16=False) == "float32"
    assert choose_dtype("cpu", "float32", cpu_bf16=True) == "float32"
    assert choose_dtype("cpu", "bfloat16") == "bfloat16"
    assert choose_dtype("cuda", "auto") == "float16"
    assert choose_dtype("cuda", "bfloat16") == "bfloat16"
    with pytest.raises(Exception, match="float16 needs CUDA"):
        choose_dtype("cpu", "float16")
    assert cpu_has_bf16("processor: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : fpu amx_bf16 amx_tile")
    assert not cpu_has_bf16("flags : fpu sse2 avx2 avx512f")
    assert not cpu_has_bf16("")


def test_compute_dtype_is_a_setting_and_not_in_the_fingerprint(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
):
    monkeypatch.setenv("EMBEDSTREAM_MODEL__COMPUTE_DTYPE", "bfloat16")
    assert Settings.load().model.compute_dtype == "bfloat16"
    prints = {
        SentenceTransformerEncoder(ModelSettings(name=str(tiny_model), compute_dtype=d)).fingerprint
        for d in ("auto", "float32", "bfloat16")
    }
    assert len(prints) == 1


def test_preload_loads_in_the_background_and_the_first_encode_waits(tiny_model: Path, tmp_path: Path):
    encoder = SentenceTransformerEncoder(ModelSettings(name=str(tiny_model)), state_dir=tmp_path)
    encoder.preload()
    assert encoder._loader is not None
    vectors = encoder.encode_documents(["some words to encode", "and more"])
    assert encoder.backend == "torch"
    assert vectors.shape[0] == 2
    assert encoder.timings["load_s"] > 0


def test_no_onnx_export_inside_a_pass(tiny_model: Path, tmp_path: Path):
    """A small first index that preloaded torch builds no artefact inline, and the CLI's
    prepare_small_backend after the pass does nothing (a small call builds it later)."""
    encoder = SentenceTransformerEncoder(ModelSettings(name=str(tiny_model)), state_dir=tmp_path)
    spawned: list[bool] = []
    encoder._spawn_builder = lambda: spawned.append(True)  # type: ignore[method-assign]
    encoder.preload()
    encoder.encode_documents(["a few words"])
    models = tmp_path / "models"
    assert not any(models.rglob("model.onnx"))
    encoder.after_pass()
    assert spawned == [True]  # a small call wanted it: built by a background process
    assert encoder.prepare_small_backend() is False
    assert not any(models.rglob("model.onnx"))


def test_a_large_pass_spawns_the_background_build_and_a_small_one_does_not(tiny_model: Path, tmp_path: Path):
    encoder = SentenceTransformerEncoder(ModelSettings(name=str(tiny_model)), state_dir=tmp_path)
    spawned: list[bool] = []
    encoder._spawn_builder = lambda: spawned.append(True)  # type: ignore[method-assign]
    encoder.load()
    encoder.encode_documents(["word " * 40] * 300)  # over SMALL_CALL_TOKENS: not a small call
    encoder.timings["torch_tokens"] = 10  # as if the pass were small
    encoder.after_pass()
    assert spawned == []
    big = SentenceTransformerEncoder(ModelSettings(name=str(tiny_model)), state_dir=tmp_path)
    big._spawn_builder = lambda: spawned.append(True)  # type: ignore[method-assign]
    big.load()
    big.timings["torch_tokens"] = 1_000_000
    big.after_pass()
    assert spawned == [True]


def test_the_background_builder_builds_the_artefact(tiny_model: Path, tmp_path: Path):
    from pipeline.encoding.transformer import _build_small_backend_main

    settings = ModelSettings(name=str(tiny_model))
    assert _build_small_backend_main(str(tmp_path), settings.model_dump_json()) == 0
    assert any((tmp_path / "models").rglob("model.onnx"))
