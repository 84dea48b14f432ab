"""Fine-tuning a sentence-transformers model: the one place ``embedstream tune`` touches
torch, ``datasets`` and the trainer (``sentence-transformers[train]``).

:func:`train` runs ``SentenceTransformerTrainer`` with MultipleNegativesRankingLoss over
(query, positive, negative...) rows: each query must rank its positive above its own hard
negatives and every other text of the batch (no duplicate texts within a batch, or an
in-batch "negative" could be the positive itself). ``matryoshka`` dims wrap the loss in
MatryoshkaLoss, so the vectors truncated to each of those sizes are trained too.

Seeded (model init of new heads, sampling, dropout). CUDA when present, in bf16 where the
GPU has it, else fp16; CPU in float32 otherwise. The trainer's progress bar (steps,
elapsed, ETA) and its loss lines go to stderr, so ``--json`` keeps stdout to itself.
Checkpoints are written every ``checkpoint_steps`` into ``checkpoints``; a run that finds
checkpoints there resumes from the latest (the caller keys that folder by everything that
decides the run: base model, data and hyperparameters).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ModelNotAvailable

log = logging.getLogger(__name__)

_MISSING_EXTRA = (
    "training needs sentence-transformers' [train] extra (the datasets and accelerate packages): "
    "pip install 'sentence-transformers[train]'"
)


@dataclass(frozen=True)
class TrainingPlan:
    base: Path  # a local sentence-transformers directory
    max_seq_length: int
    query_prefix: str = ""
    document_prefix: str = ""
    device: str = "auto"  # auto, cpu or cuda (model.device)
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    seed: int = 42
    matryoshka: tuple[int, ...] = ()
    checkpoint_steps: int = 50

    @property
    def loss_name(self) -> str:
        base = "MultipleNegativesRankingLoss"
        return f"MatryoshkaLoss({base}, dims={list(self.matryoshka)})" if self.matryoshka else base


@dataclass(frozen=True)
class TrainingResult:
    steps: int
    loss: float
    seconds: float
    device: str
    precision: str
    resumed_from: str | None


def train(
    plan: TrainingPlan,
    rows: Sequence[Sequence[str]],
    out: Path,
    checkpoints: Path,
    callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Train on ``rows`` (query, positive, negatives...: all of one length) and save the
    model to ``out``. ``callbacks``: extra ``transformers.TrainerCallback`` s (tests)."""
    try:
        from datasets import Dataset
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.sentence_transformer.losses import (
            MatryoshkaLoss,
            MultipleNegativesRankingLoss,
        )
    except ImportError as exc:
        raise ConfigError(_MISSING_EXTRA) from exc
    import torch

    device = _device(plan.device, torch.cuda.is_available())
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    fp16 = device == "cuda" and not bf16
    try:
        model = SentenceTransformer(str(plan.base), device=device)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"cannot load the base model {plan.base}: {exc}") from exc
    model.max_seq_length = plan.max_seq_length
    columns = _columns(rows)
    loss: Any = MultipleNegativesRankingLoss(model)
    if plan.matryoshka:
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=list(plan.matryoshka))
    prompts = {name: plan.query_prefix if name == "anchor" else plan.document_prefix for name in columns}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=plan.epochs,
        per_device_train_batch_size=plan.batch_size, learning_rate=plan.learning_rate,
        warmup_ratio=plan.warmup_ratio, seed=plan.seed, data_seed=plan.seed,
        bf16=bf16, fp16=fp16, use_cpu=device == "cpu",
        batch_sampler="no_duplicates", save_strategy="steps", save_steps=plan.checkpoint_steps,
        save_total_limit=2, logging_steps=max(1, plan.checkpoint_steps), report_to="none",
        dataloader_num_workers=0, disable_tqdm=False,
        prompts=prompts if any(prompts.values()) else None,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss, callbacks=list(callbacks)
    )
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        log.warning("resuming the training from %s", resume)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its loss lines to stdout
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        model.save(str(out))
    return TrainingResult(
        steps=int(output.global_step),
        loss=float(output.training_loss),
        seconds=time.perf_counter() - started,
        device=device,
        precision="bf16" if bf16 else "fp16" if fp16 else "float32",
        resumed_from=resume.name if resume else None,
    )


def _device(wanted: str, cuda: bool) -> str:
    if wanted == "cuda" and not cuda:
        raise ConfigError("model.device is cuda, but torch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if cuda else "cpu"
    return wanted


def _columns(rows: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Dataset columns: anchor, positive, negative_1..n (the trainer reads them in order)."""
    width = len(rows[0]) if rows else 0
    if width < 2 or any(len(row) != width for row in rows):
        raise ValueError("every training row needs a query, a positive and as many negatives as the others")
    names = ["anchor", "positive", *(f"negative_{n}" for n in range(1, width - 1))]
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder the trainer left, if any."""
    if not checkpoints.is_dir():
        return None
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)
