"""The ``Encoder`` port and its sentence-transformers adapter.

The adapter is the only module that imports torch or sentence-transformers. The model is
loaded lazily: a re-index that finds every chunk in the cache never pays for it, and a call
of a few texts goes to the ONNX backend (``pipeline/encoding/onnx.py``) so that a one-shot
``search`` or small ``index`` never imports torch at all. Both give the same vectors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config.settings import ModelSettings
from pipeline.core.chunking import Span
from pipeline.core.errors import InvalidVectors, ModelNotAvailable
from pipeline.core.events import Matrix
from pipeline.encoding import onnx as onnx_encoder
from pipeline.encoding.model_files import (
    DigestMemo,
    configured_max_length,
    model_fingerprint,
    model_label,
    resolve_model_path,
)
from pipeline.encoding.onnx import MODEL_INPUTS, ArtefactState, OnnxSession
from pipeline.encoding.plan import (
    CPU_TOKEN_BUDGET,
    Device,
    activation_bytes_per_token,
    choose_device,
    choose_dtype,
    pad_features,
    pin_host_memory,
    token_batches,
    token_budget,
    use_small_backend,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def check_shape(matrix: Matrix, expected_rows: int) -> Matrix:
    """One row per text. Non-finite rows are left for the embed stage to dead-letter
    per document, so one bad text does not sink its whole batch."""
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise InvalidVectors(f"encoder returned shape {matrix.shape} for {expected_rows} texts")
    return matrix


class SentenceTransformerEncoder:
    """sentence-transformers for bulk work (CUDA in fp16 when present, else CPU), ONNX Runtime
    for small calls while torch is not loaded; everything is loaded on first use.

    ``state_dir`` is where the ONNX artefact is cached (``<state_dir>/models/``); without it
    every call runs on torch.
    """

    def __init__(self, settings: ModelSettings, state_dir: Path | None = None) -> None:
        self._settings = settings
        self._path = resolve_model_path(settings.name)
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._tokenizer = _load_tokenizer(self._path)
        self._specials = int(self._tokenizer.num_special_tokens_to_add(False))
        self._max_tokens = settings.max_seq_length or configured_max_length(self._path)
        models = state_dir / "models" if state_dir else None
        self._fingerprint = model_fingerprint(
            self._path, settings, self._max_tokens, label=model_label(settings.name, self._path),
            memo=DigestMemo(models / "digests.json" if models else None),
        )  # fmt: skip
        self._small_dir = onnx_encoder.artefact_dir(models, self._fingerprint) if models else None
        self._small: OnnxSession | ArtefactState | None = None  # None: not looked for yet
        self._budget = 0
        self._torch_inputs: list[str] = []  # set on CUDA: our overlapped loop feeds the model

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def path(self) -> Path:
        return self._path

    @property
    def token_budget(self) -> int:
        """Padded tokens per torch batch (known once the model is loaded)."""
        self._load()
        return self._budget

    @property
    def backend(self) -> str:
        """What encodes now: ``torch``, ``onnx``, or ``none`` before the first encode."""
        if self._model is not None:
            return "torch"
        return "onnx" if isinstance(self._small, OnnxSession) else "none"

    def offsets(self, text: str) -> list[Span]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(s), int(e)) for s, e in encoding.offsets]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [min(len(e.ids) + 2, self._max_tokens) for e in encodings]

    def encode_documents(self, texts: Sequence[str]) -> Matrix:
        prefix = self._settings.document_prefix
        return self._encode([prefix + t for t in texts])

    def encode_queries(self, texts: Sequence[str]) -> Matrix:
        prefix = self._settings.query_prefix
        return self._encode([prefix + t for t in texts])

    def prepare_small_backend(self) -> bool:
        """Build the ONNX artefact now if it is missing (loads torch); True when it is usable.

        Worth calling at the end of a run that loaded torch anyway (a first index): the
        next small update or search then starts fast instead of building it itself.
        """
        if self._small_dir is None:
            return False
        with self._lock:
            if self._small is None:
                self._small = onnx_encoder.load(self._small_dir, self._fingerprint, self.features)
        if self._small == "missing":
            self._build_small_backend(self._load())
        return isinstance(self._small, OnnxSession)

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Padded model inputs for ``texts``, exactly as sentence-transformers builds them."""
        return pad_features(self._model_encodings(texts), MODEL_INPUTS)

    def _encode(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        encodings = self._model_encodings(texts)
        lengths = [len(e.ids) for e in encodings]
        small_call = use_small_backend(sum(lengths), self._model is not None, self._small_dir is not None)
        session = self._small_session() if small_call else None
        if session is not None:
            return self._run_batches(session.run, encodings, lengths, session.inputs, CPU_TOKEN_BUDGET)
        model = self._load()
        if self._torch_inputs:
            batches = token_batches(lengths, self._budget)
            features = (pad_features([encodings[i] for i in b], self._torch_inputs) for b in batches)
            result = check_shape(_reassemble(batches, encode_overlapped(model, features)), len(texts))
        else:
            result = self._encode_with_st(model, texts, lengths)
        if small_call and self._small == "missing":
            self._build_small_backend(model)  # torch is loaded now: the one cheap moment to export
        return result

    def _encode_with_st(self, model: SentenceTransformer, texts: Sequence[str], lengths: list[int]) -> Matrix:
        batches = token_batches(lengths, self._budget)
        parts = [
            model.encode(
                [texts[i] for i in batch], batch_size=len(batch), normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
            for batch in batches
        ]  # fmt: skip
        return check_shape(_reassemble(batches, parts), len(texts))

    def _run_batches(
        self,
        run: Callable[[dict[str, np.ndarray]], Matrix],
        encodings: Sequence[Any],
        lengths: list[int],
        names: Sequence[str],
        budget: int,
    ) -> Matrix:
        batches = token_batches(lengths, budget)
        features = (pad_features([encodings[i] for i in batch], names) for batch in batches)
        return check_shape(_reassemble(batches, [run(f) for f in features]), len(encodings))

    def _model_encodings(self, texts: Sequence[str]) -> list[Any]:
        """Token ids with the model's special tokens, truncated to its length, unpadded."""
        room = max(self._max_tokens - self._specials, 1)
        encodings = []
        for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False):
            if len(encoding.ids) > room:
                encoding.truncate(room)
            encodings.append(self._tokenizer.post_process(encoding))
        return encodings

    def _small_session(self) -> OnnxSession | None:
        assert self._small_dir is not None
        with self._lock:
            if self._small is None:
                self._small = onnx_encoder.load(self._small_dir, self._fingerprint, self.features)
        return self._small if isinstance(self._small, OnnxSession) else None

    def _build_small_backend(self, model: SentenceTransformer) -> None:
        assert self._small_dir is not None
        log.info("building the ONNX backend for small calls (once per model and state dir)")
        try:
            on_cpu = model if model.device.type == "cpu" else _load_model(self._path, "cpu", self._max_tokens)
            built = onnx_encoder.build(on_cpu, self._small_dir, self._fingerprint, self.features)
        except Exception:  # the vectors are already computed; try again next time
            log.warning("could not build the ONNX backend; small calls stay on torch", exc_info=True)
            return
        self._small = built if built is not None else "refused"

    def load(self) -> SentenceTransformer:
        """The underlying model, loaded on first call (benchmarks share it)."""
        return self._load()

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                model = _load_model(self._path, self._settings.device, self._max_tokens)
                device: Device = "cuda" if model.device.type == "cuda" else "cpu"
                self._budget = token_budget(device, self._settings.token_budget, *_gpu_memory(model))
                # On CUDA, our own loop overlaps host work with the GPU; it needs our token
                # features to be exactly the ones sentence-transformers would build.
                self._torch_inputs = self._matching_inputs(model) if device == "cuda" else []
                self._model = model
            return self._model

    def _matching_inputs(self, model: SentenceTransformer) -> list[str]:
        """The model's input names if our features equal sentence-transformers' on the probes."""
        probes = list(onnx_encoder.BUILD_PROBES)
        theirs = model.preprocess(probes)
        ours = self.features(probes)
        names = [n for n, v in theirs.items() if hasattr(v, "shape")]
        same = all(n in ours and np.array_equal(theirs[n].cpu().numpy(), ours[n]) for n in names)
        return names if same and names else []


def _reassemble(batches: list[list[int]], parts: Sequence[Matrix]) -> Matrix:
    """Rows back in the callers' order (batches were sorted by length)."""
    merged = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
    result = np.empty_like(merged)
    result[[i for batch in batches for i in batch]] = merged
    return result


def encode_overlapped(
    model: SentenceTransformer,
    batches: Iterable[dict[str, np.ndarray]],
    depth: int = 2,
    pin: bool | None = None,
) -> list[Matrix]:
    """Run padded feature batches through ``model`` keeping ``depth`` batches in flight.

    On CUDA the forward pass and the device-to-host copy are queued asynchronously, so the
    host builds and copies the next batch (from page-locked memory) while the GPU computes
    this one; results are collected ``depth - 1`` batches behind. On CPU it is a plain loop.
    ``depth=1`` and ``pin`` exist for ops/bench/gpu.py to measure what each one buys.
    """
    import torch

    device = model.device
    pin = pin_host_memory("cuda" if device.type == "cuda" else "cpu") if pin is None else pin
    parts: list[Matrix] = []
    in_flight: list[tuple[torch.Tensor, Any]] = []
    with torch.inference_mode():
        for features in batches:
            inputs = {name: _to_device(torch.from_numpy(a), device, pin) for name, a in features.items()}
            vectors = torch.nn.functional.normalize(model(inputs)["sentence_embedding"].float(), p=2, dim=1)
            host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=pin)
            host.copy_(vectors, non_blocking=pin)
            done = torch.cuda.Event() if pin else None  # type: ignore[no-untyped-call]
            if done is not None:
                done.record()
            in_flight.append((host, done))
            if len(in_flight) >= depth:
                parts.append(_collect(*in_flight.pop(0)))
        parts.extend(_collect(host, done) for host, done in in_flight)
    return parts


def _to_device(tensor: Any, device: Any, pin: bool) -> Any:
    return tensor.pin_memory().to(device, non_blocking=True) if pin else tensor.to(device)


def _collect(host: Any, done: Any) -> Matrix:
    if done is not None:
        done.synchronize()
    return np.asarray(host.numpy(), dtype=np.float32)


def _gpu_memory(model: SentenceTransformer) -> tuple[int | None, int]:
    """(free bytes, activation bytes per token) on CUDA; (None, 0) elsewhere."""
    if model.device.type != "cuda":
        return None, 0
    import torch

    transformer: Any = model[0]
    config = transformer.auto_model.config
    free, _total = torch.cuda.mem_get_info(model.device)
    per_token = activation_bytes_per_token(
        int(model.max_seq_length or 512), int(config.hidden_size), int(config.num_attention_heads), "float16"
    )
    return int(free), per_token


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer as FastTokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        raise ModelNotAvailable(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = FastTokenizer.from_file(str(file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _load_model(path: Path, requested_device: str, max_tokens: int) -> SentenceTransformer:
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    device = choose_device(requested_device, torch.cuda.is_available())
    started = time.perf_counter()
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.max_seq_length = max_tokens
    if choose_dtype(device) == "float16":
        model.half()
    log.info(
        "model loaded",
        extra={"model": str(path), "device": device, "seconds": round(time.perf_counter() - started, 2)},
    )
    return model
