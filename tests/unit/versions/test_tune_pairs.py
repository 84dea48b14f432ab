"""Training pairs for `embedstream tune`: from a pairs file, from the documents' structure,
the held-out split, and the choice of hard negatives (pure logic, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.versions.negatives import Candidate, HeldOut, choose_negatives, evaluate_held_out
from pipeline.versions.pairs import (
    Document,
    Pair,
    beir_files,
    derive_pair,
    derive_pairs,
    join_chunks,
    load_pairs,
    split_held_out,
    without_copies,
)

BODY = "The quick brown fox jumps over the lazy dog, again and again, until the dog gets up. " * 2

MAN_PAGE = f"""LS(1)                     User Commands                    LS(1)

NAME
       ls - list directory
       contents

SYNOPSIS
       ls [OPTION]... [FILE]...

DESCRIPTION
       List information about the FILEs. {BODY}"""


def test_a_man_page_name_line_is_the_query_and_the_page_after_it_the_positive():
    """NAME's description (across a wrapped line) is the query; the positive starts after
    the NAME section and holds no copy of it."""
    pair = derive_pair(Document("ls.1", MAN_PAGE + " It will List directory contents."))
    assert pair is not None
    assert (pair.query, pair.rule, pair.doc_id) == ("list directory contents", "name", "ls.1")
    assert pair.positive.startswith("SYNOPSIS")
    assert "list directory contents" not in pair.positive.lower()
    assert "NAME" not in pair.positive


def test_a_markdown_heading_gives_the_section_it_heads():
    """The first heading's section ends at the next heading of its level or above; a
    sub-heading stays inside; a `# comment` in a code fence is no heading."""
    text = (
        "```sh\n# not a heading\n```\n\n## Rotating the door sensor battery\n\n"
        f"{BODY}\n\n### Tools\n\nA screwdriver.\n\n## Pairing\n\nPress the button."
    )
    pair = derive_pair(Document("doc.md", text))
    assert pair is not None
    assert (pair.query, pair.rule) == ("Rotating the door sensor battery", "heading")
    assert "A screwdriver." in pair.positive
    assert "Press the button" not in pair.positive


def test_docstring_title_and_title_line_rules():
    """A module docstring's first sentence; metadata.title; a short first line."""
    code = f'"""Parse the harbour tide tables. More words follow here."""\n\n# {BODY}\ndef tide(): ...\n'
    assert derive_pair(Document("tides.py", code)) == Pair(
        "Parse the harbour tide tables.",
        derive_pair(Document("tides.py", code)).positive,  # type: ignore[union-attr]
        "tides.py",
        "docstring",
    )
    titled = derive_pair(
        Document("row-1", f"Orchard pruning calendar\n{BODY}", {"title": "Orchard pruning calendar"})
    )
    assert titled is not None
    assert (titled.rule, titled.query) == ("title", "Orchard pruning calendar")
    assert "Orchard pruning" not in titled.positive
    line = derive_pair(Document("notes.txt", f"Glacier retreat in the Alps\n\n{BODY}"))
    assert line is not None
    assert (line.rule, line.query) == ("title line", "Glacier retreat in the Alps")


def test_documents_without_structure_are_counted_not_paired():
    """A plain paragraph, a one-word title and a section too short to learn from give no pair."""
    derived = derive_pairs(
        [
            Document("a", BODY),
            Document("b", f"# Harbours\n\n{BODY}"),
            Document("c", "# Two words\n\nshort"),
            Document("d", f"# Lighthouse keepers of Brittany\n\n{BODY}"),
        ]
    )
    assert [p.doc_id for p in derived.pairs] == ["d"]
    assert (derived.by_rule, derived.without_structure) == ({"heading": 1}, 3)


def test_copies_of_the_query_are_removed_across_line_breaks():
    """Any case, any whitespace between the words."""
    assert (
        without_copies("Intro. List Directory\n  contents here.", "list directory contents")
        == "Intro.  here."
    )


def test_chunks_are_joined_with_their_overlap_kept_once():
    """Consecutive chunks share an overlap; without one (a coincidence under 8
    characters), they are joined as paragraphs."""
    assert join_chunks(["alpha beta gamma delta", "gamma delta epsilon"]) == "alpha beta gamma delta epsilon"
    assert join_chunks(["one two", "two three"]) == "one two\n\ntwo three"
    assert join_chunks([]) == ""


def test_a_pairs_file_reports_every_malformed_line_by_number(tmp_path):
    """Not JSON, not an object, a missing or empty field: each line named, all at once."""
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps({"query": "q1", "positive": "p1"}),
        "{not json",
        "",
        json.dumps(["query", "positive"]),
        json.dumps({"query": "q2"}),
        json.dumps({"query": " ", "positive": "p"}),
        json.dumps({"query": "q3", "positive": "p3", "doc_id": "d3"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_pairs(path)
    problems = caught.value.problems
    assert "4 malformed line(s)" in problems[0]
    assert [p.split(":")[1] for p in problems[1:]] == ["2", "4", "5", "6"]
    assert "not JSON" in problems[1]
    assert "'positive' must be a string" in problems[3]

    path.write_text("\n".join([lines[0], lines[-1]]))
    assert load_pairs(path) == [Pair("q1", "p1"), Pair("q3", "p3", "d3")]


def test_a_missing_or_empty_pairs_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pairs(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no pairs"):
        load_pairs(tmp_path / "empty.jsonl")


def test_the_held_out_split_is_seeded_by_document_and_order_free():
    """Same seed, same split whatever the order; all pairs of a document on one side;
    another seed, another split."""
    pairs = [Pair(f"q{n}", f"p{n}", f"doc{n // 2}") for n in range(40)]
    split = split_held_out(pairs, 0.25, seed=3)
    again = split_held_out(list(reversed(pairs)), 0.25, seed=3)
    assert {p.doc_id for p in split.held_out} == {p.doc_id for p in again.held_out}
    assert len({p.doc_id for p in split.held_out}) == 5
    assert not {p.doc_id for p in split.held_out} & {p.doc_id for p in split.train}
    assert {p.doc_id for p in split_held_out(pairs, 0.25, seed=4).held_out} != {
        p.doc_id for p in split.held_out
    }


def test_beir_files_need_the_documents():
    queries, qrels = beir_files([Pair("q one", "p", "a.md")]) or ("", "")
    assert json.loads(queries) == {"_id": "t1", "text": "q one"}
    assert qrels == "query-id\tcorpus-id\tscore\nt1\ta.md\t1\n"
    assert beir_files([Pair("q", "p")]) is None


def test_hard_negatives_skip_the_positive_held_out_documents_and_near_duplicates():
    """Best first: the positive's document, a held-out document, a copy of the positive
    and a hit over the ceiling are skipped; the rest is kept up to the count."""
    pair = Pair("query", "the positive text", "pos")
    candidates = [
        Candidate("pos", "anything", 0.9),
        Candidate("held", "held-out text", 0.8),
        Candidate("copy", "the positive text", 0.7),
        Candidate("close", "a near duplicate", 0.58),
        Candidate("n1", "negative one", 0.5),
        Candidate("n2", "negative two", 0.4),
        Candidate("n3", "negative three", 0.3),
    ]
    choice = choose_negatives(candidates, pair, positive_score=0.6, count=2, ceiling=0.95, excluded={"held"})
    assert [c.doc_id for c in choice.negatives] == ["n1", "n2"]
    assert choice.near_duplicates == 2


def test_held_out_evaluation_ranks_documents_exactly():
    """Each held-out query against every positive: a perfect model scores 1, a model at
    a smaller size is truncated first."""
    train = [Pair("t", "train text", "t.md")]
    held = [Pair("h1", "first", "a.md"), Pair("h2", "second", "b.md")]
    h = HeldOut.of(train, held)
    assert h.corpus_ids == ["a.md", "b.md", "t.md"]
    queries = np.eye(3, dtype=np.float32)[:2]
    corpus = np.eye(3, dtype=np.float32)
    report = evaluate_held_out(h, queries, corpus, "base 3")
    assert (report.ndcg_at_10, report.mrr_at_10, report.queries) == (1.0, 1.0, 2)
    swapped = evaluate_held_out(h, queries[::-1].copy(), corpus, "bad 3")
    assert swapped.mrr_at_10 == 0.5
