"""`make bench`: throughput ratios measured side by side in one run, on the same texts.

1. raw ``SentenceTransformer.encode`` over the corpus' chunk texts (the ceiling);
2. the embedded pipeline's first index of the corpus (scan, chunk, cache, encode, upsert);
3. a re-index after 1% of the documents changed;
and the ratios between them. The model is loaded once, before any timing, and shared.
"""

from __future__ import annotations

import argparse
import json
import os
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

from corpus import edit, write_corpus  # noqa: E402

from connectors.filesystem import FilesystemSource  # noqa: E402
from pipeline.components import make_chunker  # noqa: E402
from pipeline.embedded import EmbeddedPipeline  # noqa: E402
from pipeline.encoder import SentenceTransformerEncoder  # noqa: E402
from pipeline.events import ChangeEvent  # noqa: E402
from pipeline.hashing import normalize_text  # noqa: E402
from pipeline.indexer import index_directory  # noqa: E402
from pipeline.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents in the corpus")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction edited before re-index")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-kafka", action="store_true", help="skip the Kafka path")
    parser.add_argument("--steady", type=int, default=60, help="documents sent at a steady rate")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embedstream-bench-"))
    docs = write_corpus(work / "corpus", args.docs)
    settings = Settings.load(state_dir=work / "state")
    encoder = SentenceTransformerEncoder(settings.model)
    chunker = make_chunker(encoder, settings)
    texts = [c.text for p in docs for c in chunker.chunk(normalize_text(p.read_text()))]
    model = encoder.load()
    model.encode(texts[:16], batch_size=16)  # warm-up: first-call allocations are not throughput

    results: dict[str, float] = {"documents": len(docs), "chunks": len(texts)}
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    results["raw_encode_chunks_per_s"] = len(texts) / (time.perf_counter() - started)

    with EmbeddedPipeline(settings, encoder=encoder) as pipeline:
        source = FilesystemSource(work / "corpus")
        first = index_directory(pipeline, work / "corpus", source)
        results["first_index_seconds"] = first.seconds
        results["first_index_chunks_per_s"] = first.encoded / first.seconds
        changed = max(1, round(len(docs) * args.changed))
        for path in docs[:: max(1, len(docs) // changed)][:changed]:
            edit(path, "bench")
        second = index_directory(pipeline, work / "corpus", source)
        results["reindex_changed_docs"] = second.changed
        results["reindex_chunks_encoded"] = second.encoded
        results["reindex_seconds"] = second.seconds

    if not args.no_kafka:
        results.update(kafka_results(work, settings, encoder, docs, args))
    results["ratio_first_index_vs_raw_encode"] = (
        results["first_index_chunks_per_s"] / results["raw_encode_chunks_per_s"]
    )
    results["ratio_reindex_speedup_vs_first"] = results["first_index_seconds"] / results["reindex_seconds"]
    if "kafka_chunks_per_s" in results:
        results["ratio_kafka_vs_raw_encode"] = (
            results["kafka_chunks_per_s"] / results["raw_encode_chunks_per_s"]
        )
        results["ratio_kafka_vs_embedded"] = (
            results["kafka_chunks_per_s"] / results["first_index_chunks_per_s"]
        )
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def kafka_results(
    work: Path, settings: Settings, encoder: SentenceTransformerEncoder, docs: list[Path], args: Any
) -> dict[str, float]:
    """The same corpus over Kafka, in fresh state (cold cache), plus a steady-rate phase."""
    from kafka_path import measure, start_broker

    steady_docs = write_corpus(work / "steady-corpus", args.steady, seed=13)
    kafka_settings = settings.model_copy(update={"state_dir": work / "kafka-state"})
    broker: Any = start_broker(work)
    try:
        return measure(
            kafka_settings, encoder, events(docs, "bench"), events(steady_docs, "steady"), broker.bootstrap
        )
    finally:
        broker.stop()


def events(paths: list[Path], source: str) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            source=source, doc_id=p.name, op="upsert", text=p.read_text(), version=p.stat().st_mtime_ns
        )
        for p in paths
    ]


def report(results: dict[str, float]) -> None:
    print(f"\nembedstream bench: {results['documents']:.0f} documents, {results['chunks']:.0f} chunks")
    rows = [
        ("raw SentenceTransformer.encode", f"{results['raw_encode_chunks_per_s']:.1f} chunks/s"),
        (
            "embedded pipeline, first index",
            f"{results['first_index_chunks_per_s']:.1f} chunks/s ({results['first_index_seconds']:.1f} s)",
        ),
        (
            f"re-index, {results['reindex_changed_docs']:.0f} docs changed",
            f"{results['reindex_seconds']:.2f} s ({results['reindex_chunks_encoded']:.0f} chunks encoded)",
        ),
        (
            "ratio first index / raw encode",
            f"{results['ratio_first_index_vs_raw_encode']:.2f}  (target >= 0.90)",
        ),
        (
            "ratio first index / re-index time",
            f"{results['ratio_reindex_speedup_vs_first']:.1f}x (target >= 20x)",
        ),
    ]
    if "kafka_chunks_per_s" in results:
        rate = results["steady_rate_docs_per_s"]
        rows += [
            ("Kafka path, same texts, cold cache", f"{results['kafka_chunks_per_s']:.1f} chunks/s"),
            (
                "ratio Kafka path / raw encode",
                f"{results['ratio_kafka_vs_raw_encode']:.2f}  (target >= 0.85)",
            ),
            ("ratio Kafka path / embedded", f"{results['ratio_kafka_vs_embedded']:.2f}"),
            (
                f"freshness at {rate:.2f} docs/s (half capacity)",
                f"p50 {results['freshness_p50_s']:.2f} s, p99 {results['freshness_p99_s']:.2f} s "
                "(target p99 <= 2 s)",
            ),
        ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    raise SystemExit(main())
