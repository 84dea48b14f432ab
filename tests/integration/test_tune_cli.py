"""`embedstream tune` as a user types it (embedded mode, tiny model): the whole loop index →
tune → migrate start --model DIR → index → eval → promote → rollback, a bad tune refused by
the promote gate, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pipeline.cli import app

NOUNS = [
    "kettle", "glacier", "harbour", "orchard", "lighthouse", "desert", "violin", "bicycle",
    "beehive", "volcano", "library", "tractor", "compass", "lantern", "canoe", "telescope",
    "vineyard", "bakery", "windmill", "aquarium", "quarry", "chimney", "meadow", "bridge",
]  # fmt: skip
VERBS = ["repair", "paint", "clean", "inspect", "photograph", "measure", "insure", "move"]
FILLER = ["carefully", "every spring", "with a friend", "before winter", "at dawn", "on weekends"]


def write_corpus(docs: Path, seed: int = 0) -> list[tuple[str, str]]:
    """One Markdown file per noun: a heading (the derived query) over three paragraphs about
    it; returns (file name, heading)."""
    rng = random.Random(seed)
    docs.mkdir()
    made = []
    for n, noun in enumerate(NOUNS):
        verb = VERBS[n % len(VERBS)]
        heading = f"How to {verb} an old {noun}"
        paragraphs = [
            f"The {noun} should be handled {rng.choice(FILLER)}. A {noun} that is old needs a {verb} "
            f"plan {rng.choice(FILLER)}, and every {noun} owner knows the {noun} will last."
            for _ in range(3)
        ]
        (docs / f"{noun}.md").write_text(f"# {heading}\n\n" + "\n\n".join(paragraphs) + "\n")
        made.append((f"{noun}.md", heading))
    return made


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("EMBEDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {
        "EMBEDSTREAM_STATE_DIR": str(tmp_path / "state"),
        "EMBEDSTREAM_MODEL__NAME": str(tiny_model),
        "EMBEDSTREAM_CHUNKING__MAX_TOKENS": "32",
        "EMBEDSTREAM_CHUNKING__OVERLAP_TOKENS": "4",
        "EMBEDSTREAM_INDEX__QUANTIZATION": "none",
    }


def cli(env: dict[str, str], *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def test_the_whole_loop_index_tune_migrate_eval_promote_rollback(env, tmp_path):
    """tune derives one pair per document from its heading, holds some documents out,
    mines hard negatives, trains, and writes a model whose fingerprint differs from the
    base's with a card and the held-out query set; that set then drives eval and the
    promote gate of the migration to the tuned model, and rollback returns to the base."""
    write_corpus(tmp_path / "docs")
    cli(env, "index", "docs")
    tuned = tmp_path / "models" / "docs-tuned"
    args = ["--out", str(tuned), "--batch-size", "8", "--matryoshka", "32,16", "--json"]
    report = json.loads(cli(env, "tune", "docs", *args).stdout)
    assert (report["train_pairs"], report["held_out"]) == (19, 5)
    assert report["pairs"]["by_rule"] == {"heading": 24}
    stats = report["negatives"]
    assert stats["mined"] + stats["filled"] == 19
    assert stats["mined"] > 0
    assert report["fingerprint"].startswith("docs-tuned@")
    assert report["fingerprint"] != report["base_fingerprint"]
    assert report["loss"] == "MatryoshkaLoss(MultipleNegativesRankingLoss, dims=[32, 16])"
    assert [r["label"] for r in report["before"]] == ["base 32", "base 16"]
    assert [r["label"] for r in report["after"]] == ["tuned 32", "tuned 16"]
    assert report["training"]["steps"] == 3
    card = (tuned / "README.md").read_text()
    for expected in (report["base_fingerprint"], report["fingerprint"], report["data_digest"], "nDCG@10"):
        assert expected in card
    assert not list((tmp_path / "state" / "tune").glob("*")), "checkpoints are removed after a run"

    gate = {
        **env,
        "EMBEDSTREAM_INDEX__EVAL_QUERIES": str(tuned / "tune" / "queries.jsonl"),
        "EMBEDSTREAM_INDEX__EVAL_QRELS": str(tuned / "tune" / "qrels.tsv"),
    }
    started = cli(gate, "migrate", "start", "docs", "--model", str(tuned))
    assert "created docs@v2" in started.output
    assert "backfilled docs@v2 from source fs: 24 documents" in cli(gate, "index", "docs").output
    listed = {v["version"]: v for v in json.loads(cli(gate, "index-versions", "--json").stdout)}
    assert listed[2]["fingerprint"] == report["fingerprint"]
    files = ["--queries", str(tuned / "tune" / "queries.jsonl"), "--qrels", str(tuned / "tune" / "qrels.tsv")]
    compared = json.loads(cli(gate, "eval", *files, "--compare", "v1", "v2", "--json").stdout)
    assert [r["queries"] for r in compared] == [5, 5]
    promoted = cli(gate, "migrate", "promote", "docs")
    assert "alias docs docs__v1 -> docs__v2" in promoted.output
    rolled = cli(gate, "migrate", "rollback", "docs")
    assert "alias docs docs__v2 -> docs__v1" in rolled.output


def test_a_tune_on_shuffled_pairs_is_refused_by_the_promote_gate(env, tmp_path):
    """Trained to match each heading with another document's text, the model ranks the
    right documents lower on the index's query set: promote refuses it (exit 2)."""
    made = write_corpus(tmp_path / "docs")
    cli(env, "index", "docs")
    texts = {name: (tmp_path / "docs" / name).read_text().split("\n\n", 1)[1] for name, _ in made}
    names = [name for name, _ in made]
    shifted = names[1:] + names[:1]
    rows = [{"query": h, "positive": texts[s]} for (_, h), s in zip(made, shifted, strict=True)]
    (tmp_path / "shuffled.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    queries = "".join(json.dumps({"_id": f"q{n}", "text": h}) + "\n" for n, (_, h) in enumerate(made))
    (tmp_path / "queries.jsonl").write_text(queries)
    qrels = ["query-id\tcorpus-id\tscore", *(f"q{n}\t{name}\t1" for n, (name, _) in enumerate(made))]
    (tmp_path / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    gate = {
        **env,
        "EMBEDSTREAM_INDEX__EVAL_QUERIES": str(tmp_path / "queries.jsonl"),
        "EMBEDSTREAM_INDEX__EVAL_QRELS": str(tmp_path / "qrels.tsv"),
    }
    bad = tmp_path / "bad"
    args = ["--pairs", "shuffled.jsonl", "--epochs", "8", "--learning-rate", "0.001", "--batch-size", "8"]
    cli(gate, "tune", "docs", "--out", str(bad), *args)
    cli(gate, "migrate", "start", "docs", "--model", str(bad))
    cli(gate, "index", "docs")
    refused = cli(gate, "migrate", "promote", "docs", code=2)
    assert "worse, over the margin" in refused.output, refused.output


def test_bad_input_gets_a_clear_error(env, tmp_path):
    """Too few documents (exit 3), a pairs file with malformed lines named by number
    (exit 3), an output folder that exists (exit 2)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"d{n}.md").write_text(f"# Document number {n}\n\n" + "Some words about it. " * 5)
    cli(env, "index", "docs")
    few = cli(env, "tune", "docs", "--out", "tuned", code=3)
    assert "too few documents to train on" in few.output
    assert "3 document(s), 3 of them with a title" in few.output

    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "positive": "b"}\n{oops\n\n{"query": 1}\n')
    malformed = cli(env, "tune", "docs", "--out", "tuned", "--pairs", "pairs.jsonl", code=3)
    assert "2 malformed line(s)" in malformed.output
    assert "pairs.jsonl:2: not JSON" in malformed.output
    assert "pairs.jsonl:4:" in malformed.output

    (tmp_path / "exists").mkdir()
    taken = cli(env, "tune", "docs", "--out", "exists", code=2)
    assert "already exists" in taken.output
    assert not (tmp_path / "tuned").exists()
