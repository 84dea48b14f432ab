"""``embedstream tune``: fine-tune the live version's model on the index's own documents.

1. **Documents** are read back from the live version (each document's chunks, in order,
   overlaps joined once): whatever the source, the index holds what is searched.
2. **Pairs** come from ``--pairs FILE`` or from the documents' structure
   (:mod:`pipeline.versions.pairs`); a seeded split by document holds some out: they
   never reach training, not even as negatives, and their queries are the evaluation.
3. **Hard negatives** are mined from the live version (:mod:`pipeline.versions.negatives`).
4. **Training** (:mod:`pipeline.encoding.training`) writes into ``.<out>.partial`` beside
   the output, with checkpoints under ``<state_dir>/tune/<run>/``: ``<run>`` digests the
   base model, the training rows and the hyperparameters, so running the same command
   again after an interruption resumes, and anything else starts afresh.
5. **Evaluation** of the base and the tuned model on the held-out queries (exact search
   among every pair's positive), at full size and at each ``--matryoshka`` size.
6. **Output**: the model, its card (``README.md``) and ``tune/`` (``report.json``, and the
   held-out ``queries.jsonl``/``qrels.tsv`` for ``embedstream eval`` and the promote gate),
   renamed into ``--out`` in one step. Its fingerprint differs from the base's (new weights),
   so no cached vector of the base can ever be taken for one of the tuned model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config.settings import ModelSettings, Settings
from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.encoding.model_files import configured_max_length, model_fingerprint, resolve_model_path
from pipeline.encoding.training import TrainingPlan, TrainingResult, train
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.observability import NullObserver
from pipeline.runtime import Runtime
from pipeline.runtime.tune_card import model_card
from pipeline.store import VectorStore
from pipeline.versions.evaluation import EvalReport
from pipeline.versions.negatives import HeldOut, NegativeStats, evaluate_held_out, mine
from pipeline.versions.pairs import (
    Document,
    Pair,
    Split,
    beir_files,
    data_digest,
    derive_pairs,
    join_chunks,
    load_pairs,
    split_held_out,
)
from pipeline.versions.spec import IndexVersion, live_version

#: Fewer training pairs than this teach noise; fewer held-out queries measure nothing.
MIN_TRAIN_PAIRS = 8
MIN_HELD_OUT = 2
RETRIEVE_BATCH = 512  # point ids per store call when documents are read back


@dataclass(frozen=True)
class TuneParams:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1  # of the steps, with the learning rate rising from 0
    #: Hard negatives per query, mined from the index's own top ``depth`` hits; a hit scoring
    #: over ``ceiling`` x the positive's score is taken for a near-duplicate and passed over.
    negatives: int = 1
    depth: int = 10
    ceiling: float = 0.95
    held_out: float = 0.2  # share of the queries kept out of training, to measure the result
    seed: int = 42
    matryoshka: tuple[int, ...] = ()  # dimensions also trained for truncation (none: full only)


@dataclass(frozen=True)
class PairSource:
    kind: str  # "derived" or the pairs file
    documents: int
    by_rule: dict[str, int]
    without_structure: int


@dataclass(frozen=True)
class TuneReport:
    index: str
    base_version: str
    base_model: str
    base_fingerprint: str
    out: str
    fingerprint: str
    pairs: PairSource
    train_pairs: int
    held_out: int
    data_digest: str
    negatives: NegativeStats
    loss: str
    params: TuneParams
    training: TrainingResult
    before: list[EvalReport]  # base model: full size, then each Matryoshka size
    after: list[EvalReport]
    eval_files: bool  # tune/queries.jsonl and tune/qrels.tsv were written

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def check_out(out: Path) -> None:
    if out.exists():
        raise ConfigError(f"--out {out} already exists: tune never writes over a folder; choose a new one")


def tune(settings: Settings, out: Path, pairs_file: Path | None, params: TuneParams) -> TuneReport:
    """Read, pair, mine, train, evaluate, write (see the module doc)."""
    check_out(out)
    with closing(Runtime(settings, NullObserver())) as runtime:
        store, name = runtime.store, settings.index.name
        live = live_version(store, name)
        if live is None:
            raise ConfigError(f"index {name!r} has no live version to tune: `embedstream index PATH` first")
        dims = _matryoshka(params.matryoshka, live.full_dims)
        documents = read_documents(store, live)
        pairs, source = _pairs(documents, pairs_file)
        split = split_held_out(pairs, params.held_out, params.seed)
        _check_enough(name, split, source)
        encoder = runtime.encoders.for_version(live)
        held_ids = {p.doc_id for p in split.held_out if p.doc_id is not None}
        mined = mine(
            store, live, encoder, split.train, count=params.negatives, depth=params.depth,
            ceiling=params.ceiling, excluded=held_ids, seed=params.seed,
        )  # fmt: skip
        held = HeldOut.of(split.train, split.held_out)
        before = _evaluate(encoder, held, "base", live.full_dims, dims)
    # The store is closed while the model trains: `index` and `watch` can run meanwhile.
    model = live.model_settings(settings.model) if live.model else settings.model
    plan = _plan(model, params, dims, len(mined.rows))
    digest = data_digest(row.texts() for row in mined.rows)
    run = _run_key(live.fingerprint, digest, plan)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = settings.state_dir / "tune" / run
    result = train(plan, [row.texts() for row in mined.rows], partial, checkpoints)
    tuned = model.model_copy(update={"name": str(partial)})
    after = _evaluate(SentenceTransformerEncoder(tuned), held, "tuned", live.full_dims, dims)
    fingerprint = model_fingerprint(partial, tuned, plan.max_seq_length, label=out.name)
    report = TuneReport(
        name, live.label, model.name, live.fingerprint, str(out), fingerprint, source,
        len(split.train), len(split.held_out), digest, mined.stats, plan.loss_name, params, result,
        before, after, eval_files=False,
    )  # fmt: skip
    report = _write(partial, report, split)
    check_out(out)
    partial.rename(out)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return report


def read_documents(store: VectorStore, version: IndexVersion) -> list[Document]:
    """Every live document of ``version``: its chunk texts in order, overlaps joined."""
    states = [p for _, p in store.scroll(version.docs_collection, {"status": "live"}) if "doc_id" in p]
    documents: list[Document] = []
    for start in range(0, len(states), 64):
        batch = states[start : start + 64]
        ids = [str(i) for state in batch for i in state.get("point_ids") or ()]
        points: dict[str, dict[str, Any]] = {}
        for offset in range(0, len(ids), RETRIEVE_BATCH):
            points.update(store.retrieve(version.collection, ids[offset : offset + RETRIEVE_BATCH]))
        for state in batch:
            found = [points[str(i)] for i in state.get("point_ids") or () if str(i) in points]
            metadata = next((p.get("metadata") for p in found if p.get("metadata")), None) or {}
            text = join_chunks([str(p.get("text", "")) for p in found])
            documents.append(Document(str(state["doc_id"]), text, dict(metadata)))
    return sorted(documents, key=lambda d: d.doc_id)


def _pairs(documents: list[Document], pairs_file: Path | None) -> tuple[list[Pair], PairSource]:
    if pairs_file is not None:
        pairs = load_pairs(pairs_file)
        return pairs, PairSource(str(pairs_file), len(documents), {"pairs file": len(pairs)}, 0)
    derived = derive_pairs(documents)
    return derived.pairs, PairSource("derived", len(documents), derived.by_rule, derived.without_structure)


def _check_enough(name: str, split: Split, source: PairSource) -> None:
    if len(split.train) >= MIN_TRAIN_PAIRS and len(split.held_out) >= MIN_HELD_OUT:
        return
    have = len(split.train) + len(split.held_out)
    if source.kind == "derived":
        what = (
            f"index {name!r} has {source.documents} document(s), {have} of them with a title, heading, "
            f"NAME line or docstring to derive a training pair from"
        )
        hint = "index more documents, or give pairs with --pairs FILE.jsonl"
    else:
        what = f"{source.kind} gives {have} pair(s)"
        hint = "add pairs to it"
    msg = (
        f"too few documents to train on: {what}; tune needs at least {MIN_TRAIN_PAIRS} for training "
        f"and {MIN_HELD_OUT} held out ({len(split.train)} and {len(split.held_out)} here): {hint}"
    )
    raise ConfigError(msg)


def _matryoshka(dims: tuple[int, ...], full: int) -> tuple[int, ...]:
    too_big = [d for d in dims if d > full]
    if too_big:
        shown = ", ".join(map(str, too_big))
        raise ConfigError(f"--matryoshka {shown}: over the model's {full} dimensions")
    return tuple(sorted(set(dims), reverse=True))


def _plan(model: ModelSettings, params: TuneParams, dims: tuple[int, ...], rows: int) -> TrainingPlan:
    path = resolve_model_path(model.name)
    max_tokens = model.max_seq_length or configured_max_length(path)
    steps = -(-rows // params.batch_size) * params.epochs
    return TrainingPlan(
        base=path, max_seq_length=max_tokens, query_prefix=model.query_prefix,
        document_prefix=model.document_prefix, device=model.device, epochs=params.epochs,
        batch_size=params.batch_size, learning_rate=params.learning_rate,
        warmup_ratio=params.warmup_ratio, seed=params.seed, matryoshka=dims,
        checkpoint_steps=max(10, steps // 10),
    )  # fmt: skip


def _run_key(base: str, data: str, plan: TrainingPlan) -> str:
    """What decides a run: resuming from a checkpoint of any other run would be wrong."""
    digest = hashlib.sha256(base.encode())
    digest.update(data.encode())
    digest.update(json.dumps({**asdict(plan), "base": str(plan.base)}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _evaluate(
    encoder: Encoder, held: HeldOut, label: str, full: int, dims: tuple[int, ...]
) -> list[EvalReport]:
    queries = encoder.encode_queries([q.text for q in held.queries])
    corpus = encoder.encode_documents(held.corpus_texts)
    sizes = [None, *(d for d in dims if d != full)]
    return [evaluate_held_out(held, queries, corpus, f"{label} {d or full}", d) for d in sizes]


def _write(folder: Path, report: TuneReport, split: Split) -> TuneReport:
    """The model card and ``tune/``; model files are untouched (the card is not hashed)."""
    extra = folder / "tune"
    extra.mkdir()
    files = beir_files(split.held_out)
    if files is not None:
        (extra / "queries.jsonl").write_text(files[0], encoding="utf-8")
        (extra / "qrels.tsv").write_text(files[1], encoding="utf-8")
    report = dataclasses.replace(report, eval_files=files is not None)
    (extra / "report.json").write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(model_card(report), encoding="utf-8")
    return report
