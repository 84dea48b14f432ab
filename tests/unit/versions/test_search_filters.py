"""Unit tests for --filter parsing, the store filters it becomes, and empty-answer messages."""

from __future__ import annotations

import pytest

from pipeline.versions.search import filter_variants, nothing_found, parse_filter


def test_parse_filter_keeps_the_value_verbatim() -> None:
    """Only the first = splits; the value may be empty or contain = itself."""
    assert parse_filter("title=a=b") == ("title", "a=b")
    assert parse_filter("ext=") == ("ext", "")


@pytest.mark.parametrize("bad", ["title", "=x", " =x"])
def test_parse_filter_refuses_a_missing_key(bad: str) -> None:
    """A filter without key= is refused with the offending text."""
    with pytest.raises(ValueError, match="key=value"):
        parse_filter(bad)


def test_strings_stay_strings_and_integers_get_a_second_chance() -> None:
    """title=2024 is matched as the string "2024", and also as the integer 2024."""
    assert filter_variants({"title": "2024"}) == [{"metadata.title": "2024"}, {"metadata.title": 2024}]
    assert filter_variants({"ext": ".md"}) == [{"metadata.ext": ".md"}]


@pytest.mark.parametrize("raw", ["007", "+7", "1e3", "7.0", " 7", ""])
def test_only_plain_integers_are_tried_as_numbers(raw: str) -> None:
    """A value that int() would change when printed back (007, +7, ' 7') stays a string only."""
    assert filter_variants({"n": raw}) == [{"metadata.n": raw}]


def test_top_level_fields_are_not_metadata() -> None:
    """doc_id, source, doc_key and explicit metadata.* keys are used as given."""
    variants = filter_variants({"doc_id": "a.md", "source": "fs", "doc_key": "fs/a.md", "metadata.x": "y"})
    assert variants == [{"doc_id": "a.md", "source": "fs", "doc_key": "fs/a.md", "metadata.x": "y"}]


def test_integer_alternatives_are_capped() -> None:
    """Five integer-looking values give 2**3 variants, not 2**5: the rest stay strings."""
    variants = filter_variants({f"k{i}": str(i) for i in range(5)})
    assert len(variants) == 8
    assert all(v["metadata.k4"] == "4" for v in variants)


def test_no_filters_is_one_unfiltered_search() -> None:
    """Without filters there is exactly one search, with no conditions."""
    assert filter_variants({}) == [{}]


def test_empty_answers_say_why() -> None:
    """An empty index and a filter that matches nothing get different messages."""
    empty = nothing_found("docs", 0, {"ext": ".md"})
    unmatched = nothing_found("docs", 12, {"ext": ".md", "title": "x"})
    assert "nothing is indexed" in empty
    assert "no document matches --filter ext=.md --filter title=x" in unmatched
    assert "12 documents" in unmatched
