"""Retrieval evaluation over BEIR-format query sets: the numbers migration gates and
quantization reports compare.

Relevance is judged per document: a search returns chunks, a document counts as retrieved
at the rank of its best chunk, and each document counts once. Metrics follow trec_eval /
BEIR conventions: nDCG uses the graded qrels score as a linear gain with a ``log2(rank + 1)``
discount, a qrels score of 0 or less means "judged not relevant", and queries without any
relevant document in the qrels are skipped (they can neither be found nor missed).

Everything here is pure except the two loaders and :func:`evaluate`, which calls the search
function it is given and reads the clock it is given.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.store import Datatype, Quantization

Qrels = Mapping[str, Mapping[str, int]]
"""query id -> document id -> graded relevance (> 0 is relevant)."""

SearchFn = Callable[[str], Sequence[str]]
"""Query text -> document ids, best first."""


_DATATYPE_BYTES: Mapping[str, int] = {"float32": 4, "float16": 2, "uint8": 1}
_QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True)
class ChunkHit:
    doc_id: str
    score: float


@dataclass(frozen=True)
class VectorBytes:
    """Bytes one vector occupies: its stored form, plus its quantized codes if any."""

    stored: int
    quantized: int

    @property
    def searched(self) -> int:
        """What a search scans: the quantized codes when there are any."""
        return self.quantized or self.stored

    @property
    def total(self) -> int:
        """Everything kept (rescoring reads the stored vectors)."""
        return self.stored + self.quantized


@dataclass(frozen=True)
class QueryScores:
    ndcg_at_10: float
    mrr_at_10: float
    recall_at_10: float
    recall_at_100: float


@dataclass(frozen=True)
class EvalReport:
    label: str
    queries: int
    skipped: int
    ndcg_at_10: float
    mrr_at_10: float
    recall_at_10: float
    recall_at_100: float | None  # None when the search returned fewer than 100 documents a query
    latency_p50_ms: float
    latency_p99_ms: float
    bytes_per_vector: VectorBytes | None = None


# -- loading ------------------------------------------------------------------------------


def load_queries(path: Path) -> list[Query]:
    """BEIR ``queries.jsonl``: one ``{"_id": ..., "text": ...}`` object per line."""
    queries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            queries.append(_parse_query(line, f"{path}:{number}"))
    return queries


def _parse_query(line: str, where: str) -> Query:
    try:
        record = json.loads(line)
        return Query(str(record["_id"]), str(record["text"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f'{where}: expected a JSON object with "_id" and "text" ({exc})') from exc


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR ``qrels/*.tsv``: a ``query-id  corpus-id  score`` header, then one judgment a line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].strip().split("\t")) != _QRELS_HEADER:
        raise ConfigError(f"{path}: the first line must be the header {' '.join(_QRELS_HEADER)!r}")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            query_id, doc_id, grade = _parse_judgment(line, f"{path}:{number}")
            qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def _parse_judgment(line: str, where: str) -> tuple[str, str, int]:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 3:
        raise ConfigError(f"{where}: expected 3 tab-separated fields, found {len(fields)}")
    try:
        return fields[0], fields[1], int(fields[2])
    except ValueError as exc:
        raise ConfigError(f"{where}: the score must be an integer ({exc})") from exc


# -- from chunks to documents -------------------------------------------------------------


def rank_documents(hits: Iterable[ChunkHit]) -> list[str]:
    """Documents by their best chunk's score; equal scores by document id, so ties are stable."""
    best: dict[str, float] = {}
    for hit in hits:
        if hit.doc_id not in best or hit.score > best[hit.doc_id]:
            best[hit.doc_id] = hit.score
    return sorted(best, key=lambda doc: (-best[doc], doc))


def first_occurrences(ranked: Iterable[str]) -> list[str]:
    """Each id once, at its first (best) rank."""
    return list(dict.fromkeys(ranked))


# -- metrics ------------------------------------------------------------------------------


def ndcg_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Normalized discounted cumulative gain of the top ``k`` (linear gain, as trec_eval)."""
    gains = [max(judged.get(doc, 0), 0) for doc in first_occurrences(ranked)[:k]]
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    best = _dcg(ideal)
    return _dcg(gains) / best if best else 0.0


def _dcg(gains: Sequence[int]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def mrr_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document in the top ``k`` (0 if none)."""
    for rank, doc in enumerate(first_occurrences(ranked)[:k], start=1):
        if judged.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top ``k``."""
    relevant = {doc for doc, grade in judged.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(first_occurrences(ranked)[:k])) / len(relevant)


def score_query(ranked: Sequence[str], judged: Mapping[str, int]) -> QueryScores:
    return QueryScores(
        ndcg_at(ranked, judged, 10),
        mrr_at(ranked, judged, 10),
        recall_at(ranked, judged, 10),
        recall_at(ranked, judged, 100),
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p``% of values at or below it."""
    if not values:
        return math.nan
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def bytes_per_vector(
    dims: int, datatype: Datatype = "float32", quantization: Quantization = "none", compression: int = 16
) -> VectorBytes:
    """Stored bytes (dims x datatype size) and quantized bytes: int8 one byte a dimension,
    binary one bit, product ``compression`` times smaller than the float32 vector."""
    stored = dims * _DATATYPE_BYTES[datatype]
    quantized = {
        "none": 0,
        "int8": dims,
        "binary": math.ceil(dims / 8),
        "product": math.ceil(dims * 4 / compression),
    }[quantization]
    return VectorBytes(stored, quantized)


# -- evaluation ---------------------------------------------------------------------------


def judged_queries(queries: Sequence[Query], qrels: Qrels) -> list[Query]:
    """The queries that have at least one relevant document; the others cannot be scored."""
    return [q for q in queries if any(grade > 0 for grade in qrels.get(q.id, {}).values())]


def evaluate(
    search: SearchFn,
    queries: Sequence[Query],
    qrels: Qrels,
    label: str = "",
    vector_bytes: VectorBytes | None = None,
    depth: int = 100,
    clock: Callable[[], float] = time.perf_counter,
) -> EvalReport:
    """Run every judged query through ``search``, timing each call, and average the scores.

    ``depth`` is how many documents ``search`` returns at most; Recall@100 of a shallower
    search would only repeat Recall@10's misses, so it is reported as unknown (None).
    """
    judged = judged_queries(queries, qrels)
    scores: list[QueryScores] = []
    latencies_ms: list[float] = []
    for query in judged:
        started = clock()
        ranked = search(query.text)
        latencies_ms.append((clock() - started) * 1000)
        scores.append(score_query(ranked, qrels[query.id]))
    return EvalReport(
        label=label,
        queries=len(judged),
        skipped=len(queries) - len(judged),
        ndcg_at_10=_mean(s.ndcg_at_10 for s in scores),
        mrr_at_10=_mean(s.mrr_at_10 for s in scores),
        recall_at_10=_mean(s.recall_at_10 for s in scores),
        recall_at_100=_mean(s.recall_at_100 for s in scores) if depth >= 100 else None,
        latency_p50_ms=percentile(latencies_ms, 50),
        latency_p99_ms=percentile(latencies_ms, 99),
        bytes_per_vector=vector_bytes,
    )


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else math.nan


# -- reporting ----------------------------------------------------------------------------


def retained(report: EvalReport, baseline: EvalReport) -> float:
    """nDCG@10 of ``report`` as a share of the baseline's."""
    return report.ndcg_at_10 / baseline.ndcg_at_10 if baseline.ndcg_at_10 else math.nan


_HEADER = (
    "", "nDCG@10", "retained", "MRR@10", "R@10", "R@100", "p50 ms", "p99 ms",
    "B/vec searched", "B/vec stored", "searched vs first",
)  # fmt: skip


def format_comparison(reports: Sequence[EvalReport]) -> str:
    """One row per report, side by side; "retained" and "searched vs first" are relative to
    the first report (the live version, or the float32 baseline)."""
    if not reports:
        return ""
    rows = [_HEADER, *(_row(r, reports[0]) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    return "\n".join(_line(row, widths) for row in rows)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    # The label column is left-aligned, the numbers right-aligned.
    padded = [cells[0].ljust(widths[0])]
    padded += [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join(padded).rstrip()


def _row(report: EvalReport, baseline: EvalReport) -> tuple[str, ...]:
    size, first = report.bytes_per_vector, baseline.bytes_per_vector
    return (
        report.label,
        f"{report.ndcg_at_10:.4f}",
        f"{retained(report, baseline):.1%}",
        f"{report.mrr_at_10:.4f}",
        f"{report.recall_at_10:.4f}",
        "-" if report.recall_at_100 is None else f"{report.recall_at_100:.4f}",
        f"{report.latency_p50_ms:.2f}",
        f"{report.latency_p99_ms:.2f}",
        str(size.searched) if size else "-",
        str(size.total) if size else "-",
        f"{size.searched / first.searched:.3f}" if size and first else "-",
    )
