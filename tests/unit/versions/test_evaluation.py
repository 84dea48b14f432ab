"""Unit tests for retrieval metrics, BEIR loaders, bytes per vector and the comparison table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.versions.evaluation import (
    ChunkHit,
    EvalReport,
    Query,
    VectorBytes,
    bytes_per_vector,
    evaluate,
    first_occurrences,
    format_comparison,
    judged_queries,
    load_qrels,
    load_queries,
    mrr_at,
    ndcg_at,
    percentile,
    rank_documents,
    recall_at,
    retained,
)

LOG2_3 = math.log2(3)


def test_ndcg_of_a_single_relevant_document_at_rank_two() -> None:
    """One relevant document at rank 2 scores 1/log2(3) against an ideal of 1."""
    assert ndcg_at(["a", "b", "c"], {"b": 1}, 10) == pytest.approx(1 / LOG2_3)


def test_ndcg_uses_graded_relevance_as_linear_gain() -> None:
    """Grades are gains: DCG 2/log2(3) + 1/2 over the ideal 3 + 2/log2(3) + 1/2."""
    judged = {"a": 2, "b": 1, "c": 3}
    expected = (2 / LOG2_3 + 1 / 2) / (3 + 2 / LOG2_3 + 1 / 2)
    assert ndcg_at(["x", "a", "b"], judged, 10) == pytest.approx(expected)


def test_ndcg_is_one_for_the_ideal_order() -> None:
    """Ranking by descending grade is ideal, whatever follows the judged documents."""
    assert ndcg_at(["c", "a", "b", "z"], {"a": 2, "b": 1, "c": 3}, 10) == pytest.approx(1.0)


def test_ndcg_counts_a_document_once_at_its_best_rank() -> None:
    """Two chunks of one document do not push the next document down a rank."""
    assert ndcg_at(["a", "a", "b"], {"b": 1}, 10) == pytest.approx(1 / LOG2_3)


def test_ndcg_ideal_is_cut_at_k() -> None:
    """With more relevant documents than k, a top k of relevant ones is still perfect."""
    judged = {f"d{i}": 1 for i in range(12)}
    assert ndcg_at([f"d{i}" for i in range(10)], judged, 10) == pytest.approx(1.0)


def test_ndcg_ignores_documents_past_k() -> None:
    """A relevant document at rank 11 earns nothing at nDCG@10."""
    ranked = [f"x{i}" for i in range(10)] + ["a"]
    assert ndcg_at(ranked, {"a": 1}, 10) == 0.0


def test_zero_and_negative_grades_are_not_relevant() -> None:
    """A qrels score of 0 or less adds no gain and is not a hit."""
    judged = {"a": 0, "n": -1, "b": 1}
    assert ndcg_at(["a", "n", "b"], judged, 10) == pytest.approx(1 / 2)
    assert mrr_at(["a", "n", "b"], judged, 10) == pytest.approx(1 / 3)
    assert recall_at(["a", "n"], judged, 10) == 0.0


def test_metrics_without_relevant_documents_are_zero() -> None:
    """A judgment list with nothing relevant scores 0 rather than dividing by zero."""
    assert ndcg_at(["a"], {"a": 0}, 10) == 0.0
    assert recall_at(["a"], {}, 10) == 0.0


def test_empty_ranking_scores_zero() -> None:
    """A search that returns nothing scores 0 on every metric."""
    assert ndcg_at([], {"a": 1}, 10) == 0.0
    assert mrr_at([], {"a": 1}, 10) == 0.0
    assert recall_at([], {"a": 1}, 10) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_hit() -> None:
    """The first relevant document at rank 3 gives 1/3, later ones do not matter."""
    assert mrr_at(["x", "y", "a", "b"], {"a": 1, "b": 2}, 10) == pytest.approx(1 / 3)


def test_mrr_is_zero_when_the_first_hit_is_past_k() -> None:
    """A relevant document at rank 11 gives MRR@10 of 0."""
    assert mrr_at([f"x{i}" for i in range(10)] + ["a"], {"a": 1}, 10) == 0.0


def test_mrr_counts_ranks_after_removing_duplicate_documents() -> None:
    """Repeated chunks of one document occupy a single rank."""
    assert mrr_at(["x", "x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)


def test_recall_is_the_share_of_relevant_documents_found() -> None:
    """One of two relevant documents in the top k is a recall of 0.5."""
    assert recall_at(["a", "x"], {"a": 1, "b": 1}, 10) == pytest.approx(0.5)


def test_recall_at_100_sees_what_recall_at_10_misses() -> None:
    """A relevant document at rank 50 counts at 100 but not at 10."""
    ranked = [f"x{i}" for i in range(49)] + ["a"]
    assert recall_at(ranked, {"a": 1}, 10) == 0.0
    assert recall_at(ranked, {"a": 1}, 100) == 1.0


def test_rank_documents_orders_by_best_chunk_and_breaks_ties_by_id() -> None:
    """A document ranks by its best chunk; equal best scores fall back to document id."""
    hits = [ChunkHit("b", 0.9), ChunkHit("a", 0.9), ChunkHit("c", 0.95), ChunkHit("b", 0.5)]
    assert rank_documents(hits) == ["c", "a", "b"]


def test_rank_documents_keeps_a_later_better_chunk() -> None:
    """A document's rank comes from its best chunk even when a worse one came first."""
    hits = [ChunkHit("a", 0.2), ChunkHit("b", 0.5), ChunkHit("a", 0.8)]
    assert rank_documents(hits) == ["a", "b"]


def test_first_occurrences_keeps_order() -> None:
    """Each id appears once, where it first appeared."""
    assert first_occurrences(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_percentile_uses_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; of three values, p50 is the middle one."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_percentile_with_tied_values() -> None:
    """Tied values are counted individually: three 5s and one 9 put p50 and p75 at 5."""
    assert percentile([5.0, 9.0, 5.0, 5.0], 50) == 5.0
    assert percentile([5.0, 9.0, 5.0, 5.0], 75) == 5.0
    assert percentile([5.0, 9.0, 5.0, 5.0], 99) == 9.0


def test_percentile_of_one_value_and_of_none() -> None:
    """One value is every percentile; no values give NaN."""
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range() -> None:
    """A percentile of 0 or above 100 is a caller error."""
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 0)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


@pytest.mark.parametrize(
    ("args", "stored", "quantized", "searched"),
    [
        ((384, "float32", "none"), 1536, 0, 1536),
        ((384, "float16", "none"), 768, 0, 768),
        ((384, "uint8", "none"), 384, 0, 384),
        ((384, "float32", "int8"), 1536, 384, 384),
        ((384, "float32", "binary"), 1536, 48, 48),
        ((100, "float32", "binary"), 400, 13, 13),
        ((256, "float32", "none"), 1024, 0, 1024),
        ((384, "float16", "int8"), 768, 384, 384),
    ],
)
def test_bytes_per_vector(args: tuple[int, str, str], stored: int, quantized: int, searched: int) -> None:
    """Stored bytes are dims x datatype size; int8 codes take a byte a dimension, binary a bit."""
    size = bytes_per_vector(*args)  # type: ignore[arg-type]
    assert (size.stored, size.quantized, size.searched) == (stored, quantized, searched)
    assert size.total == stored + quantized


def test_product_quantization_bytes_follow_the_compression_ratio() -> None:
    """Product quantization at x16 shrinks a 1,536-byte float32 vector to 96 bytes, at x4 to 384."""
    assert bytes_per_vector(384, "float32", "product", 16).quantized == 96
    assert bytes_per_vector(384, "float32", "product", 4).quantized == 384


def test_load_queries_reads_jsonl_and_skips_blank_lines(tmp_path: Path) -> None:
    """Each non-blank line is one query with its id and text."""
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "list files"}\n\n{"_id": 2, "text": "copy", "x": 1}\n')
    assert load_queries(path) == [Query("q1", "list files"), Query("2", "copy")]


def test_load_queries_names_the_bad_line(tmp_path: Path) -> None:
    """A line without text is a configuration error that names the file and line."""
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "ok"}\n{"_id": "q2"}\n')
    with pytest.raises(ConfigError, match=r"queries.jsonl:2"):
        load_queries(path)


def test_load_qrels_groups_judgments_by_query(tmp_path: Path) -> None:
    """Rows become query -> document -> integer grade, several documents per query allowed."""
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\nq2\td3\t0\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 0}}


def test_load_qrels_requires_the_beir_header(tmp_path: Path) -> None:
    """A file without the BEIR header is refused instead of losing its first judgment."""
    path = tmp_path / "test.tsv"
    path.write_text("q1\td1\t1\n")
    with pytest.raises(ConfigError, match="header"):
        load_qrels(path)


@pytest.mark.parametrize("row", ["q1\td1", "q1\td1\thigh"])
def test_load_qrels_names_the_bad_row(tmp_path: Path, row: str) -> None:
    """A row with missing fields or a non-integer score names its line."""
    path = tmp_path / "test.tsv"
    path.write_text(f"query-id\tcorpus-id\tscore\n{row}\n")
    with pytest.raises(ConfigError, match=r"test.tsv:2"):
        load_qrels(path)


def test_judged_queries_drops_queries_without_relevant_documents() -> None:
    """Queries missing from the qrels, or judged only not-relevant, cannot be scored."""
    queries = [Query("q1", "a"), Query("q2", "b"), Query("q3", "c")]
    assert judged_queries(queries, {"q1": {"d": 1}, "q3": {"d": 0}}) == [Query("q1", "a")]


def fake_clock(step_ms: Iterator[float]) -> Callable[[], float]:
    """A clock that advances by the next step at every second reading (one query's call)."""
    now = [0.0]
    reads = [0]

    def clock() -> float:
        if reads[0] % 2:
            now[0] += next(step_ms) / 1000
        reads[0] += 1
        return now[0]

    return clock


def test_evaluate_averages_scores_and_times_each_query() -> None:
    """Two judged queries average their metrics; latency percentiles come from the clock."""
    results = {"ls": ["ls.1", "dir.1"], "copy": ["mv.1", "x", "cp.1"], "nothing": []}
    queries = [Query("q1", "ls"), Query("q2", "copy"), Query("q3", "nothing")]
    qrels = {"q1": {"ls.1": 1}, "q2": {"cp.1": 1}}
    report = evaluate(
        lambda text: results[text],
        queries,
        qrels,
        label="v1",
        vector_bytes=VectorBytes(1536, 0),
        clock=fake_clock(iter([2.0, 4.0])),
    )
    assert (report.label, report.queries, report.skipped) == ("v1", 2, 1)
    assert report.ndcg_at_10 == pytest.approx((1 + 1 / 2) / 2)
    assert report.mrr_at_10 == pytest.approx((1 + 1 / 3) / 2)
    assert (report.recall_at_10, report.recall_at_100) == (1.0, 1.0)
    assert (report.latency_p50_ms, report.latency_p99_ms) == pytest.approx((2.0, 4.0))
    assert report.bytes_per_vector == VectorBytes(1536, 0)


def test_evaluate_never_calls_search_for_unjudged_queries() -> None:
    """Queries without relevant documents are skipped, not searched."""
    searched: list[str] = []

    def search(text: str) -> list[str]:
        searched.append(text)
        return []

    report = evaluate(search, [Query("q1", "a"), Query("q2", "b")], {"q2": {"d": 1}})
    assert searched == ["b"]
    assert (report.queries, report.skipped, report.ndcg_at_10) == (1, 1, 0.0)


def test_evaluate_leaves_recall_at_100_unknown_for_a_shallow_search() -> None:
    """A search that returns at most 10 documents cannot be scored at 100."""
    report = evaluate(lambda _: ["d"], [Query("q1", "a")], {"q1": {"d": 1}}, depth=10)
    assert report.recall_at_10 == 1.0
    assert report.recall_at_100 is None
    assert format_comparison([report]).splitlines()[1].split()[4] == "-"


def report(label: str, ndcg: float, size: VectorBytes | None) -> EvalReport:
    return EvalReport(label, 100, 0, ndcg, 0.5, 0.75, 0.9, 1.25, 3.5, size)


def test_retained_is_relative_to_the_baseline() -> None:
    """0.792 against 0.8 retains 99%; a zero baseline gives NaN."""
    assert retained(report("b", 0.792, None), report("a", 0.8, None)) == pytest.approx(0.99)
    assert math.isnan(retained(report("b", 0.5, None), report("a", 0.0, None)))


def test_format_comparison_puts_reports_side_by_side() -> None:
    """One row per report under a header, quality and size relative to the first report."""
    table = format_comparison(
        [
            report("float32", 0.8, VectorBytes(1536, 0)),
            report("int8 + rescore", 0.792, VectorBytes(1536, 384)),
        ]
    )
    header, first, second = table.splitlines()
    assert header.split()[:3] == ["nDCG@10", "retained", "MRR@10"]
    assert first.split() == ["float32", "0.8000", "100.0%", "0.5000", "0.7500", "0.9000", "1.25", "3.50",
                             "1536", "1536", "1.000"]  # fmt: skip
    assert second.split()[-4:] == ["3.50", "384", "1920", "0.250"]
    assert "99.0%" in second.split()
    assert len({len(line) for line in (header, first, second)}) == 1  # aligned columns


def test_format_comparison_without_sizes_or_reports() -> None:
    """Unknown sizes print as dashes; no reports print nothing."""
    assert format_comparison([report("v1", 0.5, None)]).splitlines()[1].split()[-3:] == ["-", "-", "-"]
    assert format_comparison([]) == ""
