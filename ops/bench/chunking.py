"""Chunk size x overlap on real text with held-out queries: what each costs, what it finds.

The corpus is the Debian manual pages of ``manpages.py`` (each page's NAME description is a
query, the page its one relevant document; the description is removed from the page), as
the quantization bench uses them. For each setting the pages are chunked by the project's
chunker, every chunk is encoded by the pipeline encoder (``model.compute_dtype`` as
configured: bf16 on a CPU that has it), and each query ranks documents by their best chunk
(numpy brute force over the vectors, as ``embedstream search`` ranks them). Printed per
setting: chunks, model tokens, model work (:func:`model_cost`, relative to the least),
model time (the encoder's forward passes: noisy on a shared machine), nDCG@10, MRR@10.

The cheapest setting (least model work) within 0.5 nDCG points of the best, and with
``--at-least`` at least that nDCG@10 (LangChain's ``index()`` on the same pages), is marked:
that is how the chunking default was chosen. Results are cached per setting in
``.cache/bench/chunking-<key>.json``; ``--fresh`` recomputes.

    .venv/bin/python ops/bench/chunking.py --pages 600 --sizes 128,200,254 --overlaps 0,12,24

Fill (merging small adjacent pieces up to the budget) is not swept: the chunker's
content-defined boundaries (a boundary depends only on its own segment) are what keeps an
edit's re-encoding local, and merging across segments would give that up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from manpages import Params, ensure_corpus  # noqa: E402

from pipeline.config.settings import Settings  # noqa: E402
from pipeline.core.hashing import normalize_text  # noqa: E402
from pipeline.encoding.transformer import SentenceTransformerEncoder  # noqa: E402
from pipeline.runtime.adapters import make_chunker  # noqa: E402
from pipeline.versions.evaluation import ChunkHit, evaluate, load_qrels, load_queries, rank_documents  # noqa: E402
from pipeline.versions.search import FIRST_HITS_PER_DOCUMENT  # noqa: E402

MARGIN = 0.005  # 0.5 nDCG points


def model_cost(lengths: list[int], hidden: int) -> float:
    """Relative model work of encoding chunks of ``lengths`` tokens: per layer and token a
    BERT-style encoder does ~24 d^2 multiply-adds in its dense parts and ~4 n d in attention
    (n tokens in the sequence), so a chunk of n tokens costs n (1 + n / 6d) dense-token units.
    Deterministic, unlike model time on a shared machine; longer chunks cost a little more
    per token."""
    return float(sum(n * (1 + n / (6 * hidden)) for n in lengths))


def measure(corpus: Path, size: int, overlap: int, dtype: str, fresh: bool) -> dict[str, float]:
    settings = Settings.load(
        state_dir=corpus / "state", chunking={"max_tokens": size, "overlap_tokens": overlap},
        model={"compute_dtype": dtype},
    )  # fmt: skip
    encoder = SentenceTransformerEncoder(settings.model)
    key = hashlib.sha256(
        f"{corpus.name}/{size}/{overlap}/{dtype}/{encoder.fingerprint}".encode()
    ).hexdigest()[:12]
    cached = REPO / ".cache" / "bench" / f"chunking-{key}.json"
    chunker = make_chunker(encoder, settings)
    if cached.is_file() and not fresh:
        found = dict(json.loads(cached.read_text()))
        if "cost" not in found:  # written before the cost column: recount, no encoding
            rows = [json.loads(line) for line in (corpus / "corpus.jsonl").open()]
            texts = [c.text for row in rows for c in chunker.chunk(normalize_text(row["text"]))]
            found["cost"] = model_cost(encoder.count_tokens(texts), hidden_size(encoder))
            cached.write_text(json.dumps(found))
        return found
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").open()]
    doc_ids, texts = [], []
    for row in rows:
        for chunk in chunker.chunk(normalize_text(row["text"])):
            doc_ids.append(str(row["_id"]))
            texts.append(chunk.text)
    encoder.load()
    encoder.encode_documents(texts[:8])  # warm-up
    before = dict(encoder.timings)
    started = time.perf_counter()
    vectors = encoder.encode_documents(texts)
    wall = time.perf_counter() - started
    queries = load_queries(corpus / "queries.jsonl")
    query_vectors = encoder.encode_queries([q.text for q in queries])
    scores = query_vectors @ vectors.T
    ranked = {}
    for row, query in enumerate(queries):
        top = np.argsort(-scores[row], kind="stable")[: FIRST_HITS_PER_DOCUMENT * 10]
        ranked[query.text] = rank_documents(ChunkHit(doc_ids[i], float(scores[row, i])) for i in top)[:10]
    report = evaluate(lambda text: ranked[text], queries, load_qrels(corpus / "qrels" / "test.tsv"), depth=10)
    result = {
        "size": size, "overlap": overlap, "chunks": len(texts),
        "tokens": sum(encoder.count_tokens(texts)),
        "cost": model_cost(encoder.count_tokens(texts), hidden_size(encoder)),
        "model_s": encoder.timings["forward_s"] - before["forward_s"], "wall_s": wall,
        "ndcg": report.ndcg_at_10, "mrr": report.mrr_at_10, "queries": report.queries,
        "load": os.getloadavg()[0], "dtype": encoder.compute_dtype,
    }  # fmt: skip
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    np.save(cached.with_suffix(".npy"), vectors)
    return result


def hidden_size(encoder: SentenceTransformerEncoder) -> int:
    return int(json.loads((encoder.path / "config.json").read_text()).get("hidden_size", 384))


def choose(results: list[dict[str, float]], floor: float = 0.0) -> dict[str, float]:
    """The cheapest setting (least model work, :func:`model_cost`) within MARGIN nDCG@10 of the
    best and at least ``floor`` (another system's nDCG@10 on the same pages), else the best."""
    best = max(r["ndcg"] for r in results)
    eligible = [r for r in results if r["ndcg"] >= max(best - MARGIN, floor)]
    if not eligible:
        return max(results, key=lambda r: r["ndcg"])
    return min(eligible, key=lambda r: (r["cost"], -r["ndcg"]))


def table(results: list[dict[str, float]], floor: float = 0.0) -> str:
    chosen = choose(results, floor)
    least = min(r["cost"] for r in results)
    lines = ["size  overlap  chunks   tokens  model work  model s  nDCG@10  MRR@10", "-" * 68]
    for r in results:
        mark = "  <- default" if r is chosen else ""
        lines.append(
            f"{r['size']:>4}  {r['overlap']:>7}  {r['chunks']:>6}  {r['tokens']:>7}  {r['cost'] / least:>10.3f}"
            f"  {r['model_s']:>7.1f}  {r['ndcg']:.4f}   {r['mrr']:.4f}{mark}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--sizes", default="128,200,254", help="at most the model's window less 2 (254)")
    parser.add_argument("--overlaps", default="0,12,24")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument(
        "--at-least", type=float, default=0.0, metavar="NDCG",
        help="nDCG@10 a default must reach too: LangChain's index() on the same pages (langchain_compare.py)",
    )  # fmt: skip
    args = parser.parse_args()
    corpus = ensure_corpus(REPO / ".cache" / "bench" / f"manpages-{args.pages}-s7", Params(args.pages, 7))
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for overlap in (int(o) for o in args.overlaps.split(",")):
            results.append(measure(corpus, size, overlap, args.dtype, args.fresh))
            r = results[-1]
            print(
                f"  {size}/{overlap}: {r['chunks']} chunks, {r['model_s']:.1f} s model, nDCG@10 {r['ndcg']:.4f} (load {r['load']:.1f})",
                flush=True,
            )
    print(
        f"\n{args.pages} manual pages, {results[0]['queries']} queries, {results[0]['dtype']}, {os.cpu_count()} CPUs"
    )
    print(table(results, args.at_least))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
