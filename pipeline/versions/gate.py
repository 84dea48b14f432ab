"""Evaluate an index version on a BEIR query set: what ``eval`` prints and ``promote`` gates on.

Each query goes through the same search as ``embedstream search`` (the version's own
encoder, truncation and quantization search parameters), ranked by document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.settings import IndexSettings
from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.store import VectorStore
from pipeline.versions.evaluation import (
    EvalReport,
    Qrels,
    Query,
    bytes_per_vector,
    evaluate,
    load_qrels,
    load_queries,
)
from pipeline.versions.search import search_documents
from pipeline.versions.spec import IndexVersion

#: Documents asked for per query: deep enough for Recall@100.
DEPTH = 100


@dataclass(frozen=True)
class QuerySet:
    queries: list[Query]
    qrels: Qrels

    @classmethod
    def load(cls, queries: Path, qrels: Path) -> QuerySet:
        for path in (queries, qrels):
            if not path.is_file():
                raise ConfigError(f"{path} does not exist")
        return cls(load_queries(queries), load_qrels(qrels))

    @classmethod
    def configured(cls, index: IndexSettings) -> QuerySet | None:
        """``index.eval_queries`` + ``index.eval_qrels``, or None when either is unset."""
        if index.eval_queries is None or index.eval_qrels is None:
            return None
        return cls.load(index.eval_queries, index.eval_qrels)


def evaluate_version(
    store: VectorStore, version: IndexVersion, encoder: Encoder, query_set: QuerySet
) -> EvalReport:
    def search(text: str) -> list[str]:
        return [result.doc_id for result in search_documents(store, version, encoder, text, DEPTH)]

    size = bytes_per_vector(version.dims, version.datatype, version.quantization)
    return evaluate(search, query_set.queries, query_set.qrels, version.label, size, depth=DEPTH)
