"""``embedstream dlq``: the dead-letter queue, read from Kafka or, in the embedded mode, from
the state dir's log; replayed into the original topics after a fix."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.bus.dead_letters import LocalDeadLetters, read_dead_letters, replay_dead_letters
from pipeline.cli.app import dlq_app, load_settings, run
from pipeline.cli.daemons import kafka
from pipeline.cli.options import CommonOptions, JsonOpt, takes
from pipeline.cli.render import out, print_json, print_letters
from pipeline.config.settings import Settings


@dlq_app.command("list")
@takes("config", "state_dir", "bootstrap")
def dlq_list(
    common: CommonOptions,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many entries.")] = 100,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            metavar="",
            help="Read the embedded mode's log in the state dir, even if Kafka is configured.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show dead-lettered events: key, reason, message, where they came from.

    Without Kafka configured (no --bootstrap, EMBEDSTREAM_KAFKA__BOOTSTRAP or kafka.bootstrap),
    this lists the embedded mode's local dead-letter log (state_dir/dlq.jsonl)."""
    letters = run(lambda: _letters(load_settings(common), limit, local=local))
    if as_json:
        print_json(letters)
        return
    print_letters(letters)


def _letters(settings: Settings, limit: int, *, local: bool) -> list[dict[str, str]]:
    if local or "bootstrap" not in settings.kafka.model_fields_set:
        return [letter.as_json() for letter in LocalDeadLetters(settings.state_dir / "dlq.jsonl").read(limit)]
    with kafka(settings) as (bus, topics):
        return [letter.as_json() for letter in read_dead_letters(bus, topics, limit)]


@dlq_app.command("replay")
@takes("config", "bootstrap")
def dlq_replay(
    common: CommonOptions,
    reason: Annotated[str | None, typer.Option(help="Only entries with this reason.")] = None,
    key: Annotated[str | None, typer.Option(help="Only entries for this document key.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="Show what would be replayed.")
    ] = False,
) -> None:
    """Re-inject dead-lettered events into their original topic after a fix (each entry once)."""

    def action() -> int:
        settings = load_settings(common)
        with kafka(settings) as (bus, topics):
            return replay_dead_letters(bus, topics, reason=reason, key=key, dry_run=dry_run)

    count = run(action)
    out.print(f"{'would replay' if dry_run else 'replayed'} {count} events")
