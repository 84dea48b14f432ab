"""Quantization and Matryoshka trade-offs: retrieval quality kept vs bytes per vector.

On the manual-page corpus (``manpages.py``: each page's NAME description is the query, the
page its one relevant document), chunked by the project's chunker and encoded once with the
configured model (all-MiniLM-L6-v2 by default), this builds one collection per storage
choice in the embedded Qdrant engine (``EdgeStore``), and evaluates each with
``pipeline.versions.evaluation`` at document level: nDCG@10, MRR@10, Recall@10/100, query latency.

Index versions are planned with ``IndexVersion.plan`` from ``IndexSettings``, so truncation
(Matryoshka: cut + renormalize, queries too), the collection spec and the search options
(oversampling, rescore) are the ones the product uses.

How each collection is searched (``Variant.index``); :func:`build_index` runs the engine's
optimizer on every collection, with one of two graph settings:

* ``scan``: the HNSW graph disabled (m=0), so a search scans every stored vector or code
  (then rescores): the row shows the storage choice alone (int8 without rescore still moved
  by up to 0.2% between runs; its codes are recomputed at every build). The
  "float32 exact" row is such a full scan; a numpy brute-force run over the same vectors
  checks it.
* ``hnsw``: the default HNSW graph (m=16, ef_construct=100), as EdgeStore and a Qdrant
  server build past their indexing threshold. Graph construction is multi-threaded and not
  deterministic: such rows move by a few tenths of a percent between runs. ``--hnsw``
  builds every variant but "float32 exact" this way.

A search is what ``embedstream search -k K`` does: it asks the store for 4 x K chunks (with
the version's oversampling and rescore) and ranks documents by their best chunk. K is 10 by
default, so quantized candidates are rescored as they would be for a user's top 10;
``--k 100`` also reports Recall@100 (a deeper search rescores more candidates, which
flatters quantization at @10). Latency is the store call plus the grouping; query vectors are
encoded beforehand, so model time is not in it.

Chunk and query vectors are cached beside the corpus (``vectors-<key>.npy``), keyed by the
model fingerprint and the exact texts encoded: a second run encodes nothing.

    .venv/bin/python ops/bench/quantization.py --pages 600          # standalone
    from quantization import run; reports = run(pages=600)           # from make bench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from manpages import Params, ensure_corpus  # noqa: E402

from pipeline.config.settings import IndexSettings, Settings  # noqa: E402
from pipeline.core.chunking import Chunk  # noqa: E402
from pipeline.core.events import Matrix  # noqa: E402
from pipeline.core.hashing import normalize_text, point_id  # noqa: E402
from pipeline.encoding.transformer import SentenceTransformerEncoder  # noqa: E402
from pipeline.runtime.adapters import make_chunker  # noqa: E402
from pipeline.store import PointWrite, SearchOptions  # noqa: E402
from pipeline.store.edge import EdgeStore  # noqa: E402
from pipeline.versions.evaluation import (  # noqa: E402
    ChunkHit,
    EvalReport,
    Query,
    bytes_per_vector,
    evaluate,
    format_comparison,
    load_qrels,
    load_queries,
    rank_documents,
    retained,
)
from pipeline.versions.search import FIRST_HITS_PER_DOCUMENT as CHUNKS_PER_DOCUMENT  # noqa: E402
from pipeline.versions.spec import IndexVersion  # noqa: E402

UPSERT_BATCH = 256


@dataclass(frozen=True)
class Variant:
    label: str
    dims: int | None = None
    datatype: Literal["float32", "float16"] = "float32"
    quantization: Literal["none", "int8", "binary"] = "none"
    rescore: bool = True
    index: Literal["scan", "hnsw"] = "scan"


VARIANTS = (
    Variant("float32 exact"),
    Variant("float32 HNSW", index="hnsw"),
    Variant("float16", datatype="float16"),
    Variant("int8 + rescore", quantization="int8"),
    Variant("int8, no rescore", quantization="int8", rescore=False),
    Variant("binary + rescore", quantization="binary"),
    Variant("binary, no rescore", quantization="binary", rescore=False),
    Variant("Matryoshka 256", dims=256),
    Variant("Matryoshka 128", dims=128),
)


def with_graphs(variants: Sequence[Variant]) -> list[Variant]:
    """Every variant but the exact baseline searched through an HNSW graph (``--hnsw``)."""
    return [variants[0], *(replace(v, index="hnsw") for v in variants[1:])]


@dataclass(frozen=True)
class Encoded:
    doc_ids: list[str]  # one per chunk row
    chunks: Matrix
    queries: list[Query]
    query_vectors: Matrix
    qrels: dict[str, dict[str, int]]
    fingerprint: str


def run(
    pages: int = 600, seed: int = 7, k: int = 10, hnsw: bool = False, corpus_dir: Path | None = None
) -> list[EvalReport]:
    """Build (or reuse) the corpus, encode (or load cached vectors), evaluate every variant."""
    variants = with_graphs(VARIANTS) if hnsw else list(VARIANTS)
    corpus = ensure_corpus(
        corpus_dir or REPO / ".cache" / "bench" / f"manpages-{pages}-s{seed}", Params(pages, seed)
    )
    settings = Settings.load(state_dir=corpus / "state")
    encoded = encode_corpus(corpus, settings)
    print(f"{len(encoded.queries)} queries, {len(set(encoded.doc_ids))} pages, {len(encoded.doc_ids)} chunks")
    work = Path(tempfile.mkdtemp(prefix="embedstream-quant-"))
    try:
        versions = [plan(v, encoded) for v in variants]
        fill(work, versions, encoded)
        for variant, version in zip(variants, versions, strict=True):
            build_index(work / version.collection, version, graph=variant.index == "hnsw")
        reports = measure(work, variants, versions, encoded, k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"check: numpy brute force over the float32 vectors, nDCG@10 {numpy_exact_ndcg(encoded, k):.4f}")
    return reports


# -- corpus and vectors -------------------------------------------------------------------


def read_corpus(corpus: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").open()]
    return [(str(r["_id"]), str(r["text"])) for r in rows]


def chunk_corpus(
    documents: Sequence[tuple[str, str]], settings: Settings, encoder: SentenceTransformerEncoder
) -> list[tuple[str, Chunk]]:
    chunker = make_chunker(encoder, settings)
    return [(doc_id, c) for doc_id, text in documents for c in chunker.chunk(normalize_text(text))]


def text_key(fingerprint: str, texts: Sequence[str]) -> str:
    """Names a cache file by the model and the exact texts encoded, so a change to the corpus,
    the chunker's code or its settings can never pair vectors with the wrong chunks."""
    digest = hashlib.sha256(fingerprint.encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def encode_corpus(corpus: Path, settings: Settings) -> Encoded:
    encoder = SentenceTransformerEncoder(settings.model)
    chunks = chunk_corpus(read_corpus(corpus), settings, encoder)
    texts = [c.text for _, c in chunks]
    queries = load_queries(corpus / "queries.jsonl")
    query_texts = [q.text for q in queries]
    vectors = cached(
        corpus / f"vectors-{text_key(encoder.fingerprint, texts)}.npy",
        lambda: encode(encoder.encode_documents, texts),
    )
    query_vectors = cached(
        corpus / f"queries-{text_key(encoder.fingerprint, query_texts)}.npy",
        lambda: encoder.encode_queries(query_texts),
    )
    return Encoded(
        [doc_id for doc_id, _ in chunks], vectors, queries, query_vectors,
        load_qrels(corpus / "qrels" / "test.tsv"), encoder.fingerprint,
    )  # fmt: skip


def encode(fn: Callable[[Sequence[str]], Matrix], texts: Sequence[str], batch: int = 512) -> Matrix:
    """Encode in slices so a long first run shows progress."""
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(fn(texts[start : start + batch]))
        print(f"  encoded {min(start + batch, len(texts))}/{len(texts)} chunks", flush=True)
    return np.concatenate(parts)


def cached(path: Path, compute: Callable[[], Matrix]) -> Matrix:
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    matrix = np.asarray(compute(), dtype=np.float32)
    np.save(path, matrix)
    return matrix


# -- collections --------------------------------------------------------------------------


def plan(variant: Variant, encoded: Encoded) -> IndexVersion:
    settings = IndexSettings(
        name=variant.label.replace(" ", "-").replace(",", "").replace("+", "plus"),
        dims=variant.dims, datatype=variant.datatype, quantization=variant.quantization,
        rescore=variant.rescore,
    )  # fmt: skip
    return IndexVersion.plan(settings, 1, encoded.fingerprint, encoded.chunks.shape[1])


def fill(root: Path, versions: Sequence[IndexVersion], encoded: Encoded) -> None:
    store = EdgeStore(root)
    try:
        ordinals = occurrences(encoded.doc_ids)
        for version in versions:
            store.create_collection(version.collection, version.spec)
            vectors = version.to_storage(encoded.chunks)
            for start in range(0, len(vectors), UPSERT_BATCH):
                rows = range(start, min(start + UPSERT_BATCH, len(vectors)))
                points = [
                    PointWrite(
                        point_id(encoded.doc_ids[i], "bench", ordinals[i]),
                        vectors[i].tolist(),
                        {"doc_id": encoded.doc_ids[i]},
                    )
                    for i in rows
                ]
                store.upsert(version.collection, points)
        store.flush()
    finally:
        store.close()


def occurrences(doc_ids: Sequence[str]) -> list[int]:
    """The chunk's ordinal within its document, for a unique point id."""
    seen: dict[str, int] = {}
    ordinals = []
    for doc_id in doc_ids:
        ordinals.append(seen.get(doc_id, 0))
        seen[doc_id] = ordinals[-1] + 1
    return ordinals


def build_index(path: Path, version: IndexVersion, graph: bool) -> None:
    """Run the engine's optimizer on a closed collection: quantized codes, and the HNSW graph
    if ``graph`` (else m=0: no graph, searches scan the vectors or codes).

    The engine quantizes (scalar int8) only segments its optimizer has rebuilt, and skips
    segments under ``indexing_threshold`` (KB); EdgeStore runs it only past that threshold,
    with the default graph, which would make small variants unquantized and the float32
    one an HNSW search. So each collection is reopened here with the adapter's own vector
    config plus a 1 KB threshold, and the run stops if any vector was left out of the index.
    """
    import qdrant_edge as qe

    from pipeline.store.edge import _config

    no_graph = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
    config = qe.EdgeConfig(
        vectors=_config(version.spec).vectors,
        hnsw_config=None if graph else no_graph,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )
    shard = qe.EdgeShard.load(str(path), config)
    try:
        shard.optimize()
        info = shard.info()
        if info.indexed_vectors_count < info.points_count:
            msg = f"{path.name}: {info.indexed_vectors_count} of {info.points_count} vectors indexed"
            raise RuntimeError(msg)
    finally:
        shard.close()


# -- measuring ----------------------------------------------------------------------------


def measure(
    root: Path, variants: Sequence[Variant], versions: Sequence[IndexVersion], encoded: Encoded, k: int
) -> list[EvalReport]:
    store = EdgeStore(root)
    try:
        reports = []
        for variant, version in zip(variants, versions, strict=True):
            search = searcher(store, version, encoded, k)
            search(encoded.queries[0].text)  # warm-up: first-call allocations are not latency
            size = bytes_per_vector(version.dims, version.datatype, version.quantization)
            reports.append(evaluate(search, encoded.queries, encoded.qrels, variant.label, size, depth=k))
        return reports
    finally:
        store.close()


def searcher(store: EdgeStore, version: IndexVersion, encoded: Encoded, k: int) -> Callable[[str], list[str]]:
    """Query text -> top k documents, as the product's query path does it for this version."""
    vectors = version.to_storage(encoded.query_vectors)
    by_text = {q.text: vectors[row].tolist() for row, q in enumerate(encoded.queries)}
    options = SearchOptions(
        limit=CHUNKS_PER_DOCUMENT * k, oversampling=version.oversampling, rescore=version.rescore
    )

    def search(text: str) -> list[str]:
        hits = store.search(version.collection, by_text[text], options)
        return rank_documents(ChunkHit(str(h.payload["doc_id"]), h.score) for h in hits)[:k]

    return search


def numpy_exact_ndcg(encoded: Encoded, k: int) -> float:
    """The float32 exact row recomputed without the engine: full matrix product, best chunk."""
    scores = encoded.query_vectors @ encoded.chunks.T
    ranked = {}
    for row, query in enumerate(encoded.queries):
        top = np.argsort(-scores[row], kind="stable")[: CHUNKS_PER_DOCUMENT * k]
        hits = (ChunkHit(encoded.doc_ids[i], float(scores[row, i])) for i in top)
        ranked[query.text] = rank_documents(hits)[:k]
    return evaluate(lambda text: ranked[text], encoded.queries, encoded.qrels).ndcg_at_10


# -- entry points -------------------------------------------------------------------------


def summary(reports: Sequence[EvalReport]) -> str:
    baseline = reports[0]
    int8 = next(r for r in reports if r.label == "int8 + rescore")
    assert int8.bytes_per_vector
    assert baseline.bytes_per_vector
    share = int8.bytes_per_vector.searched / baseline.bytes_per_vector.searched
    ok = retained(int8, baseline) >= 0.99 and share <= 0.25
    return (
        f"int8 + rescore retains {retained(int8, baseline):.1%} of float32 nDCG@10 with {share:.2f} of its "
        f"searched bytes (target >= 99% at <= 1/4): {'met' if ok else 'NOT met'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=600, help="manual pages in the corpus")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--k", type=int, default=10, help="documents per search (100 adds Recall@100)")
    parser.add_argument("--hnsw", action="store_true", help="search every variant through an HNSW graph")
    parser.add_argument(
        "--corpus",
        type=Path,
        help="corpus folder (default .cache/bench/manpages-<pages>-s<seed>, git-ignored)",
    )
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    reports = run(args.pages, args.seed, args.k, args.hnsw, args.corpus)
    graphs = (
        "every variant but float32 exact through an HNSW graph"
        if args.hnsw
        else "full scans but float32 HNSW"
    )
    print(f"\nsearch -k {args.k}, {graphs}")
    print(format_comparison(reports))
    print(summary(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
