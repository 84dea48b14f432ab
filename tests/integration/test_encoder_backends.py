"""The encoder's two backends (torch for bulk, ONNX Runtime for small calls) on real models.

The tiny random model exercises every path in milliseconds; the slow tests repeat the
equality check on the real all-MiniLM-L6-v2 and run a fresh process to show that a small
call never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.settings import ModelSettings
from pipeline.encoding.batches import encode_overlapped
from pipeline.encoding.onnx import TOLERANCE, WEIGHTS, artefact_dir
from pipeline.encoding.plan import SMALL_CALL_TOKENS, pad_features
from pipeline.encoding.transformer import SentenceTransformerEncoder

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "Kafka consumer groups rebalance partitions when a member joins.",
    "The door sensor battery drains too fast in cold weather.",
    "short",
    "  spaces around, UPPER case and café  ",
]


def encoder(model: Path, state_dir: Path | None) -> SentenceTransformerEncoder:
    # float32: the ONNX backend agrees with torch to 1e-5 in float32; bf16 (the default on a CPU
    # with AMX/AVX512-BF16) is within cosine 0.9999 instead (tests/unit/encoding/test_tokenize_once.py).
    settings = ModelSettings(name=str(model), compute_dtype="float32")
    return SentenceTransformerEncoder(settings, state_dir=state_dir)


def torch_vectors(model: Path, texts: list[str]) -> np.ndarray:
    return encoder(model, None).encode_documents(texts)


@pytest.fixture
def prepared(tiny_model: Path, tmp_path: Path) -> Path:
    """A state dir whose ONNX artefact for the tiny model is built."""
    assert encoder(tiny_model, tmp_path).prepare_small_backend()
    return tmp_path


def test_small_call_uses_onnx_and_gives_torch_vectors(tiny_model, prepared):
    """With the artefact built, a small call never loads torch and matches torch within 1e-5."""
    fresh = encoder(tiny_model, prepared)
    vectors = fresh.encode_documents(TEXTS)
    assert fresh.backend == "onnx"
    np.testing.assert_allclose(vectors, torch_vectors(tiny_model, TEXTS), atol=TOLERANCE, rtol=0)


def test_first_small_call_builds_the_artefact_for_the_next_process(tiny_model, tmp_path):
    """Without an artefact the small call runs on torch, then builds it; the next one skips torch."""
    first = encoder(tiny_model, tmp_path)
    first.encode_queries(["where is the sensor"])
    assert first.backend == "torch"
    assert (artefact_dir(tmp_path / "models", first.fingerprint) / "model.onnx").is_file()
    second = encoder(tiny_model, tmp_path)
    second.encode_queries(["where is the sensor"])
    assert second.backend == "onnx"


def test_bulk_calls_run_on_torch(tiny_model, prepared):
    """A call over the small-call size goes to torch even when the ONNX backend is ready."""
    fresh = encoder(tiny_model, prepared)
    many = [f"document number {i} " + "word " * 100 for i in range(SMALL_CALL_TOKENS // 100)]
    fresh.encode_documents(many)
    assert fresh.backend == "torch"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "weights", "probes", "meta"])
def test_damaged_artefact_is_rebuilt(tiny_model, prepared, damage):
    """A truncated, foreign or mis-described artefact is never used: torch answers, then it is rebuilt."""
    folder = artefact_dir(prepared / "models", encoder(tiny_model, None).fingerprint)
    model_file, meta_file = folder / "model.onnx", folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    if damage == "truncate":
        model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    elif damage == "garbage":
        model_file.write_bytes(os.urandom(model_file.stat().st_size))
    elif damage == "weights":  # same size, other numbers: only the probe check can tell
        weights = folder / WEIGHTS
        weights.write_bytes(os.urandom(weights.stat().st_size))
    elif damage == "probes":
        meta["expected"] = (-np.asarray(meta["expected"])).tolist()
        meta_file.write_text(json.dumps(meta))
    else:
        meta_file.write_text("{not json")
    damaged = encoder(tiny_model, prepared)
    vectors = damaged.encode_documents(TEXTS)
    assert damaged.backend == "torch"
    np.testing.assert_allclose(vectors, torch_vectors(tiny_model, TEXTS), atol=TOLERANCE, rtol=0)
    rebuilt = encoder(tiny_model, prepared)
    rebuilt.encode_documents(TEXTS)
    assert rebuilt.backend == "onnx"


def test_backend_choice_does_not_change_the_fingerprint(tiny_model, prepared):
    """Cache keys and index versions stay valid whichever backend encoded."""
    with_onnx, torch_only = encoder(tiny_model, prepared), encoder(tiny_model, None)
    with_onnx.encode_documents(TEXTS)
    torch_only.encode_documents(TEXTS)
    assert (with_onnx.backend, torch_only.backend) == ("onnx", "torch")
    assert with_onnx.fingerprint == torch_only.fingerprint


def test_overlapped_loop_matches_sentence_transformers(tiny_model):
    """The CUDA loop (features built by us, two batches in flight) gives model.encode's vectors."""
    enc = encoder(tiny_model, None)
    model = enc.load()
    assert enc._matching_inputs(model)  # our token features equal sentence-transformers' own
    features = [enc.features(TEXTS[:2]), enc.features(TEXTS[2:])]
    ours = np.concatenate(encode_overlapped(model, features))
    theirs = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
    assert set(pad_features([], ["input_ids"])) == {"input_ids"}


def test_a_dense_module_with_other_weights_is_another_fingerprint(tiny_model, tmp_path):
    """Two models that differ only in a module sub-folder's weights give different vectors and
    different fingerprints, so the cache never serves one model's vectors to the other."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = SentenceTransformer(str(tiny_model), device="cpu")
        model.append(Dense(in_features=32, out_features=32))
        model.save(str(tmp_path / f"dense-{seed}"))
        folders.append(tmp_path / f"dense-{seed}")
    # Same configs, same root files, only 2_Dense/ weights differ.
    shutil.copy(folders[0] / "modules.json", folders[1] / "modules.json")
    one, two = encoder(folders[0], None), encoder(folders[1], None)
    assert not np.allclose(one.encode_documents(TEXTS), two.encode_documents(TEXTS))
    assert one.fingerprint != two.fingerprint


@pytest.mark.slow
def test_onnx_matches_torch_on_the_real_model(tmp_path):
    """On all-MiniLM-L6-v2 the ONNX backend's vectors equal torch's within 1e-5 on real text."""
    texts = [p.read_text()[:2000] for p in sorted((REPO / "examples" / "corpus").rglob("*.md"))]
    settings = ModelSettings(compute_dtype="float32")
    builder = SentenceTransformerEncoder(settings, state_dir=tmp_path)
    assert builder.prepare_small_backend()
    reference = builder.encode_documents(texts)  # torch is loaded: it serves this call
    fresh = SentenceTransformerEncoder(settings, state_dir=tmp_path)
    small = np.concatenate([fresh.encode_documents(texts[i : i + 4]) for i in range(0, len(texts), 4)])
    assert fresh.backend == "onnx"
    np.testing.assert_allclose(small, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_a_small_call_in_a_fresh_process_never_imports_torch(tiny_model, prepared):
    """The one-shot path (a search, a small index) encodes without importing torch or transformers."""
    script = (
        "import sys; from pathlib import Path\n"
        "from pipeline.encoding.transformer import SentenceTransformerEncoder\n"
        "from pipeline.config.settings import ModelSettings\n"
        f"settings = ModelSettings(name={str(tiny_model)!r})\n"
        f"e = SentenceTransformerEncoder(settings, state_dir=Path({str(prepared)!r}))\n"
        "e.encode_queries(['where is the sensor'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "print(e.backend, heavy)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "onnx []"


HEAVY_PROBE = """
import atexit, sys
heavy = ("torch", "transformers", "sentence_transformers")
atexit.register(lambda: print("HEAVY", [m for m in heavy if m in sys.modules], file=sys.stderr))
from pipeline.cli import main
sys.argv = ["embedstream", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_one_shot_cli_search_and_small_index_never_import_torch(tiny_model, tmp_path):
    """After the first index built the ONNX artefact, `embedstream search` and a small
    `embedstream index` run start to finish without importing torch or transformers."""
    folder, state = tmp_path / "docs", tmp_path / "state"
    folder.mkdir()
    (folder / "a.md").write_text("Door sensors report their battery level every hour.\n")
    common = ["--state-dir", str(state), "--model", str(tiny_model), "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", HEAVY_PROBE, *args, *common],
            capture_output=True, text=True, env=env, check=True, cwd=tmp_path,
        )  # fmt: skip
        return done.stderr.strip().splitlines()[-1]

    # A small first index: torch encodes it, a background process builds the artefact.
    cli("index", str(folder))
    deadline = time.monotonic() + 120
    while not any((state / "models").glob("*/meta.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (folder / "b.md").write_text("Consumer groups rebalance partitions when a member joins.\n")
    assert cli("index", str(folder)) == "HEAVY []"
    assert cli("search", "battery") == "HEAVY []"
