"""The trainer behind `embedstream tune` on the tiny model: checkpoints that a rerun resumes
from, a saved model that loads, and rows of unequal width refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from pipeline.encoding.training import TrainingPlan, latest_checkpoint, train

ROWS = [(f"question {n} about topic {n}", f"answer {n} on topic {n}", f"other {n + 100}") for n in range(12)]


class StopAfter(TrainerCallback):  # type: ignore[misc]
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt


def test_an_interrupted_training_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_model: Path):
    """Interrupted after the checkpoint of step 2, the same training resumes there and ends
    at the same step count as an uninterrupted run; the model it saves loads."""
    plan = TrainingPlan(tiny_model, max_seq_length=32, batch_size=4, checkpoint_steps=2, seed=1)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        train(plan, ROWS, tmp_path / "first", checkpoints, callbacks=[StopAfter(2)])
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    result = train(plan, ROWS, tmp_path / "out", checkpoints)
    assert (result.resumed_from, result.steps) == ("checkpoint-2", 3)
    assert (result.device, result.precision) == ("cpu", "float32")
    assert (tmp_path / "out" / "modules.json").is_file()


def test_rows_of_unequal_width_are_refused(tmp_path: Path, tiny_model: Path):
    plan = TrainingPlan(base=tiny_model, max_seq_length=32)
    with pytest.raises(ValueError, match="as many negatives"):
        train(plan, [("q", "p", "n"), ("q2", "p2")], tmp_path / "out", tmp_path / "ck")
