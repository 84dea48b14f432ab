"""``embedstream verify``: is the index exactly its folders? Exit 0 when it is, 1 with a list
when it is not; ``--repair`` brings it back in step through each folder's own versioning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.app import EXIT_FAILURE, app, load_settings, run
from pipeline.cli.options import CommonOptions, JsonOpt, takes
from pipeline.cli.render import out, print_json
from pipeline.cli.source_options import ExcludeOpt, FollowLinksOpt, IncludeOpt, SourceNameOpt
from pipeline.cli.sources import FsOptions, fs_source
from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError
from pipeline.sources import Source, SourceBindings

if TYPE_CHECKING:
    from pipeline.runtime.verify import Verification


@app.command()
@takes("config", "state_dir", "index", "model")
def verify(
    common: CommonOptions,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="The folder to compare with (default: every folder bound in the index).",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    source: SourceNameOpt = "fs",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    follow_symlinks: FollowLinksOpt = False,
    repair: Annotated[
        bool,
        typer.Option("--repair", metavar="", help="Bring what differs back in step, then verify again."),
    ] = False,
    sample: Annotated[
        int,
        typer.Option(min=0, max=100_000, metavar="N", help="Stored vectors compared with a fresh encoding."),
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Compare the index with its folders: documents, text digests, points, a sample of vectors."""
    folders = FsOptions(path, source, include, exclude, follow_symlinks=follow_symlinks) if path else None
    before, after = run(lambda: _verify(folders, common, sample, repair=repair))
    final = after or before
    if as_json:
        print_json(before.as_json() | ({"after_repair": after.as_json()} if after else {}))
    else:
        _print(before, "before repair" if after else "")
        if after is not None:
            _print(after, "after repair")
    if not final.equal:
        raise typer.Exit(EXIT_FAILURE)


def _verify(
    folders: FsOptions | None, common: CommonOptions, sample: int, *, repair: bool
) -> tuple[Verification, Verification | None]:
    from pipeline.runtime import verify as checks
    from pipeline.runtime.embedded import EmbeddedPipeline

    settings = load_settings(common)
    if not settings.index_home.is_dir():
        raise ConfigError(f"no index in {settings.state_dir}: run `embedstream index PATH` first")
    with EmbeddedPipeline(settings) as pipeline:
        sources = _sources(folders, settings.index_home, settings)
        try:
            found = checks.verify(pipeline, sources, sample=sample)
            if not repair or found.equal:
                return found, None
            checks.repair(pipeline, sources, found)
            return found, checks.verify(pipeline, sources, sample=sample)
        finally:
            for each in sources:
                getattr(each, "close", lambda: None)()


def _sources(folders: FsOptions | None, home: Path, settings: Settings) -> list[Source]:
    if folders is not None:
        return [fs_source(folders, settings, home)]
    bound = SourceBindings.of(home).names()
    roots = {
        name: Path(identity.removeprefix("fs:"))
        for name, identity in bound.items()
        if identity.startswith("fs:")
    }
    if not roots:
        raise ConfigError(f"no folder is bound in {home}: give the folder to compare with (verify PATH)")
    return [fs_source(FsOptions(root, name), settings, home) for name, root in roots.items()]


def _print(found: Verification, when: str) -> None:
    label = f" ({when})" if when else ""
    verdict = "equal" if found.equal else f"{len(found.findings)} differences"
    out.print(
        f"{found.index}{label}: {verdict}; {found.documents} documents, {found.points} points, "
        f"{found.vectors_checked} vectors checked",
        markup=False,
        highlight=False,
    )
    for finding in found.findings:
        out.print(
            f"  {finding.kind:13} {finding.source}/{finding.doc_id!r}: {finding.detail}",
            markup=False,
            highlight=False,
        )
    for name in found.unlisted:
        out.print(f"  source {name} cannot be listed (a change stream): not compared", markup=False)
