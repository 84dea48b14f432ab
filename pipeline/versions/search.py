"""Search an index version: the ``k`` best documents, each with its best chunk.

Points are chunks, but a user asks for documents: ``-k 5`` must return five documents
when five match, even when one long document owns the 20 best chunks. So chunk hits are
fetched in growing batches until ``k`` distinct documents are found or the collection has
no more matches. Written over the ``VectorStore`` port, an :class:`IndexVersion` and an
``Encoder``, so the embedded pipeline, the watcher and the CLI answer the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.store import Hit, Scalar, SearchOptions, VectorStore
from pipeline.store.payload import DOC_KEY
from pipeline.versions.doc_states import DocStates
from pipeline.versions.spec import IndexVersion

FIRST_HITS_PER_DOCUMENT = 4  # chunk hits asked for per wanted document, first request
GROWTH = 4  # each later request asks for this many times more chunk hits
# Keys matched on the point itself; any other key means metadata.<key>.
TOP_LEVEL_FIELDS = frozenset({"doc_id", "source", DOC_KEY})
# A filter value that reads as an integer is also tried as one; each such key doubles the
# searches (the engine matches a keyword and an integer only separately), so cap them.
MAX_INTEGER_FILTERS = 3
#: The most documents one search returns (``-k``): the engine counts hits in 64 bits, and
#: FIRST_HITS_PER_DOCUMENT times more chunk hits are asked for.
MAX_K = 10_000


@dataclass(frozen=True)
class SearchResult:
    doc_id: str
    source: str
    score: float
    text: str
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "score": self.score,
            "text": self.text,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class SearchAnswer:
    """What ``embedstream search`` prints, wherever it was answered."""

    results: list[dict[str, Any]]  # SearchResult.as_json() of each document, best first
    empty: str | None  # why there are no results, when there are none


def search_documents(
    store: VectorStore,
    version: IndexVersion | None,
    encoder: Encoder,
    query: str,
    k: int,
    filters: Mapping[str, str] | None = None,
) -> list[SearchResult]:
    """The ``k`` best documents for ``query``, best first; fewer only when fewer match.

    ``version`` is the one to search (the alias's live version; None: nothing indexed).
    ``filters`` are ``--filter key=value`` pairs: every value is compared as the string it
    is, and one written as an integer also matches that integer (see :func:`filter_variants`).
    """
    if not query.strip():
        raise ValueError("the query is empty")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
    if version is None:
        return []
    check_model(version, encoder)
    vector = version.to_storage(encoder.encode_queries([query]))[0].tolist()
    variants = filter_variants(filters or {})
    limit = k * FIRST_HITS_PER_DOCUMENT
    while True:
        hits, exhausted = _fetch(store, version, vector, variants, limit)
        best = best_chunk_per_document(hits)
        if len(best) >= k or exhausted:
            return best[:k]
        limit *= GROWTH


def check_model(version: IndexVersion, encoder: Encoder) -> None:
    """Vectors of another model are not comparable: refuse rather than answer nonsense."""
    if version.fingerprint != encoder.fingerprint:
        msg = (
            f"index {version.name!r} ({version.collection}) was built with model {version.fingerprint}, "
            f"but this search uses {encoder.fingerprint}: set model.name (--model) to the model "
            "the index was built with"
        )
        raise ConfigError(msg)


def _fetch(
    store: VectorStore,
    version: IndexVersion,
    vector: list[float],
    variants: Sequence[Mapping[str, Scalar]],
    limit: int,
) -> tuple[list[Hit], bool]:
    """Up to ``limit`` chunk hits per filter variant, best first, and whether that was all."""
    hits: list[Hit] = []
    exhausted = True
    for variant in variants:
        options = SearchOptions(
            limit=limit, filters=variant or None,
            oversampling=version.oversampling, rescore=version.rescore,
        )  # fmt: skip
        found = store.search(version.collection, vector, options)
        # As cosine similarities, whatever the collection compares (uint8: distances).
        hits.extend(dataclasses.replace(hit, score=version.similarity(hit.score)) for hit in found)
        exhausted = exhausted and len(found) < limit
    hits.sort(key=lambda hit: -hit.score)  # stable: ties keep the store's order
    return hits, exhausted


def best_chunk_per_document(hits: Sequence[Hit]) -> list[SearchResult]:
    """One result per document, in the order of its best hit (``hits`` come best first)."""
    best: dict[str, SearchResult] = {}
    for hit in hits:
        key = str(hit.payload.get(DOC_KEY))
        if key not in best:
            best[key] = SearchResult(
                str(hit.payload.get("doc_id")), str(hit.payload.get("source")), hit.score,
                str(hit.payload.get("text", "")), dict(hit.payload.get("metadata") or {}),
            )  # fmt: skip
    return list(best.values())


def parse_filter(item: str) -> tuple[str, str]:
    """``key=value`` as typed after ``--filter``; the value may be empty or hold ``=``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {item!r}")
    return key.strip(), value


def filter_variants(filters: Mapping[str, str]) -> list[dict[str, Scalar]]:
    """Store filters for ``--filter`` pairs, as alternatives to search one after another.

    ``ext=.md`` means ``metadata.ext``; ``doc_id``, ``source`` and ``doc_key`` are matched
    on the point. A value is always matched as the string it is (``title=2024`` finds the
    title "2024"); one written as a plain integer (``bytes=1200``) may also be stored as a
    number, and the engine matches a keyword and an integer only separately, so that key
    gets both alternatives. Without filters: one variant with no conditions.
    """
    choices: list[list[tuple[str, Scalar]]] = []
    integers = 0
    for key, raw in filters.items():
        field = key if key in TOP_LEVEL_FIELDS or key.startswith("metadata.") else f"metadata.{key}"
        values: list[Scalar] = [raw]
        if _plain_integer(raw) and integers < MAX_INTEGER_FILTERS:
            values.append(int(raw))
            integers += 1
        choices.append([(field, value) for value in values])
    return [dict(combination) for combination in itertools.product(*choices)]


def _plain_integer(raw: str) -> bool:
    # "007" or "+7" is a string someone typed on purpose; only int's own spelling converts.
    try:
        return str(int(raw)) == raw
    except ValueError:
        return False


def live_documents(store: VectorStore, version: IndexVersion | None) -> int:
    return DocStates(store, version).live_count() if version is not None else 0


def nothing_found(index: str, documents: int, filters: Mapping[str, str]) -> str:
    """Why a search came back empty: nothing indexed is not the same as nothing matching."""
    if documents == 0:
        return (
            f"nothing is indexed in index {index!r} yet: run `embedstream index PATH` "
            "(or check --state-dir and --index)"
        )
    shown = " ".join(f"--filter {key}={value}" for key, value in filters.items())
    return f"no document matches {shown or 'the query'} ({documents} documents in index {index!r})"
