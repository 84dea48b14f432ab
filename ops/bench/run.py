"""`make bench`: every headline figure is a ratio or a latency measured in this one run.

1. throughput, interleaved A B A B A B on the same texts: raw ``SentenceTransformer.encode``
   over the corpus' chunk texts (A) and the embedded pipeline's first index of the corpus in
   a fresh state dir (B: scan, chunk, cache, encode, upsert); the ratio B/A of each pair,
   reported as the median and its spread, so load that comes and goes lands on both sides;
   then the split of a first index in a fresh process (ops/bench/first_index.py --split):
   model load (background) and the wait for it, tokenization, forward passes, store writes;
2. re-index after 1% of the documents changed, and unchanged (medians of 3), against the
   first index;
3. what a user waits for (ops/bench/latency.py): a small update (3 new chunks in an
   80-document folder) and a one-shot search (20 queries), wall time of a fresh
   ``embedstream`` process; a no-op re-index of 1,000 files;
4. sink-only throughput (ops/bench/sink_only.py): points/s with precomputed vectors, into
   the embedded engine, and (ops/bench/sink_server.py) into a real local Qdrant server beside
   that server's ceiling written directly with qdrant-client over REST and over gRPC;
5. the Kafka path (ops/bench/kafka_path.py) with raw encode runs right before and after it;
6. the quantization table on Debian manual pages (ops/bench/quantization.py);
7. with the optional ``[bench]`` extra, the first index beside LangChain's ``index()`` on
   manual pages, per corpus byte, with both retrieval scores (ops/bench/langchain_compare.py).

The model is loaded once, before any timing, and shared by every in-process measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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

import langchain_compare  # noqa: E402
import quantization  # noqa: E402
from corpus import edit, write_corpus  # noqa: E402
from latency import noop_reindex, small_updates  # noqa: E402
from sink_only import sink_throughput  # noqa: E402
from sink_server import sink_server_throughput  # noqa: E402
from sql_path import measure_sql_path  # noqa: E402

from connectors.filesystem import FilesystemSource  # noqa: E402
from pipeline.config.settings import Settings  # noqa: E402
from pipeline.core.events import ChangeEvent  # noqa: E402
from pipeline.core.hashing import normalize_text  # noqa: E402
from pipeline.encoding.transformer import SentenceTransformerEncoder  # noqa: E402
from pipeline.runtime.adapters import make_chunker  # noqa: E402
from pipeline.runtime.embedded import EmbeddedPipeline  # noqa: E402
from pipeline.runtime.local import IndexSummary, index_source  # noqa: E402
from pipeline.versions.evaluation import format_comparison  # noqa: E402

Results = dict[str, float]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents in the corpus")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved raw/pipeline pairs")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction edited before re-index")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka path")
    parser.add_argument("--no-latency", action="store_true", help="skip the one-shot CLI timings")
    parser.add_argument("--steady", type=int, default=60, help="documents sent at a steady rate")
    parser.add_argument("--noop-files", type=int, default=1000, help="files in the no-op re-index")
    parser.add_argument("--no-sql", action="store_true", help="skip the SQL snapshot vs filesystem ratio")
    parser.add_argument("--pages", type=int, default=600, help="manual pages in the quantization corpus")
    parser.add_argument("--no-quantization", action="store_true", help="skip the quantization table")
    parser.add_argument("--no-server", action="store_true", help="skip sink-only into a Qdrant server")
    parser.add_argument("--server-docs", type=int, default=2000, help="vectors events (10 points each)")
    parser.add_argument("--no-langchain", action="store_true", help="skip LangChain's index() side by side")
    parser.add_argument("--langchain-pages", type=int, default=600, help="manual pages, LangChain side by side")
    parser.add_argument("--langchain-rounds", type=int, default=2, help="interleaved rounds, LangChain side by side")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embedstream-bench-"))
    results: Results = {"load_before": os.getloadavg()[0], "cpus": float(os.cpu_count() or 0)}
    docs = write_corpus(work / "corpus", args.docs)
    settings = Settings.load(state_dir=work / "state")
    encoder = SentenceTransformerEncoder(settings.model)  # no state dir: bulk work is torch's
    chunker = make_chunker(encoder, settings)
    texts = [c.text for p in docs for c in chunker.chunk(normalize_text(p.read_text()))]
    model = encoder.load()
    model.encode(texts[:16], batch_size=16)  # warm-up: first-call allocations are not throughput
    results.update(documents=len(docs), chunks=len(texts))

    def raw_encode() -> float:
        started = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return len(texts) / (time.perf_counter() - started)

    results.update(throughput(work, settings, encoder, docs, raw_encode, args))
    results.update(first_index_split(work))
    if not args.no_latency:
        results.update(small_updates(work / "latency"))
        results.update(noop_reindex(work / "latency", files=args.noop_files))
    results.update(sink_throughput(settings.model_copy(update={"state_dir": work / "sink-state"})))
    if not args.no_server:
        server_settings = settings.model_copy(update={"state_dir": work / "server-sink-state"})
        results.update(sink_server_throughput(work, server_settings, documents=args.server_docs))
    if not args.no_sql:
        results.update(measure_sql_path(work, settings, encoder, work / "corpus"))
    if not args.no_kafka:
        results.update(kafka_results(work, settings, encoder, docs, raw_encode, args))
    results["load_after"] = os.getloadavg()[0]
    report(results)
    if not args.no_quantization:
        # Manual pages with their one-line descriptions as queries (ops/bench/manpages.py).
        reports = quantization.run(pages=args.pages)
        print(f"\nquantization on {args.pages} manual pages (storage vs quality retained):")
        print(format_comparison(reports))
        print(quantization.summary(reports))
    if not args.no_langchain:
        langchain_side_by_side(work, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def background_build(waited: float | None) -> str:
    if waited is None:
        return "(it built the ONNX artefact: the first index was too small to build it in the background)"
    return f"(the background ONNX build was done {waited:.1f} s after the first index returned)"


def langchain_side_by_side(work: Path, args: Any) -> None:
    """First index against LangChain's ``index()`` (ops/bench/langchain_compare.py), in a fresh
    process so its models and threads are its own; only with the optional ``[bench]`` extra."""
    print(f"\nfirst index side by side with LangChain's index() on {args.langchain_pages} manual pages:")
    if not langchain_compare.installed():
        print("  skipped: the optional [bench] extra is not installed (pip install -e '.[bench]')")
        return
    script = Path(langchain_compare.__file__)
    subprocess.run(
        [sys.executable, str(script), "--pages", str(args.langchain_pages), "--rounds",
         str(args.langchain_rounds), "--json", str(work / "langchain.json")],
        check=True,
    )  # fmt: skip


def throughput(
    work: Path, settings: Settings, encoder: SentenceTransformerEncoder, docs: list[Path],
    raw_encode: Any, args: Any,
) -> Results:  # fmt: skip
    """A B A B A B: raw encode, then a first index in a fresh state dir (cold cache)."""
    raw_rates, pipe_rates, first_seconds = [], [], []
    for number in range(args.pairs):
        raw_rates.append(raw_encode())
        pair = settings.model_copy(update={"state_dir": work / f"state-{number}"})
        pipeline = EmbeddedPipeline(pair, encoder=encoder)
        try:
            first = index_folder(pipeline, work / "corpus", pair)
            first_seconds.append(first.seconds)
            pipe_rates.append(first.encoded / first.seconds)
            if number == args.pairs - 1:  # the last pipeline also measures re-indexing
                reindex = reindex_after_edits(pipeline, work, pair, docs, args.changed)
        finally:
            pipeline.close()
    ratios = sorted(p / r for p, r in zip(pipe_rates, raw_rates, strict=True))
    first_s = statistics.median(first_seconds)
    return {
        "raw_encode_chunks_per_s": statistics.median(raw_rates),
        "first_index_chunks_per_s": statistics.median(pipe_rates),
        "first_index_seconds": first_s,
        "ratio_first_index_vs_raw_encode": statistics.median(ratios),
        "ratio_first_index_vs_raw_encode_min": ratios[0],
        "ratio_first_index_vs_raw_encode_max": ratios[-1],
        **reindex,
        "ratio_reindex_speedup_vs_first": first_s / reindex["reindex_seconds"],
        "ratio_noop_reindex_speedup_vs_first": first_s / reindex["noop_seconds"],
    }


def first_index_split(work: Path) -> Results:
    """A first index of the corpus in a fresh process (torch not imported yet) and a fresh
    state dir: where its pass goes (ops/bench/first_index.py --split)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(REPO / "ops" / "bench" / "first_index.py"), "--split", str(work / "corpus"),
         str(work / "split-state")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {f"split_{k}": float(v) for k, v in found.items()}


def index_folder(pipeline: EmbeddedPipeline, folder: Path, settings: Settings) -> IndexSummary:
    checkpoint = settings.state_dir / "indexes" / settings.index.name / "checkpoints" / "bench.json"
    return index_source(pipeline, FilesystemSource(folder, checkpoint, name="bench"))


def reindex_after_edits(
    pipeline: EmbeddedPipeline,
    work: Path,
    settings: Settings,
    docs: list[Path],
    fraction: float,
    rounds: int = 3,
) -> Results:
    """Medians of ``rounds`` re-indexes after editing ``fraction`` of the documents (other
    ones each round), and of as many re-indexes with nothing changed: sub-second, so noisy."""
    changed = max(1, round(len(docs) * fraction))
    step = max(1, len(docs) // changed)
    edited, unchanged = [], []
    for number in range(rounds):
        for path in docs[number % step :: step][:changed]:
            edit(path, f"bench {number}")
        edited.append(index_folder(pipeline, work / "corpus", settings))
        unchanged.append(index_folder(pipeline, work / "corpus", settings).seconds)
    middle = sorted(edited, key=lambda summary: summary.seconds)[rounds // 2]
    return {
        "reindex_changed_docs": middle.changed,
        "reindex_chunks_encoded": middle.encoded,
        "reindex_seconds": middle.seconds,
        "noop_seconds": statistics.median(unchanged),
    }


def kafka_results(
    work: Path, settings: Settings, encoder: SentenceTransformerEncoder, docs: list[Path],
    raw_encode: Any, args: Any,
) -> Results:  # fmt: skip
    """The same corpus over Kafka, in fresh state (cold cache), with raw encode just before
    and after it (A B A), plus a steady-rate phase."""
    from kafka_path import measure, start_broker

    steady_docs = write_corpus(work / "steady-corpus", args.steady, seed=13)
    kafka_settings = settings.model_copy(update={"state_dir": work / "kafka-state"})
    broker: Any = start_broker(work)
    try:
        before = raw_encode()
        found = measure(
            kafka_settings, encoder, events(docs, "bench"), events(steady_docs, "steady"), broker.bootstrap
        )
        after = raw_encode()
    finally:
        broker.stop()
    found["ratio_kafka_vs_raw_encode"] = found["kafka_chunks_per_s"] / statistics.mean([before, after])
    return found


def events(paths: list[Path], source: str) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            source=source, doc_id=p.name, op="upsert", text=p.read_text(), version=p.stat().st_mtime_ns
        )
        for p in paths
    ]


def report(r: Results) -> None:
    print(
        f"\nembedstream bench: {r['documents']:.0f} documents, {r['chunks']:.0f} chunks; "
        f"{r['cpus']:.0f} CPUs, load average {r['load_before']:.1f} before, {r['load_after']:.1f} after"
    )
    rows = [
        ("raw SentenceTransformer.encode (median)", f"{r['raw_encode_chunks_per_s']:.1f} chunks/s"),
        (
            "embedded pipeline, first index (median)",
            f"{r['first_index_chunks_per_s']:.1f} chunks/s ({r['first_index_seconds']:.1f} s)",
        ),
        (
            "ratio first index / raw encode, A/B pairs",
            f"{r['ratio_first_index_vs_raw_encode']:.2f} median, {r['ratio_first_index_vs_raw_encode_min']:.2f}"
            f"-{r['ratio_first_index_vs_raw_encode_max']:.2f} spread (target >= 1.0)",
        ),
        (
            f"re-index, {r['reindex_changed_docs']:.0f} docs changed",
            f"{r['reindex_seconds']:.2f} s ({r['reindex_chunks_encoded']:.0f} chunks encoded); "
            f"first index / this: {r['ratio_reindex_speedup_vs_first']:.0f}x",
        ),
        (
            "re-index, nothing changed",
            f"{r['noop_seconds']:.2f} s; first index / this: {r['ratio_noop_reindex_speedup_vs_first']:.0f}x "
            "(target >= 100x)",
        ),
    ]
    if "split_pass_s" in r:
        rest = r["split_pass_s"] - r["split_load_wait_s"] - r["split_tokenize_s"] - r["split_forward_s"] - r["split_writes_s"]
        rows += [
            (
                "first index, fresh process: split of the pass",
                f"{r['split_pass_s']:.1f} s ({'bf16' if r['split_bf16'] else 'fp32'}, {r['split_encoded']:.0f} chunks, "
                f"{r['split_reused_ids']:.0f} with the chunker's token ids)",
            ),
            (
                "  model load (background) / waited for",
                f"{r['split_load_s']:.2f} s / {r['split_load_wait_s']:.2f} s",
            ),
            ("  tokenization (chunker + encoder)", f"{r['split_tokenize_s']:.2f} s"),
            ("  forward passes", f"{r['split_forward_s']:.2f} s"),
            ("  store writes", f"{r['split_writes_s']:.2f} s"),
            ("  the rest (read, chunk, hash, cache)", f"{rest:.2f} s"),
        ]
    if "small_update_median_s" in r:
        rows += [
            (
                f"small update, CLI ({r['small_update_chunks_encoded']:.0f} chunks of 80 docs)",
                f"{r['small_update_median_s']:.2f} s median, {r['small_update_max_s']:.2f} s max "
                "(target <= 1.5 s)",
            ),
            (
                "  first one after a first index",
                f"{r['small_update_first_s']:.2f} s " + background_build(r.get("small_backend_background_wait_s")),
            ),
            (
                f"one-shot search, CLI ({r['search_queries']:.0f} queries)",
                f"{r['search_median_s']:.2f} s median, {r['search_p90_s']:.2f} s p90 (target <= 1 s)",
            ),
            (
                f"no-op re-index, {r['noop_reindex_files']:.0f} files, CLI",
                f"{r['noop_reindex_wall_s']:.2f} s wall ({r['noop_reindex_pass_s']:.2f} s pass)",
            ),
        ]
    if "ratio_sql_snapshot_vs_fs" in r:
        rows.append(
            (
                "ratio SQL snapshot / filesystem, same texts",
                f"{r['ratio_sql_snapshot_vs_fs']:.2f} median of pairs, "
                f"{r['ratio_sql_snapshot_vs_fs_min']:.2f}-{r['ratio_sql_snapshot_vs_fs_max']:.2f} spread "
                f"(medians {r['sql_snapshot_docs_per_s']:.1f} vs {r['fs_first_index_docs_per_s']:.1f} docs/s)",
            )
        )
    rows += [
        ("sink only, precomputed vectors", f"{r['sink_points_per_s']:,.0f} points/s (target >= 20,000)"),
        ("embedded engine alone, same points", f"{r['engine_points_per_s']:,.0f} points/s (the ceiling)"),
        ("ratio sink / engine alone", f"{r['ratio_sink_vs_engine']:.2f}"),
    ]
    if "server_sink_points_per_s" in r:
        rows += [
            (
                "sink only into a Qdrant server (REST)",
                f"{r['server_sink_points_per_s']:,.0f} points/s, {r['server_points']:,.0f} points, median of "
                f"{r['server_rounds']:.0f} (target >= 20,000)",
            ),
            (
                "server alone, qdrant-client REST",
                f"{r['server_rest_points_per_s']:,.0f} points/s (the ceiling)",
            ),
            ("server alone, qdrant-client gRPC", f"{r['server_grpc_points_per_s']:,.0f} points/s"),
            (
                "ratio sink / server alone",
                f"{r['ratio_server_sink_vs_rest']:.2f} of REST (target >= 0.8), "
                f"{r['ratio_server_sink_vs_grpc']:.2f} of gRPC; gRPC / REST {r['ratio_server_grpc_vs_rest']:.2f}",
            ),
        ]
    if "kafka_chunks_per_s" in r:
        rate = r["steady_rate_docs_per_s"]
        rows += [
            ("Kafka path, same texts, cold cache", f"{r['kafka_chunks_per_s']:.1f} chunks/s"),
            (
                "ratio Kafka path / raw encode, A B A",
                f"{r['ratio_kafka_vs_raw_encode']:.2f}  (target >= 0.85)",
            ),
            (
                f"freshness at {rate:.2f} docs/s (half capacity)",
                f"p50 {r['freshness_p50_s']:.2f} s, p99 {r['freshness_p99_s']:.2f} s (target p99 <= 2 s)",
            ),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    raise SystemExit(main())
