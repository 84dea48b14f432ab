"""Shared fixtures: a tiny real sentence-transformers model and per-test settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config.settings import Settings
from tests.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# Kafka and Qdrant fixtures live in plugins so integration and e2e tests share one
# broker and one Qdrant server.
pytest_plugins = ["tests.kafka_fixtures", "tests.qdrant_fixtures", "tests.cli_runner"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_model: Path) -> Settings:
    """An embedded index in this test's temp dir: tiny model, small chunks, small limits."""
    return Settings.load(
        state_dir=tmp_path / "state",
        model={"name": str(tiny_model)},
        chunking={"max_tokens": 64, "overlap_tokens": 8},
        limits={"max_doc_bytes": 20_000, "max_chunks_per_doc": 40},
    )


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), seed=1)
