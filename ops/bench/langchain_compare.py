"""First index side by side with LangChain's indexing API, per corpus byte, with retrieval scores.

LangChain (the optional ``[bench]`` extra): ``index()`` with a ``SQLRecordManager`` (SQLite)
into an ``InMemoryVectorStore``, chunks from ``RecursiveCharacterTextSplitter`` (1,000
characters, 100 overlap), embedded by the same all-MiniLM-L6-v2 through
``SentenceTransformer.encode`` (batch 32, normalized: what ``HuggingFaceEmbeddings`` does).
embedstream: the embedded pipeline's first index of the same pages as files, fresh state
dir, once with ``model.compute_dtype=float32`` and once with the default (bf16 on a CPU that
has it). Both models are loaded before any timing: the figures are the passes. Rounds are
interleaved (LangChain, embedstream fp32, embedstream auto, repeated); medians per corpus
byte. Retrieval: each page's NAME description as the query (``manpages.py``), documents
ranked by their best chunk, nDCG@10 and MRR@10.

    .venv/bin/pip install --target .cache/bench/langchain-pkgs langchain-core langchain-classic greenlet
    .venv/bin/python ops/bench/langchain_compare.py --pages 40 --rounds 1

(``pip install -e '.[bench]'`` installs the same packages into the venv instead.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(REPO / ".cache" / "bench" / "langchain-pkgs"))  # after the venv's own packages

from manpages import Params, ensure_corpus  # noqa: E402

from connectors.filesystem import FilesystemSource  # noqa: E402
from pipeline.config.settings import Settings  # noqa: E402
from pipeline.encoding.transformer import SentenceTransformerEncoder  # noqa: E402
from pipeline.runtime.embedded import EmbeddedPipeline  # noqa: E402
from pipeline.runtime.local import index_source  # noqa: E402
from pipeline.versions.evaluation import ChunkHit, evaluate, load_qrels, load_queries, rank_documents  # noqa: E402


def installed() -> bool:
    """Whether the optional ``[bench]`` extra (or its ``--target`` folder) is importable."""
    return importlib.util.find_spec("langchain_classic") is not None


def langchain_round(
    folder: Path, work: Path, model: Any, queries: list[Any]
) -> tuple[float, dict[str, list[str]]]:
    from langchain_classic.indexes import SQLRecordManager, index
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    class Embed(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return model.encode(
                texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False
            ).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    started = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=100)
    docs = [
        Document(page_content=p.read_text(), metadata={"source": p.stem}) for p in sorted(folder.iterdir())
    ]
    chunks = splitter.split_documents(docs)
    manager = SQLRecordManager("bench", db_url=f"sqlite:///{work / 'records.sqlite'}")
    manager.create_schema()
    store = InMemoryVectorStore(Embed())
    index(chunks, manager, store, cleanup="incremental", source_id_key="source")
    seconds = time.perf_counter() - started
    ranked = {}
    for query in queries:
        hits = store.similarity_search_with_score(query.text, k=40)
        ranked[query.text] = rank_documents(ChunkHit(d.metadata["source"], float(s)) for d, s in hits)[:10]
    return seconds, ranked


def embedstream_round(
    folder: Path, work: Path, encoder: SentenceTransformerEncoder, queries: list[Any]
) -> tuple[float, dict[str, list[str]]]:
    settings = Settings.load(state_dir=work)
    with EmbeddedPipeline(settings, encoder=encoder) as pipeline:
        summary = index_source(pipeline, FilesystemSource(folder, work / "checkpoint.json", name="bench"))
        ranked = {q.text: [Path(r.doc_id).stem for r in pipeline.search(q.text, k=10)] for q in queries}
    return summary.seconds, ranked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not installed():
        print("LangChain is not installed: pip install -e '.[bench]' (see this script's docstring)")
        return 2
    corpus = ensure_corpus(REPO / ".cache" / "bench" / f"manpages-{args.pages}-s7", Params(args.pages, 7))
    work = Path(tempfile.mkdtemp(prefix="embedstream-lc-"))
    folder = work / "pages"
    folder.mkdir()
    for line in (corpus / "corpus.jsonl").open():
        row = json.loads(line)
        (folder / f"{row['_id']}.txt").write_text(row["text"])
    size = sum(p.stat().st_size for p in folder.iterdir())
    queries = load_queries(corpus / "queries.jsonl")
    qrels = load_qrels(corpus / "qrels" / "test.tsv")
    encoders = {
        d: SentenceTransformerEncoder(Settings.load(model={"compute_dtype": d}).model)
        for d in ("float32", "auto")
    }
    for encoder in encoders.values():
        encoder.encode_documents(["warm-up text"] * 4)
    model = encoders["float32"].load()  # the same model, plain sentence-transformers
    load_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {"langchain": [], "float32": [], "auto": []}
    ranked: dict[str, dict[str, list[str]]] = {}
    for number in range(args.rounds):
        for side, taken in seconds.items():
            place = work / f"{side}-{number}"
            place.mkdir()
            if side == "langchain":
                took, ranked[side] = langchain_round(folder, place, model, queries)
            else:
                took, ranked[side] = embedstream_round(folder, place, encoders[side], queries)
            taken.append(took)
            print(f"  round {number} {side}: {took:.1f} s", flush=True)
    dtype = encoders["auto"].compute_dtype
    print(
        f"\n{args.pages} manual pages, {size / 1000:.0f} KB, {len(queries)} queries; load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    base = statistics.median(seconds["langchain"])
    figures: dict[str, dict[str, float]] = {}
    for side, label in (
        ("langchain", "LangChain index() + SQLRecordManager"),
        ("float32", "embedstream, float32"),
        ("auto", f"embedstream, auto ({dtype})"),
    ):
        report = evaluate(lambda text, s=side: ranked[s][text], queries, qrels, depth=10)
        took = statistics.median(seconds[side])
        figures[side] = {
            "seconds": took, "speed_vs_langchain": base / took, "ndcg_at_10": report.ndcg_at_10,
            "mrr_at_10": report.mrr_at_10,
        }  # fmt: skip
        print(
            f"  {label:<40} {took:6.1f} s  {size / took / 1000:6.1f} KB/s  x{base / took:.2f} of LangChain's speed"
            f"  nDCG@10 {report.ndcg_at_10:.4f}  MRR@10 {report.mrr_at_10:.4f}"
        )
    for line in verdicts(figures, dtype):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def verdicts(figures: dict[str, dict[str, float]], dtype: str) -> list[str]:
    """The issue-20 targets: speed per corpus byte against LangChain's, retrieval not lower."""
    quality = figures["langchain"]["ndcg_at_10"]

    def line(side: str, target: float, what: str) -> str:
        speed, ndcg = figures[side]["speed_vs_langchain"], figures[side]["ndcg_at_10"]
        met = "met" if speed >= target and ndcg >= quality else "NOT met"
        return (
            f"  {what}: x{speed:.2f} of LangChain's speed (target >= {target}), nDCG@10 {ndcg:.4f} vs "
            f"{quality:.4f} (target: not lower): {met}"
        )

    lines = [line("float32", 1.0, "float32")]
    if dtype == "bfloat16":
        lines.append(line("auto", 1.4, "bf16 on this CPU"))
    else:
        lines.append(f"  bf16 target (>= 1.4x) not applicable: this CPU runs {dtype} (no AMX/AVX512-BF16)")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
