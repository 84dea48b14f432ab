"""Hard negatives mined from the live index, and the held-out evaluation of a tune.

For each training query the live version is searched as ``embedstream search`` does
(the version's own model, truncation and search parameters, one result per document);
the best documents that are not the positive's are its hard negatives, each taught
through the chunk the index ranked. A hit scoring above ``ceiling`` x the positive's
own score is skipped as a probable near-duplicate or unlabelled answer: teaching it as a
negative would teach the model to push away a right answer. The positive's score is the
better of its document's best chunk among the hits and the query against the positive
text itself, both as cosines in the version's vector space. Documents held out for the
evaluation are never negatives, so nothing of theirs reaches training. A query left with
fewer negatives than asked gets other training positives (seeded), counted apart as
"filled".

The held-out evaluation searches each held-out query exactly (numpy) among the positives of
every pair, ranked by document as ``embedstream eval`` ranks them, at full size and at
each Matryoshka size: the same numbers for the base and the tuned model, with no index built.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.events import Matrix, normalize_rows
from pipeline.encoding import Encoder
from pipeline.store import SearchOptions, VectorStore
from pipeline.versions.evaluation import ChunkHit, EvalReport, Query, evaluate, rank_documents
from pipeline.versions.pairs import Pair
from pipeline.versions.search import FIRST_HITS_PER_DOCUMENT, best_chunk_per_document
from pipeline.versions.spec import IndexVersion

#: Queries encoded per call while mining.
QUERY_BATCH = 64


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    text: str  # the document's best chunk for the query
    score: float


@dataclass(frozen=True)
class Choice:
    negatives: list[Candidate]
    near_duplicates: int


@dataclass(frozen=True)
class Row:
    """One training example: the query, its positive, its negatives (mined, then filled)."""

    query: str
    positive: str
    negatives: tuple[str, ...]

    def texts(self) -> tuple[str, ...]:
        return (self.query, self.positive, *self.negatives)


@dataclass(frozen=True)
class NegativeStats:
    queries: int
    mined: int
    near_duplicates: int  # hits skipped over the ceiling or equal to the positive
    filled: int  # random training positives standing in for missing hard negatives
    mean_margin: float | None  # positive's score minus the mined negative's, averaged
    ceiling: float
    depth: int


@dataclass(frozen=True)
class Mined:
    rows: list[Row]
    stats: NegativeStats


def choose_negatives(
    candidates: Sequence[Candidate],
    positive: Pair,
    positive_score: float,
    count: int,
    ceiling: float,
    excluded: Collection[str] = (),
) -> Choice:
    """The first ``count`` candidates (best first) that are neither the positive's document,
    an excluded (held-out) document, the positive's own text, nor over the score ceiling."""
    kept: list[Candidate] = []
    near = 0
    wanted = " ".join(positive.positive.split())
    for candidate in candidates:
        if len(kept) == count:
            break
        if candidate.doc_id == positive.doc_id or candidate.doc_id in excluded:
            continue
        text = " ".join(candidate.text.split())
        if not text or text in wanted or wanted in text or candidate.score > ceiling * positive_score:
            near += 1
            continue
        kept.append(candidate)
    return Choice(kept, near)


def mine(
    store: VectorStore,
    version: IndexVersion,
    encoder: Encoder,
    pairs: Sequence[Pair],
    *,
    count: int,
    depth: int,
    ceiling: float,
    excluded: Collection[str],
    seed: int,
) -> Mined:
    """Hard negatives for every pair from ``version``'s collection (see the module doc)."""
    rows: list[Row] = []
    mined = near = filled = 0
    margins: list[float] = []
    pool = [p.positive for p in pairs]
    rng = random.Random(seed)  # noqa: S311 -- a seeded sample, not a secret
    for start in range(0, len(pairs), QUERY_BATCH):
        batch = pairs[start : start + QUERY_BATCH]
        queries = version.to_storage(encoder.encode_queries([p.query for p in batch]))
        positives = _in_space(encoder.encode_documents([p.positive for p in batch]), version.dims)
        own = np.sum(_in_space(queries, version.dims) * positives, axis=1)
        for pair, vector, score in zip(batch, queries, own, strict=True):
            found = _search(store, version, vector, depth) if count else []
            positive = max([float(score), *(c.score for c in found if c.doc_id == pair.doc_id)])
            choice = choose_negatives(found, pair, positive, count, ceiling, excluded)
            mined += len(choice.negatives)
            near += choice.near_duplicates
            margins += [positive - c.score for c in choice.negatives]
            extra = _fill(pool, pair, count - len(choice.negatives), rng)
            filled += len(extra)
            rows.append(Row(pair.query, pair.positive, (*(c.text for c in choice.negatives), *extra)))
    margin = sum(margins) / len(margins) if margins else None
    return Mined(rows, NegativeStats(len(pairs), mined, near, filled, margin, ceiling, depth))


def _in_space(matrix: Matrix, dims: int) -> Matrix:
    """Unit vectors truncated to the version's dims (its cosines), whatever it stores."""
    return normalize_rows(matrix[:, :dims]) if matrix.shape[1] != dims else matrix


def _search(store: VectorStore, version: IndexVersion, vector: Matrix, depth: int) -> list[Candidate]:
    options = SearchOptions(
        limit=depth * FIRST_HITS_PER_DOCUMENT, oversampling=version.oversampling, rescore=version.rescore
    )
    hits = store.search(version.collection, vector.tolist(), options)
    scored = [dataclasses.replace(hit, score=version.similarity(hit.score)) for hit in hits]
    scored.sort(key=lambda hit: -hit.score)
    return [Candidate(r.doc_id, r.text, r.score) for r in best_chunk_per_document(scored)[:depth]]


def _fill(pool: Sequence[str], pair: Pair, missing: int, rng: random.Random) -> list[str]:
    if missing <= 0:
        return []
    others = [text for text in pool if text != pair.positive]
    return rng.sample(others, min(missing, len(others)))


# -- held-out evaluation (in memory) ------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """The held-out queries and the corpus they are searched in: every pair's positive
    (training documents' too, as distractors), by document."""

    queries: list[Query]
    qrels: dict[str, dict[str, int]]
    corpus_ids: list[str]
    corpus_texts: list[str]

    @classmethod
    def of(cls, train: Sequence[Pair], held_out: Sequence[Pair]) -> HeldOut:
        ids: list[str] = []
        texts: list[str] = []
        for number, pair in enumerate([*held_out, *train]):
            ids.append(pair.doc_id if pair.doc_id is not None else f"positive-{number}")
            texts.append(pair.positive)
        queries = [Query(f"h{n}", pair.query) for n, pair in enumerate(held_out)]
        qrels = {f"h{n}": {ids[n]: 1} for n in range(len(held_out))}
        return cls(queries, qrels, ids, texts)


def evaluate_held_out(
    held: HeldOut, query_vectors: Matrix, corpus_vectors: Matrix, label: str, dims: int | None = None
) -> EvalReport:
    """nDCG@10, MRR@10, Recall@10 of the held-out queries by exact search over the corpus,
    at ``dims`` (Matryoshka: truncated and renormalized) or the model's full size."""
    queries = _in_space(query_vectors, dims or query_vectors.shape[1])
    corpus = _in_space(corpus_vectors, dims or corpus_vectors.shape[1])
    scores = queries @ corpus.T
    row_of = {query.text: row for row, query in enumerate(held.queries)}

    def search(text: str) -> list[str]:
        row = scores[row_of[text]]
        return rank_documents(ChunkHit(doc, float(s)) for doc, s in zip(held.corpus_ids, row, strict=True))

    return evaluate(search, held.queries, held.qrels, label, depth=len(held.corpus_ids))
