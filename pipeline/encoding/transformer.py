"""The ``Encoder`` port and its sentence-transformers adapter.

The adapter is the only module that imports torch or sentence-transformers. The model is
loaded lazily: a re-index that finds every chunk in the cache never pays for it, and a call
of a few texts goes to the ONNX backend (``pipeline/encoding/onnx.py``) so that a one-shot
``search`` or small ``index`` never imports torch at all. Both give the same vectors.

Fixed costs stay off a first index's critical path: :meth:`SentenceTransformerEncoder.preload`
imports torch and builds the model in a background thread while the source is read and
chunked (the first encode waits for it), and the ONNX export is never built inside a pass
(:meth:`SentenceTransformerEncoder.after_pass`). Each chunk is tokenized once: the chunker's
tokenization of the whole document is sliced into each chunk's model inputs
(:meth:`SentenceTransformerEncoder.note_chunks`) where that gives exactly the ids the chunk's
own tokenization would, and those ids go to the model without sentence-transformers' own
``preprocess``.

The compute dtype (``model.compute_dtype``; bf16 autocast on CPUs with AMX-BF16 /
AVX512-BF16) is deliberately *not* part of the fingerprint: bf16 vectors agree with float32
ones to a cosine of at least 0.9999 (measured on the Debian manual pages, README
"Benchmarks"), the tolerance ``verify`` checks with (0.999), so a cache or an index written
by a bf16 host stays valid on a float32 host and the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config.settings import ModelSettings
from pipeline.core.chunking import Span
from pipeline.core.errors import InvalidVectors, ModelNotAvailable
from pipeline.core.events import Matrix
from pipeline.encoding import onnx as onnx_encoder
from pipeline.encoding.batches import autocast, encode_overlapped, gpu_memory, reassemble
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
    Dtype,
    choose_device,
    choose_dtype,
    cpu_has_bf16,
    pad_features,
    token_batches,
    token_budget,
    use_small_backend,
)
from pipeline.encoding.token_ids import TokenIds, slices_are_exact, special_template, token_slice

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

#: After a pass that encoded at least this many tokens on torch (a real first index), the
#: missing ONNX artefact is built by a detached, low-priority process once the pass has
#: returned; after a smaller one, by the first small call that needs it.
BACKGROUND_BUILD_TOKENS = 65_536
#: Chunk texts whose model inputs the chunker's tokenization already gave (least recently
#: used dropped first): enough for a few embed batches of chunks not yet in the cache.
CHUNK_IDS_MEMO = 32_768


def check_shape(matrix: Matrix, expected_rows: int) -> Matrix:
    """One row per text. Non-finite rows are left for the embed stage to dead-letter
    per document, so one bad text does not sink its whole batch."""
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise InvalidVectors(f"encoder returned shape {matrix.shape} for {expected_rows} texts")
    return matrix


class SentenceTransformerEncoder:
    """sentence-transformers for bulk work (CUDA in fp16 when present, else CPU, in bf16 where
    the CPU has it), ONNX Runtime for small calls while torch is not loaded; everything is
    loaded on first use, or in the background from :meth:`preload`.

    ``state_dir`` is where the ONNX artefact is cached (``<state_dir>/models/``); without it
    every call runs on torch.
    """

    def __init__(self, settings: ModelSettings, state_dir: Path | None = None) -> None:
        self._settings = settings
        self._state_dir = state_dir
        self._path = resolve_model_path(settings.name)
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()  # the small backend
        self._load_lock = threading.Lock()  # torch and the model
        self._loader: threading.Thread | None = None
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
        self._small_wanted = False  # a small call found no artefact while torch served it
        self._budget = 0
        self._compute: Dtype = "float32"
        self._torch_inputs: list[str] = []  # set when our features equal sentence-transformers'
        self._template = special_template(self._tokenizer) if slices_are_exact(self._tokenizer) else None
        self._document = threading.local()  # the last document offsets() tokenized, per thread
        self._chunk_ids: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ids_lock = threading.Lock()
        #: Seconds and counts a benchmark reads: model load (and how long an encode waited
        #: for it), tokenization, forward passes; chunks whose ids came from the chunker.
        self.timings: dict[str, float] = dict.fromkeys(
            ("load_s", "load_wait_s", "tokenize_s", "forward_s", "torch_tokens", "reused_ids", "tokenized"),
            0.0,
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

    @property
    def compute_dtype(self) -> Dtype:
        """The precision torch computes in (known once the model is loaded)."""
        self._load()
        return self._compute

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
        started = time.perf_counter()
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        self.timings["tokenize_s"] += time.perf_counter() - started
        self._document.last = (text, encoding)
        return [(int(s), int(e)) for s, e in encoding.offsets]

    def note_chunks(self, text: str, spans: Sequence[Span]) -> None:
        """The chunker cut ``text`` (the last one :meth:`offsets` tokenized) at ``spans``:
        remember each chunk's token ids, so encoding it does not tokenize it again.

        Only a span that starts and ends between two words of the tokenizer's pre-tokenizer
        is kept: there the slice of the document's ids is exactly the chunk's own
        tokenization (checked for this tokenizer at start, on
        :data:`pipeline.encoding.token_ids.SLICE_PROBE`; a chunk cut inside a word, as an
        overlap may start, is tokenized again when encoded).
        """
        last = getattr(self._document, "last", None)
        if self._template is None or self._settings.document_prefix or last is None or last[0] is not text:
            return
        encoding = last[1]
        ids = np.asarray(encoding.ids, dtype=np.int64)
        starts = [s for s, _ in encoding.offsets]
        ends = [e for _, e in encoding.offsets]
        kept = {}
        for start, end in spans:
            found = token_slice(starts, ends, encoding.word_ids, start, end)
            if found is not None:
                kept[text[start:end]] = ids[found[0] : found[1]]
        with self._ids_lock:
            for chunk, chunk_ids in kept.items():
                self._chunk_ids[chunk] = chunk_ids
                self._chunk_ids.move_to_end(chunk)
            while len(self._chunk_ids) > CHUNK_IDS_MEMO:
                self._chunk_ids.popitem(last=False)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [min(len(e.ids) + 2, self._max_tokens) for e in encodings]

    def encode_documents(self, texts: Sequence[str]) -> Matrix:
        return self._encode(texts, self._settings.document_prefix)

    def encode_queries(self, texts: Sequence[str]) -> Matrix:
        return self._encode(texts, self._settings.query_prefix, remembered=False)

    def preload(self) -> None:
        """Start importing torch and loading the model in a background thread; the first
        encode that needs torch waits for it. For a pass that will need the model anyway (a
        first index): the load then overlaps reading, chunking and hashing the source."""
        with self._lock:
            if self._model is not None or self._loader is not None:
                return
            self._loader = threading.Thread(target=self._background_load, name="model-load", daemon=True)
            self._loader.start()

    def _background_load(self) -> None:
        try:
            self._load(waited=False)
        except Exception:  # the encode that needs the model loads it again and raises
            log.debug("background model load failed", exc_info=True)

    def after_pass(self) -> None:
        """End of an index pass that loaded torch: the ONNX artefact is not built inside it.

        A later :meth:`prepare_small_backend` in this process does nothing. If the pass was
        large (a first index), a detached low-priority process builds the artefact now, so
        the next one-shot command finds it; after a small pass, the first small call that
        finds none builds it.
        """
        if self._small_dir is None or self._model is None:
            return
        with self._lock:
            if isinstance(self._small, OnnxSession) or self._small in ("refused", "deferred"):
                return
            present = onnx_encoder.present(self._small_dir, self._fingerprint)
            self._small = "deferred"
        if not present and (self._small_wanted or self.timings["torch_tokens"] >= BACKGROUND_BUILD_TOKENS):
            self._spawn_builder()

    def _spawn_builder(self) -> None:
        assert self._state_dir is not None
        command = [
            sys.executable, "-m", "pipeline.encoding.transformer", "build-small-backend",
            str(self._state_dir), self._settings.model_dump_json(),
        ]  # fmt: skip
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        env.setdefault("HF_HUB_OFFLINE", "1")
        try:
            subprocess.Popen(  # noqa: S603 - our own module, run by this interpreter
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env=env, close_fds=True,
            )  # fmt: skip
            log.info("building the ONNX backend for small calls in the background")
        except OSError:
            log.warning("could not start the ONNX backend build; a small call will build it", exc_info=True)

    def prepare_small_backend(self) -> bool:
        """Build the ONNX artefact now if it is missing (loads torch); True when it is usable.

        Does nothing (False) after :meth:`after_pass`, which keeps the build out of a pass.
        """
        if self._small_dir is None:
            return False
        with self._lock:
            if self._small == "deferred":
                return False
            if self._small is None:
                self._small = onnx_encoder.load(self._small_dir, self._fingerprint, self.features)
        if self._small == "missing":
            self._build_small_backend(self._load())
        return isinstance(self._small, OnnxSession)

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Padded model inputs for ``texts``, exactly as sentence-transformers builds them."""
        return pad_features(self._model_encodings(texts), MODEL_INPUTS)

    def _encode(self, texts: Sequence[str], prefix: str, remembered: bool = True) -> Matrix:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        prefixed = [prefix + t for t in texts] if prefix else list(texts)
        encodings = self._model_encodings(prefixed, remembered=remembered and not prefix)
        lengths = [len(e.ids) for e in encodings]
        small_call = use_small_backend(sum(lengths), self._model is not None, self._small_dir is not None)
        session = self._small_session() if small_call else None
        if session is not None:
            return self._run_batches(session.run, encodings, lengths, session.inputs, CPU_TOKEN_BUDGET)
        model = self._load()
        started = time.perf_counter()
        if self._torch_inputs:
            batches = token_batches(lengths, self._budget)
            features = (pad_features([encodings[i] for i in b], self._torch_inputs) for b in batches)
            parts = encode_overlapped(model, features, compute=self._compute)
            result = check_shape(reassemble(batches, parts), len(texts))
        else:
            result = self._encode_with_st(model, prefixed, lengths)
        self.timings["forward_s"] += time.perf_counter() - started
        self.timings["torch_tokens"] += sum(lengths)
        if small_call and self._small == "missing":
            self._small_wanted = True  # built after the pass (after_pass), or by the next small call
            if self._loader is None:  # not inside a pass that preloaded: the one cheap moment
                self._build_small_backend(model)
        return result

    def _encode_with_st(self, model: SentenceTransformer, texts: Sequence[str], lengths: list[int]) -> Matrix:
        batches = token_batches(lengths, self._budget)
        with autocast(model, self._compute):
            parts = [
                model.encode(
                    [texts[i] for i in batch], batch_size=len(batch), normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                )
                for batch in batches
            ]  # fmt: skip
        return check_shape(reassemble(batches, parts), len(texts))

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
        return check_shape(reassemble(batches, [run(f) for f in features]), len(encodings))

    def _model_encodings(self, texts: Sequence[str], remembered: bool = False) -> list[Any]:
        """Token ids with the model's special tokens, truncated to its length, unpadded:
        the chunker's ids where ``remembered`` and it left them, else tokenized here."""
        started = time.perf_counter()
        room = max(self._max_tokens - self._specials, 1)
        found: dict[int, Any] = {}
        if remembered and self._template is not None:
            head, tail, type_id = self._template
            with self._ids_lock:
                known = [(row, self._chunk_ids.get(text)) for row, text in enumerate(texts)]
            for row, ids in known:
                if ids is not None:
                    found[row] = TokenIds.of(ids[:room], head, tail, type_id)
        missing = [row for row in range(len(texts)) if row not in found]
        if missing:
            for row, encoding in zip(
                missing,
                self._tokenizer.encode_batch([texts[r] for r in missing], add_special_tokens=False),
                strict=True,
            ):
                if len(encoding.ids) > room:
                    encoding.truncate(room)
                found[row] = self._tokenizer.post_process(encoding)
        self.timings["reused_ids"] += len(texts) - len(missing)
        self.timings["tokenized"] += len(missing)
        self.timings["tokenize_s"] += time.perf_counter() - started
        return [found[row] for row in range(len(texts))]

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
            on_cpu = (
                model
                if model.device.type == "cpu"
                else _load_model(self._path, "cpu", self._max_tokens, "float32")
            )
            built = onnx_encoder.build(on_cpu, self._small_dir, self._fingerprint, self.features)
        except Exception:  # the vectors are already computed; try again next time
            log.warning("could not build the ONNX backend; small calls stay on torch", exc_info=True)
            return
        self._small = built if built is not None else "refused"

    def load(self) -> SentenceTransformer:
        """The underlying model, loaded on first call (benchmarks share it)."""
        return self._load()

    def _load(self, waited: bool = True) -> SentenceTransformer:
        model = self._model
        if model is not None:
            return model
        asked = time.perf_counter()
        with self._load_lock:
            if waited:
                self.timings["load_wait_s"] += time.perf_counter() - asked
            if self._model is None:
                started = time.perf_counter()
                requested = self._settings.compute_dtype
                model = _load_model(self._path, self._settings.device, self._max_tokens, requested)
                device: Device = "cuda" if model.device.type == "cuda" else "cpu"
                self._compute = choose_dtype(device, requested, cpu_has_bf16() if device == "cpu" else False)
                self._budget = token_budget(device, self._settings.token_budget, *gpu_memory(model))
                # Our own loop feeds the model the token features we built (from the
                # chunker's ids), skipping sentence-transformers' preprocess; it needs them to
                # be exactly the ones sentence-transformers would build.
                self._torch_inputs = self._matching_inputs(model)
                self.timings["load_s"] = time.perf_counter() - started
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


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer as FastTokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        raise ModelNotAvailable(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = FastTokenizer.from_file(str(file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _load_model(
    path: Path, requested_device: str, max_tokens: int, compute: str = "auto"
) -> SentenceTransformer:
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    device = choose_device(requested_device, torch.cuda.is_available())
    started = time.perf_counter()
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.max_seq_length = max_tokens
    if device == "cuda":  # on CPU the weights stay float32: bf16 is autocast (see batches.autocast)
        dtype = choose_dtype(device, compute)  # type: ignore[arg-type]
        if dtype == "float16":
            model.half()
        elif dtype == "bfloat16":
            model.to(torch.bfloat16)
    log.info(
        "model loaded",
        extra={"model": str(path), "device": device, "seconds": round(time.perf_counter() - started, 2)},
    )
    return model


def _build_small_backend_main(state_dir: str, settings_json: str) -> int:
    """``python -m pipeline.encoding.transformer build-small-backend STATE_DIR SETTINGS``: the
    detached, low-priority build :meth:`SentenceTransformerEncoder.after_pass` starts."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    settings = ModelSettings.model_validate_json(settings_json)
    encoder = SentenceTransformerEncoder(settings, state_dir=Path(state_dir))
    return 0 if encoder.prepare_small_backend() else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "build-small-backend":
        logging.basicConfig(level=logging.WARNING)
        raise SystemExit(_build_small_backend_main(sys.argv[2], sys.argv[3]))
    raise SystemExit(
        "usage: python -m pipeline.encoding.transformer build-small-backend STATE_DIR SETTINGS_JSON"
    )
