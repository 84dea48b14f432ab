"""Encoder throughput in tokens/s: raw ``SentenceTransformer.encode`` against the pipeline's
encoder, on CUDA when one is visible (else CPU, smaller sizes), every variant interleaved.

Rows (each the median of ``--repeats`` rounds; a round runs every variant once, in turn, on
the same texts, so load that comes and goes lands on all of them):

* raw ``encode`` at batch 32 and 256 (float32 and, on CUDA, float16);
* the pipeline encoder (length-sorted token-budget batches; on CUDA float16, features from
  our tokenizer, pinned host memory, two batches in flight) at its default budget;
* a token-budget sweep of the pipeline encoder;
* on CUDA: overlap off (one batch in flight) and pageable instead of pinned host memory;
* with ``--onnx``: the ONNX Runtime backend that serves small calls (CPU).

Target (issue 10): >= 5 M tokens/s for all-MiniLM-L6-v2 on an H200 inside the pipeline.

    python ops/bench/gpu.py                 # auto device
    python ops/bench/gpu.py --device cpu --tokens 200000 --onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import write_corpus  # noqa: E402

from pipeline.config.settings import ModelSettings, Settings  # noqa: E402
from pipeline.core.hashing import normalize_text  # noqa: E402
from pipeline.encoding.batches import encode_overlapped  # noqa: E402
from pipeline.encoding.plan import token_batches  # noqa: E402
from pipeline.encoding.transformer import SentenceTransformerEncoder  # noqa: E402
from pipeline.runtime.adapters import make_chunker  # noqa: E402

Variant = Callable[[list[str]], object]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--tokens", type=int, help="tokens per round (default: 20 M on CUDA, 150 k on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--budgets", type=int, nargs="*", help="token budgets to sweep")
    parser.add_argument("--onnx", action="store_true", help="also measure the ONNX small-call backend")
    args = parser.parse_args()

    settings = ModelSettings(name=args.model, device=args.device)
    encoder = SentenceTransformerEncoder(settings)
    model = encoder.load()
    cuda = model.device.type == "cuda"
    texts = chunk_texts(encoder, args.tokens or (20_000_000 if cuda else 150_000))
    tokens = sum(encoder.count_tokens(texts))
    variants = build_variants(encoder, model, cuda, args)
    print(describe(model, cuda, len(texts), tokens, args.repeats))
    for run in variants.values():  # warm-up: kernels, allocator, thread pools
        run(texts[: 256 if cuda else 16])
    seconds = interleave(variants, texts, args.repeats)
    report(seconds, tokens)
    return 0


def chunk_texts(encoder: SentenceTransformerEncoder, target_tokens: int) -> list[str]:
    """Chunks of the benchmark corpus (real sentences), repeated until ``target_tokens``."""
    chunker = make_chunker(encoder, Settings.load(state_dir=Path(tempfile.mkdtemp())))
    with tempfile.TemporaryDirectory() as work:
        docs = write_corpus(Path(work), 300)
        base = [c.text for p in docs for c in chunker.chunk(normalize_text(p.read_text()))]
    texts, total = [], 0
    counts = encoder.count_tokens(base)
    while total < target_tokens:
        for text, count in zip(base, counts, strict=True):
            texts.append(text)
            total += count
            if total >= target_tokens:
                break
    return texts


def build_variants(
    encoder: SentenceTransformerEncoder, model: Any, cuda: bool, args: Any
) -> dict[str, Variant]:
    def raw(batch_size: int, target: Any) -> Variant:
        return lambda texts: target.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    variants: dict[str, Variant] = {
        "raw encode, batch 32": raw(32, model),
        "raw encode, batch 256": raw(256, model),
    }
    if cuda:
        full = SentenceTransformerEncoder(encoder_settings(args, device="cuda")).load().float()
        variants["raw encode, batch 256, float32"] = raw(256, full)
    variants["pipeline encoder (default)"] = encoder.encode_documents
    budgets = args.budgets or (
        [16_384, 32_768, 65_536, 131_072, 262_144] if cuda else [1024, 2048, 4096, 8192]
    )
    for budget in budgets:
        swept = SentenceTransformerEncoder(encoder_settings(args, token_budget=budget))
        variants[f"pipeline encoder, budget {budget:,}"] = swept.encode_documents
    if cuda:
        budget = encoder.token_budget
        variants["pipeline loop, no overlap (1 in flight)"] = loop(encoder, model, budget, depth=1, pin=True)
        variants["pipeline loop, pageable host memory"] = loop(encoder, model, budget, depth=2, pin=False)
        variants["pipeline loop, 3 in flight"] = loop(encoder, model, budget, depth=3, pin=True)
    if args.onnx:
        variants["ONNX Runtime backend (CPU)"] = onnx_variant(args)
    return variants


def encoder_settings(args: Any, **update: Any) -> ModelSettings:
    return ModelSettings(name=args.model, device=args.device).model_copy(update=update)


def loop(encoder: SentenceTransformerEncoder, model: Any, budget: int, depth: int, pin: bool) -> Variant:
    """The encoder's CUDA loop with one knob changed; tokenization stays inside the timing."""

    def run(texts: list[str]) -> object:
        features = encoder.features  # the same tokenizer path the encoder uses
        lengths = encoder.count_tokens(texts)
        batches = token_batches(lengths, budget)
        stream = (features([texts[i] for i in batch]) for batch in batches)
        return encode_overlapped(model, stream, depth=depth, pin=pin)

    return run


def onnx_variant(args: Any) -> Variant:
    """The real small-call path: calls of 32 chunks, each under the small-call size."""
    state = Path(tempfile.mkdtemp(prefix="embedstream-gpu-bench-"))
    builder = SentenceTransformerEncoder(encoder_settings(args, device="cpu"), state_dir=state)
    if not builder.prepare_small_backend():
        raise SystemExit("the ONNX backend could not be built for this model")
    fresh = SentenceTransformerEncoder(encoder_settings(args, device="cpu"), state_dir=state)

    def run(texts: list[str]) -> object:
        parts = [fresh.encode_documents(texts[i : i + 32]) for i in range(0, len(texts), 32)]
        assert fresh.backend == "onnx", "a call went to torch"
        return parts

    return run


def interleave(variants: dict[str, Variant], texts: list[str], repeats: int) -> dict[str, list[float]]:
    """A B C … A B C …: every round runs each variant once, so noise spreads over all."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            started = time.perf_counter()
            run(texts)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def describe(model: Any, cuda: bool, texts: int, tokens: int, repeats: int) -> str:
    if cuda:
        import torch

        device = torch.cuda.get_device_name(model.device)
    else:
        device = f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    return (
        f"\nencoder throughput on {device}: {texts:,} chunks, {tokens:,} tokens per round, {repeats} rounds"
    )


def report(seconds: dict[str, list[float]], tokens: int) -> None:
    raw = statistics.median(tokens / s for s in seconds["raw encode, batch 32"])
    width = max(len(name) for name in seconds)
    print(f"  {'variant':<{width}}  {'tokens/s':>12}  {'spread':>17}  vs raw b32")
    for name, runs in seconds.items():
        rates = sorted(tokens / s for s in runs)
        median = statistics.median(rates)
        spread = f"{rates[0]:,.0f}-{rates[-1]:,.0f}"
        print(f"  {name:<{width}}  {median:>12,.0f}  {spread:>17}  {median / raw:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
