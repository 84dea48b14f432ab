"""The version commands as a user types them (embedded mode): `migrate start|status|promote|
rollback|gc`, `index-versions`, `eval`, and `index` backfilling a new version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pipeline.cli import app

TOPICS = ["harbours", "glaciers", "orchards", "lighthouses", "deserts"]


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A state dir, model A, small chunks and a query set: each document's second paragraph."""
    for name in list(os.environ):
        if name.startswith("EMBEDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    queries, judgments = [], ["query-id\tcorpus-id\tscore"]
    for n, topic in enumerate(TOPICS):
        paragraphs = [f"Paragraph {i} on {topic}: detail {i} of {topic}, item {i * n}." for i in range(3)]
        (docs / f"{topic}.md").write_text("\n\n".join(paragraphs))
        queries.append(json.dumps({"_id": f"q{n}", "text": paragraphs[1]}))
        judgments.append(f"q{n}\t{topic}.md\t1")
    (tmp_path / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (tmp_path / "qrels.tsv").write_text("\n".join(judgments) + "\n")
    return {
        "EMBEDSTREAM_STATE_DIR": str(tmp_path / "state"),
        "EMBEDSTREAM_MODEL__NAME": str(tiny_model),
        "EMBEDSTREAM_CHUNKING__MAX_TOKENS": "32",
        "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": "4",
        "EMBEDSTREAM_INDEX__EVAL_QUERIES": str(tmp_path / "queries.jsonl"),
        "EMBEDSTREAM_INDEX__EVAL_QRELS": str(tmp_path / "qrels.tsv"),
        "EMBEDSTREAM_INDEX__QUANTIZATION": "none",
    }


def cli(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def test_a_migration_from_the_command_line(env, other_tiny_model):
    """index; migrate start --model B; promote refused until `index` backfilled v2; status
    shows lag 0 and scores; promote; search answers with B although model.name is A;
    index-versions and eval --compare show both; rollback; gc keeps v2 within the retention
    and drops it once the retention is 0."""
    cli(env, "index", "docs")
    started = cli(env, "migrate", "start", "docs", "--model", str(other_tiny_model))
    assert "created docs@v2 (docs__v2)" in started.output
    refused = cli(env, "migrate", "promote", code=2)
    assert "not been backfilled from source(s) fs" in refused.output

    indexed = cli(env, "index", "docs")
    assert "backfilled docs@v2 from source fs: 5 documents" in indexed.output
    status = {row["version"]: row for row in json.loads(cli(env, "migrate", "status", "--json").stdout)}
    assert (status[2]["state"], status[2]["lag"], status[2]["documents"]) == ("building", 0, 5)
    assert status[1]["eval"]["ndcg_at_10"] == status[2]["eval"]["ndcg_at_10"] == 1.0

    promoted = cli(env, "migrate", "promote")
    assert "alias docs docs__v1 -> docs__v2" in promoted.output
    found = json.loads(cli(env, "search", "Paragraph 1 on deserts: detail 1 of deserts", "--json").stdout)
    assert found[0]["doc_id"] == "deserts.md"
    listed = json.loads(cli(env, "index-versions", "--json").stdout)
    assert [(v["version"], v["state"]) for v in listed] == [(1, "retired"), (2, "live")]
    table = cli(env, "eval", "--queries", "queries.jsonl", "--qrels", "qrels.tsv", "--compare", "v1", "v2")
    assert "docs@v1" in table.output
    assert "docs@v2" in table.output

    rolled = cli(env, "migrate", "rollback")
    assert "alias docs docs__v2 -> docs__v1" in rolled.output
    kept = cli(env, "migrate", "gc")
    assert "kept docs__v2: unaliased" in kept.output
    dropped = cli({**env, "EMBEDSTREAM_INDEX__GC_RETENTION_HOURS": "0"}, "migrate", "gc")
    assert "dropped docs__v2" in dropped.output
    assert [v["version"] for v in json.loads(cli(env, "index-versions", "--json").stdout)] == [1]


def test_settings_that_match_no_version_point_at_migrate(env, other_tiny_model):
    """Indexing with another model than every version of the index is refused (exit 3), naming
    `migrate start`; with a migration to that model started, the same command is accepted."""
    cli(env, "index", "docs")
    other = {**env, "EMBEDSTREAM_MODEL__NAME": str(other_tiny_model)}
    refused = cli(other, "index", "docs", code=3)
    assert "embedstream migrate start" in refused.output
    cli(env, "migrate", "start", "--model", str(other_tiny_model))
    cli(other, "index", "docs")
