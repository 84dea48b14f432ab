"""Search over the real embedded engine and a real (tiny) model: documents, not chunks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.settings import IndexSettings, ModelSettings
from pipeline.core.errors import ConfigError
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.store import PointWrite
from pipeline.store.edge import EdgeStore
from pipeline.versions.search import search_documents
from pipeline.versions.spec import IndexVersion, create_version

LONG_DOC_CHUNKS = 60
SHORT_DOCS = {
    "gardening.md": "Tomatoes need sun, water and a stake to climb.",
    "cooking.md": "Simmer the onions slowly before adding the rice.",
    "astronomy.md": "Jupiter has dozens of moons and a great red spot.",
    "finance.md": "Compound interest grows savings over many years.",
    "music.md": "A minor chord sounds darker than a major chord.",
    "sports.md": "The marathon distance is a little over forty two kilometres.",
}


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(ModelSettings(name=str(tiny_model)))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStore]:
    """One store for the module: every test only reads it."""
    engine = EdgeStore(tmp_path_factory.mktemp("search") / "qdrant")
    yield engine
    engine.close()


def long_chunk(i: int) -> str:
    return f"Harbour ships unload containers at dawn, crane number {i} lifts them onto trucks."


def write_document(
    store: EdgeStore,
    version: IndexVersion,
    encoder: SentenceTransformerEncoder,
    doc_id: str,
    chunks: list[str],
    metadata: dict[str, Any],
) -> None:
    vectors = version.to_storage(encoder.encode_documents(chunks))
    key = f"fs/{doc_id}"
    payload = {"doc_key": key, "source": "fs", "doc_id": doc_id, "version": 1, "metadata": metadata}
    store.upsert(
        version.collection,
        [
            PointWrite(
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{n}")), vector.tolist(), {**payload, "text": text}
            )
            for n, (text, vector) in enumerate(zip(chunks, vectors, strict=True))
        ],
    )


@pytest.fixture(scope="module")
def version(store: EdgeStore, encoder: SentenceTransformerEncoder) -> IndexVersion:
    """One long document of 60 near-identical chunks, six short ones, metadata of both kinds."""
    full_dims = encoder.encode_queries(["probe"]).shape[1]
    plan = IndexVersion.plan(IndexSettings(quantization="none"), 1, encoder.fingerprint, full_dims)
    create_version(store, plan)
    chunks = [long_chunk(i) for i in range(LONG_DOC_CHUNKS)]
    write_document(store, plan, encoder, "harbour.md", chunks, {"title": "Harbour", "bytes": 9000})
    for n, (doc_id, text) in enumerate(SHORT_DOCS.items()):
        title = "2024" if doc_id == "finance.md" else doc_id.removesuffix(".md")
        write_document(store, plan, encoder, doc_id, [text], {"title": title, "bytes": 1200 + n})
    store.flush()
    return plan


def test_k_documents_when_one_long_document_owns_the_best_chunks(store, version, encoder):
    """-k 5 returns 5 distinct documents although the 60 best chunk hits all belong to one."""
    results = search_documents(store, version, encoder, long_chunk(7), 5)
    assert len(results) == 5
    assert results[0].doc_id == "harbour.md"
    assert len({r.doc_id for r in results}) == 5
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_fewer_matching_documents_than_k_returns_them_all(store, version, encoder):
    """Asking for more documents than exist returns every document once, and stops."""
    results = search_documents(store, version, encoder, "anything at all", 50)
    assert sorted(r.doc_id for r in results) == sorted(["harbour.md", *SHORT_DOCS])


def test_a_number_like_filter_value_matches_a_string(store, version, encoder):
    """--filter title=2024 finds the document whose title is the string "2024"."""
    results = search_documents(store, version, encoder, "savings", 10, {"title": "2024"})
    assert [r.doc_id for r in results] == ["finance.md"]


def test_an_integer_filter_value_also_matches_an_integer(store, version, encoder):
    """--filter bytes=1202 still finds the document whose metadata holds the number 1202."""
    results = search_documents(store, version, encoder, "anything", 10, {"bytes": "1202"})
    assert [r.doc_id for r in results] == [list(SHORT_DOCS)[2]]


def test_top_level_and_metadata_filters_combine(store, version, encoder):
    """doc_id is matched on the point, title in metadata; both must hold."""
    both = {"doc_id": "music.md", "title": "music"}
    assert [r.doc_id for r in search_documents(store, version, encoder, "chord", 10, both)] == ["music.md"]
    assert search_documents(store, version, encoder, "chord", 10, {**both, "title": "sports"}) == []


def test_nothing_indexed_is_an_empty_answer(store, encoder):
    """Without a live version there is nothing to search and nothing to encode."""
    assert search_documents(store, None, encoder, "ships", 3) == []


def test_an_empty_query_is_refused(store, version, encoder):
    """A blank query is a caller's mistake, never an empty vector search."""
    with pytest.raises(ValueError, match="empty"):
        search_documents(store, version, encoder, "  \n", 3)


def test_another_model_is_refused(store, version, other_tiny_model):
    """Searching with a model other than the index's is a ConfigError naming both."""
    other = SentenceTransformerEncoder(ModelSettings(name=str(other_tiny_model)))
    with pytest.raises(ConfigError, match="was built with model"):
        search_documents(store, version, other, "ships", 3)
