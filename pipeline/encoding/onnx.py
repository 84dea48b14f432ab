"""The small-batch backend: ONNX Runtime on an export of the same model, cached on disk.

A one-shot ``index`` of a few changed chunks or a ``search`` should not pay ~6 s of
``import torch, transformers`` to encode a handful of texts. ONNX Runtime loads an exported
graph in a fraction of a second and gives torch's vectors (checked to 1e-5 when the graph
is built, re-checked on probe texts at every load). It is 0.72-0.77x torch's throughput on
large CPU batches, so torch keeps the bulk work.

The artefact is derived from the model files only: it lives under
``<state_dir>/models/<fingerprint>/`` (``model.onnx``, ``weights.bin``, ``meta.json``), is built with
torch (so only in a process that has loaded torch anyway), and is rebuilt when missing,
unreadable, or when its probe vectors no longer match what torch computed at build time.
Which backend encoded a vector is not part of the fingerprint: both give the same vectors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.core.events import Matrix, normalize_rows
from pipeline.core.files import atomic_write

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

FORMAT = 2
TOLERANCE = 1e-5  # max |onnx - torch| per vector component, on L2-normalized vectors
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WEIGHTS = "weights.bin"  # beside model.onnx
ABANDONED_AFTER_S = 3600
# Checked at every load: cheap (a few ms), and a damaged or foreign model.onnx fails them.
LOAD_PROBES = ("embedstream probe: is this still the model it was built from?", "a")
# Checked once when the artefact is built: lengths that pad, truncate and touch unicode.
BUILD_PROBES = (
    *LOAD_PROBES,
    "  Leading and trailing spaces, UPPER case, café, naïve, 東京  ",
    "Kafka consumer groups rebalance partitions when a member joins or leaves the group.",
    " ".join(["a long text that is truncated at the model's maximum length"] * 80),
)

Features = Callable[[Sequence[str]], dict[str, np.ndarray]]
#: ``deferred``: after a pass, the build is left to a background process or a later small call.
ArtefactState = Literal["missing", "refused", "deferred"]


class OnnxSession:
    """One ONNX Runtime session: padded token features in, L2-normalized float32 rows out."""

    def __init__(self, session: Any, inputs: Sequence[str]) -> None:
        self._session = session
        self.inputs = tuple(inputs)

    def run(self, features: dict[str, np.ndarray]) -> Matrix:
        feed = {name: features[name] for name in self.inputs}
        (output,) = self._session.run(None, feed)
        return normalize_rows(np.asarray(output, dtype=np.float32))


def artefact_dir(root: Path, fingerprint: str) -> Path:
    """One folder per model fingerprint; the name is made filesystem-safe."""
    return root / re.sub(r"[^A-Za-z0-9._@-]", "_", fingerprint)


def present(directory: Path, fingerprint: str) -> bool:
    """Whether an artefact (usable or refused) was built for ``fingerprint``: meta.json only,
    without importing ONNX Runtime or opening the model (a load checks it in full)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("fingerprint") == fingerprint


def load(directory: Path, fingerprint: str, features: Features) -> OnnxSession | ArtefactState:
    """The cached session, ``"missing"`` (build it) or ``"refused"`` (this model stays on torch)."""
    meta = _read_meta(directory, fingerprint)
    if meta is None:
        return "missing"
    if not meta.get("usable"):
        return "refused"
    try:
        return _open_checked(directory, meta, features)
    except Exception as exc:  # any failure to load means: rebuild it
        log.warning("the ONNX artefact in %s is unusable (%s); it will be rebuilt", directory, exc)
        return "missing"


def _open_checked(directory: Path, meta: dict[str, Any], features: Features) -> OnnxSession:
    model = directory / "model.onnx"
    if [model.stat().st_size, (directory / WEIGHTS).stat().st_size] != meta["bytes"]:
        raise ValueError("file sizes differ from meta.json")
    session = OnnxSession(_open_session(model, optimize=False), meta["inputs"])
    probes = session.run(features(meta["probes"]))
    if not agrees(probes, np.asarray(meta["expected"], dtype=np.float32)):
        raise ValueError("probe vectors differ from the ones recorded at build time")
    return session


def agrees(vectors: Matrix, reference: Matrix) -> bool:
    """Same shape and every component within ``TOLERANCE``."""
    return vectors.shape == reference.shape and bool(np.abs(vectors - reference).max() <= TOLERANCE)


def build(
    model: SentenceTransformer, directory: Path, fingerprint: str, features: Features
) -> OnnxSession | None:
    """Export ``model`` (on CPU, float32), check it against torch, and publish it atomically.

    Returns None when the export does not give torch's vectors (or cannot be made): that
    is recorded, so later processes keep this model on torch instead of retrying.
    """
    started = time.perf_counter()
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(directory.parent)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory.parent))
    try:
        session, meta = _export_and_check(model, work, fingerprint, features)
        atomic_write(work / "meta.json", json.dumps(meta).encode())
        _publish(work, directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 2)
    log.info("ONNX small-batch backend built", extra={"dir": str(directory), "seconds": seconds})
    return session


def _export_and_check(
    model: SentenceTransformer, work: Path, fingerprint: str, features: Features
) -> tuple[OnnxSession | None, dict[str, Any]]:
    import onnxruntime

    meta: dict[str, Any] = {"format": FORMAT, "fingerprint": fingerprint, "usable": False}
    meta["onnxruntime"] = onnxruntime.__version__
    inputs = _model_inputs(model)
    if inputs is None:
        return None, meta
    raw, optimized = work / "raw.onnx", work / "model.onnx"
    try:
        _export(model, inputs, raw)
        _open_session(raw, optimize=True, save_to=optimized)
    except Exception as exc:  # an architecture torch cannot export stays on torch
        log.warning("model %s cannot be exported to ONNX (%s); it stays on torch", fingerprint, exc)
        return None, meta
    raw.unlink()
    session = OnnxSession(_open_session(optimized, optimize=False), inputs)
    reference = model.encode(list(BUILD_PROBES), normalize_embeddings=True, convert_to_numpy=True)
    if not agrees(session.run(features(BUILD_PROBES)), np.asarray(reference, dtype=np.float32)):
        log.warning("the ONNX export of %s does not give torch's vectors; it stays on torch", fingerprint)
        optimized.unlink()
        (work / WEIGHTS).unlink()
        return None, meta
    expected = np.asarray(reference[: len(LOAD_PROBES)], dtype=np.float32)
    meta.update(
        usable=True, inputs=list(inputs), bytes=[optimized.stat().st_size, (work / WEIGHTS).stat().st_size],
        probes=list(LOAD_PROBES), expected=expected.tolist(),
    )  # fmt: skip
    return session, meta


def _model_inputs(model: SentenceTransformer) -> list[str] | None:
    """The token features the model reads, if they are all ones we know how to build."""
    features = model.preprocess(["probe"])
    names = [name for name, value in features.items() if hasattr(value, "shape")]
    if not names or any(name not in MODEL_INPUTS for name in names):
        log.warning("model inputs %s are not plain token features; the model stays on torch", names)
        return None
    return names


def _export(model: SentenceTransformer, inputs: Sequence[str], target: Path) -> None:
    import torch

    class Embed(torch.nn.Module):
        """Positional tensors in, the sentence embedding (every module of the model) out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(inputs, tensors, strict=True)))["sentence_embedding"]  # type: ignore[no-any-return]

    sample = model.preprocess(["an example sentence", "another, longer example sentence to pad"])
    args = tuple(sample[name].to("cpu") for name in inputs)
    axes = {name: {0: "batch", 1: "tokens"} for name in inputs}
    with warnings.catch_warnings(), torch.inference_mode(False):
        # The TorchScript exporter is the one that needs no onnxscript; it warns that it is legacy.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Embed().eval(), args, str(target), dynamo=False, input_names=list(inputs),
            output_names=["embedding"], opset_version=17,
            dynamic_axes={**axes, "embedding": {0: "batch"}},
        )  # fmt: skip


def _open_session(path: Path, optimize: bool, save_to: Path | None = None) -> Any:
    """Graph optimization happens once, at build (it costs ~0.3 s per load otherwise).

    EXTENDED fusions are portable across CPUs (unlike ALL's layout transforms); the ONNX
    Runtime version is recorded in meta.json and a different one rebuilds the artefact.
    The saved graph keeps its weights in a separate file (``WEIGHTS``), which loads in a
    third of the time of weights embedded in the protobuf (measured: 0.2 s against 0.6 s).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    level = onnxruntime.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_EXTENDED if optimize else level.ORT_DISABLE_ALL
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        config = "session.optimized_model_external_initializers_"
        options.add_session_config_entry(config + "file_name", WEIGHTS)
        options.add_session_config_entry(config + "min_size_in_bytes", "1024")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _read_meta(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    import onnxruntime

    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    current = {"format": FORMAT, "fingerprint": fingerprint, "onnxruntime": onnxruntime.__version__}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in current.items()):
        return None
    return meta


def _remove_abandoned(root: Path) -> None:
    """Builds killed half-way (Ctrl-C during a first search) leave ~90 MB behind: drop those
    older than an hour, which no live build can still be writing."""
    cutoff = time.time() - ABANDONED_AFTER_S
    for leftover in [*root.glob(".build-*"), *root.glob(".stale-*")]:
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)


def _publish(work: Path, directory: Path) -> None:
    """Replace ``directory`` with ``work`` in one rename; a concurrent builder's copy is as good."""
    stale = directory.with_name(f".stale-{work.name}")
    if directory.exists():
        directory.rename(stale)
    try:
        work.rename(directory)
    except OSError:  # another process published first: keep theirs
        log.info("another process published %s first", directory)
    shutil.rmtree(stale, ignore_errors=True)
