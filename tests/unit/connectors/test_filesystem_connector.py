"""Unit tests for the filesystem source: scan, rescan, skips, deletes and the checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from connectors.filesystem import (
    Checkpoint,
    FileState,
    FilesystemSource,
    html_to_text,
    title_of,
)
from pipeline.core.errors import ConfigError
from pipeline.core.hashing import content_hash
from pipeline.sources import Change, PassReport

BASE_NS = 1_700_000_000_000_000_000


def write(root: Path, relpath: str, body: str | bytes, mtime_ns: int = BASE_NS) -> Path:
    """Write a file with an explicit mtime, so tests never depend on clock granularity."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(body, str):
        path.write_text(body, encoding="utf-8")
    else:
        path.write_bytes(body)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def fs(root: Path, **options: Any) -> FilesystemSource:
    """A source over ``root`` whose checkpoint lives beside it (a new one reloads it)."""
    return FilesystemSource(root, root.parent / f"{root.name}.checkpoint.json", **options)


def scan(source: FilesystemSource, _previous: object = None) -> tuple[list[Change], PassReport, Checkpoint]:
    """Run a full pass and commit every change, as the runner would after indexing."""
    report = PassReport()
    changes = list(source.changes(report))
    source.commit(changes)
    return changes, report, source.checkpoint


def doc_ids(changes: Sequence[Change]) -> list[str]:
    return [c.event.doc_id for c in changes if c.event is not None]


def test_first_scan_emits_upserts_with_relative_ids_versions_and_metadata(tmp_path: Path) -> None:
    """A first scan emits one upsert per text file, keyed by POSIX relpath, versioned by mtime_ns."""
    write(tmp_path, "guides/setup.md", "# Setup Guide\n\nInstall it.\n", BASE_NS + 5)
    write(tmp_path, "notes.txt", "just notes\n", BASE_NS + 7)

    changes, report, _ = scan(fs(tmp_path))

    events = [c.event for c in changes]
    assert [e.doc_id for e in events if e] == ["guides/setup.md", "notes.txt"]
    setup = events[0]
    assert setup is not None
    assert setup.op == "upsert"
    assert setup.source == "fs"
    assert setup.version == BASE_NS + 5
    assert setup.text == "# Setup Guide\n\nInstall it."
    assert setup.content_hash == content_hash("# Setup Guide\n\nInstall it.\n")
    size = (tmp_path / "guides/setup.md").stat().st_size
    assert setup.metadata == {"path": "guides/setup.md", "title": "Setup Guide", "ext": ".md", "bytes": size}
    assert events[1] is not None
    assert events[1].metadata["title"] == "notes"  # no heading: the file stem
    assert changes[0].state == FileState(BASE_NS + 5, size, setup.content_hash, BASE_NS + 5)
    assert report.unchanged == 0
    assert not report.skipped


def test_custom_source_name_is_used(tmp_path: Path) -> None:
    """The ``source`` argument names every event, so two roots can share one index."""
    write(tmp_path, "a.md", "alpha")
    changes, _, _ = scan(fs(tmp_path, name="wiki"))
    assert changes[0].event is not None
    assert changes[0].event.source == "wiki"


def test_rescan_with_saved_checkpoint_emits_nothing(tmp_path: Path) -> None:
    """An unchanged tree, rescanned from a saved checkpoint, emits nothing and counts unchanged."""
    root = tmp_path / "docs"
    write(root, "a.md", "alpha")
    write(root, "b/c.rst", "Title\n=====\n\nbody")
    scan(fs(root))

    changes, report, _ = scan(fs(root))

    assert changes == []
    assert report.unchanged == 2


def test_unchanged_stat_means_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files whose (mtime_ns, size) match the checkpoint are never opened."""
    write(tmp_path, "a.md", "alpha")
    source = fs(tmp_path)
    scan(source)
    opened = record_opens(monkeypatch)

    scan(source)

    assert opened == []


def test_edit_emits_one_upsert(tmp_path: Path) -> None:
    """Editing one file emits exactly one upsert carrying the new text, hash and mtime."""
    write(tmp_path, "a.md", "alpha")
    write(tmp_path, "b.md", "beta")
    _, _, checkpoint = scan(fs(tmp_path))
    write(tmp_path, "a.md", "alpha, edited", BASE_NS + 10)

    changes, report, checkpoint = scan(fs(tmp_path), checkpoint)

    assert len(changes) == 1
    event = changes[0].event
    assert event is not None
    assert (event.doc_id, event.op, event.text, event.version) == (
        "a.md",
        "upsert",
        "alpha, edited",
        BASE_NS + 10,
    )
    assert event.content_hash == content_hash("alpha, edited")
    assert report.unchanged == 1
    state = checkpoint.get("a.md")
    assert state is not None
    assert state.mtime_ns == BASE_NS + 10


def test_delete_emits_delete_newer_than_last_mtime(tmp_path: Path) -> None:
    """A removed file emits a text-less delete whose version beats the last seen mtime."""
    future = BASE_NS * 2  # far in the future: the version must still be greater
    write(tmp_path, "a.md", "alpha", future)
    write(tmp_path, "b.md", "beta")
    _, _, checkpoint = scan(fs(tmp_path))
    (tmp_path / "a.md").unlink()

    changes, _, checkpoint = scan(fs(tmp_path), checkpoint)

    assert len(changes) == 1
    change = changes[0]
    assert change.event is not None
    assert (change.event.doc_id, change.event.op, change.event.text) == ("a.md", "delete", None)
    assert change.event.version > future
    assert change.state == FileState.tombstone(change.event.version)
    assert checkpoint.live() == {"b.md"}


def test_touch_without_edit_updates_checkpoint_only(tmp_path: Path) -> None:
    """A new mtime with identical content emits no event but teaches the checkpoint the mtime."""
    write(tmp_path, "a.md", "alpha")
    _, _, checkpoint = scan(fs(tmp_path))
    write(tmp_path, "a.md", "alpha", BASE_NS + 99)

    changes, report, checkpoint = scan(fs(tmp_path), checkpoint)

    assert len(changes) == 1
    assert changes[0].event is None
    assert changes[0].state == FileState(BASE_NS + 99, 5, content_hash("alpha"), BASE_NS)
    assert report.unchanged == 1
    state = checkpoint.get("a.md")
    assert state is not None
    assert state.mtime_ns == BASE_NS + 99
    again, report, _ = scan(fs(tmp_path), checkpoint)
    assert again == []
    assert report.unchanged == 1


def test_binary_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A NUL byte in the first 8 KiB marks a file binary: skipped, counted and logged."""
    write(tmp_path, "blob.txt", b"PK\x03\x04\x00\x00binary")
    with caplog.at_level(logging.INFO):
        changes, report, _ = scan(fs(tmp_path))
    assert changes == []
    assert report.skipped == {"binary": 1}
    assert any("blob.txt" in r.getMessage() and "binary" in r.getMessage() for r in caplog.records)


def test_invalid_utf8_is_skipped(tmp_path: Path) -> None:
    """Text that is not strict UTF-8 is skipped as undecodable rather than indexed as mojibake."""
    write(tmp_path, "latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"))
    changes, report, _ = scan(fs(tmp_path))
    assert changes == []
    assert report.skipped == {"undecodable": 1}


def test_utf8_bom_is_accepted_and_stripped(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark does not make a file undecodable nor leak into the text."""
    write(tmp_path, "bom.md", b"\xef\xbb\xbf# Hello\n\nworld")
    changes, _, _ = scan(fs(tmp_path))
    event = changes[0].event
    assert event is not None
    assert event.text == "# Hello\n\nworld"
    assert event.metadata["title"] == "Hello"


def record_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the names of files opened through ``Path.open``."""
    opened: list[str] = []
    real_open = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    return opened


def test_oversized_file_is_skipped_without_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over max_bytes is skipped as too_large from its size alone; it is never opened."""
    write(tmp_path, "big.txt", "x" * 200)
    write(tmp_path, "small.txt", "x" * 10)
    source = fs(tmp_path, max_bytes=100)
    opened = record_opens(monkeypatch)

    changes, report, _ = scan(source)

    assert doc_ids(changes) == ["small.txt"]
    assert report.skipped == {"too_large": 1}
    assert opened == ["small.txt"]


def test_known_file_that_becomes_unindexable_is_deleted_and_retried(tmp_path: Path) -> None:
    """A known file that turns binary or too large is reported and deleted from the index (its
    old text must not stay searchable); it is read again every pass and returns once indexable."""
    write(tmp_path, "a.txt", "alpha")
    write(tmp_path, "b.txt", "beta")
    scan(fs(tmp_path, max_bytes=100))
    write(tmp_path, "a.txt", b"\x00\x01", BASE_NS + 1)
    write(tmp_path, "b.txt", "y" * 500, BASE_NS + 1)

    changes, report, checkpoint = scan(fs(tmp_path, max_bytes=100))

    assert [(c.doc_id, c.event.op if c.event else None) for c in changes] == [
        ("a.txt", "delete"),
        ("b.txt", "delete"),
    ]
    assert report.skipped == {"binary": 1, "too_large": 1}
    assert checkpoint.live() == set()
    again, report, _ = scan(fs(tmp_path, max_bytes=100))
    assert again == []
    assert report.skipped == {"binary": 1, "too_large": 1}
    raised, _, _ = scan(fs(tmp_path, max_bytes=1000))
    assert doc_ids(raised) == ["b.txt"]
    assert raised[0].event is not None
    assert raised[0].event.version > changes[1].event.version  # type: ignore[union-attr]


def test_hidden_files_and_folders_are_excluded(tmp_path: Path) -> None:
    """Hidden paths (.git/, .embedstream/, dotfiles) are excluded by default at any depth."""
    write(tmp_path, ".git/HEAD.txt", "ref")
    write(tmp_path, ".embedstream/notes.md", "state")
    write(tmp_path, "docs/.drafts/wip.md", "draft")
    write(tmp_path, "docs/.hidden.md", "hidden")
    write(tmp_path, ".top.md", "hidden")
    write(tmp_path, "docs/visible.md", "visible")

    changes, report, _ = scan(fs(tmp_path))

    assert doc_ids(changes) == ["docs/visible.md"]
    assert not report.skipped


def test_default_include_counts_other_extensions_as_unsupported(tmp_path: Path) -> None:
    """Only the text extensions are indexed by default; code and images are counted as unsupported."""
    for name in ("a.txt", "b.md", "c.markdown", "d.rst", "e.html", "f.htm", "g.text", "h.py", "i.png"):
        write(tmp_path, f"sub/{name}", "<p>content</p>")
    changes, report, _ = scan(fs(tmp_path))
    assert [Path(d).suffix for d in doc_ids(changes)] == [
        ".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".text"
    ]  # fmt: skip
    assert report.skipped == {"unsupported": 2}


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    """``**/`` globs match top-level and nested files; ``*`` stays within one folder."""
    write(tmp_path, "top.md", "t")
    write(tmp_path, "docs/a.md", "a")
    write(tmp_path, "docs/deep/b.md", "b")
    write(tmp_path, "docs/deep/skip.md", "s")
    write(tmp_path, "build/out.md", "o")
    write(tmp_path, "notes.txt", "n")

    everything_md = fs(tmp_path, include=["**/*.md"], exclude=["build/**", "**/skip.md"])
    one_level = fs(tmp_path, include=["docs/*.md"], exclude=[])

    assert doc_ids(scan(everything_md)[0]) == ["docs/a.md", "docs/deep/b.md", "top.md"]
    assert doc_ids(scan(one_level)[0]) == ["docs/a.md"]


def test_newly_excluded_file_is_deleted(tmp_path: Path) -> None:
    """A known file that an exclude now covers is deleted from the index."""
    write(tmp_path, "keep.md", "k")
    write(tmp_path, "drop/old.md", "o")
    scan(fs(tmp_path))

    changes, _, checkpoint = scan(fs(tmp_path, exclude=["drop/**"]))

    assert [(c.doc_id, c.event.op if c.event else None) for c in changes] == [("drop/old.md", "delete")]
    assert checkpoint.live() == {"keep.md"}


def test_html_is_converted_to_text_with_title_and_no_script(tmp_path: Path) -> None:
    """HTML becomes paragraphs of unescaped text; the <title> is kept, scripts and styles dropped."""
    page = (
        "<html><head><title>Release &amp; Notes</title><style>p { color: red }</style>"
        "<script>var secret = '<p>hidden</p>';</script></head>"
        "<body><h1>Changes</h1><p>First   para\ngraph.</p><p>Fish &amp; chips &lt;3</p></body></html>"
    )
    write(tmp_path, "site/index.html", page)

    changes, _, _ = scan(fs(tmp_path))

    event = changes[0].event
    assert event is not None
    assert event.text == "Changes\n\nFirst para graph.\n\nFish & chips <3"
    assert event.metadata["title"] == "Release & Notes"
    assert event.metadata["ext"] == ".html"
    assert event.text is not None
    assert "secret" not in event.text
    assert "color" not in event.text


def test_html_to_text_falls_back_to_first_h1() -> None:
    """Without a <title>, the first <h1> names the page; <br> and <pre> keep their line breaks."""
    text, title = html_to_text("<h1>Main</h1><h1>Second</h1><p>a<br>b</p><pre>  x\n  y</pre>")
    assert title == "Main"
    assert text == "Main\n\nSecond\n\na\nb\n\n  x\n  y"
    assert html_to_text("<p>no heading</p>") == ("no heading", None)


def test_title_of_markdown_rst_and_plain_text() -> None:
    """Titles come from the first # heading or underlined line, ignoring front matter and code."""
    markdown = "---\ntitle: meta\n---\n```sh\n# not a title\n```\nintro\n\n# Real Title #\n"
    assert title_of(markdown, ".md") == "Real Title"
    assert title_of("Setext\n======\n\nbody", ".markdown") == "Setext"
    assert title_of("=====\nOverlined\n=====\n\nbody", ".rst") == "Overlined"
    assert title_of("Section\n-------\n", ".rst") == "Section"
    assert title_of("## Only a subheading\n", ".md") is None
    assert title_of("plain words", ".txt") is None
    assert title_of("<title>T</title>", ".HTM") == "T"


def test_file_emptied_after_indexing_is_deleted(tmp_path: Path) -> None:
    """A known file whose text normalizes to nothing is deleted; an unknown empty one is skipped."""
    write(tmp_path, "a.md", "alpha")
    _, _, checkpoint = scan(fs(tmp_path))
    write(tmp_path, "a.md", "  \n\n\t\n", BASE_NS + 3)
    write(tmp_path, "blank.md", "")

    changes, report, checkpoint = scan(fs(tmp_path), checkpoint)

    assert len(changes) == 1
    event = changes[0].event
    assert event is not None
    assert (event.doc_id, event.op) == ("a.md", "delete")
    assert event.version > BASE_NS
    assert report.skipped == {"empty": 2}
    assert checkpoint.live() == set()


def test_checkpoint_save_load_round_trip(tmp_path: Path) -> None:
    """A saved checkpoint loads back identical and leaves no temporary file behind."""
    states = {
        "a.md": FileState(1, 2, "h1", 1),
        "dir/é.md": FileState(3, 4, "h2", 7, racy=True),
        "gone.md": FileState.tombstone(9),
    }
    checkpoint = Checkpoint(states)
    path = tmp_path / "state" / "checkpoints" / "fs.json"

    checkpoint.save(path)
    loaded = Checkpoint.load(path)

    assert loaded.live() == {"a.md", "dir/é.md"}
    assert {rel: loaded.get(rel) for rel in states} == states
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_checkpoint_of_the_previous_format_loads_with_mtime_versions(tmp_path: Path) -> None:
    """A format-1 checkpoint (no versions) loads, each file's version being its mtime."""
    path = tmp_path / "cp.json"
    path.write_text('{"format": 1, "files": {"a.md": {"mtime_ns": 5, "size": 2, "content_hash": "h"}}}')
    assert Checkpoint.load(path).get("a.md") == FileState(5, 2, "h", 5)


@pytest.mark.parametrize("body", ["{not json", '{"format": 1, "files": {"a.md": {"size": 1}}}', "[]", '"x"'])
def test_corrupt_checkpoint_loads_empty(tmp_path: Path, body: str, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt checkpoint loads as empty with a warning: a full rescan, not a crash."""
    path = tmp_path / "cp.json"
    path.write_text(body, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="connectors.filesystem"):
        loaded = Checkpoint.load(path)
    assert loaded.live() == set()
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_missing_checkpoint_loads_empty(tmp_path: Path) -> None:
    """A missing checkpoint is simply a first run."""
    assert Checkpoint.load(tmp_path / "nope.json").live() == set()


def test_scan_order_is_deterministic(tmp_path: Path) -> None:
    """Files are emitted in sorted relpath order, then deletes in sorted order, every time."""
    for relpath in ("z.md", "a/b/c.md", "a.md", "m/n.md", "a/a.md"):
        write(tmp_path, relpath, relpath)
    first, _, _ = scan(fs(tmp_path))
    for relpath in ("z.md", "a/a.md"):
        (tmp_path / relpath).unlink()
    write(tmp_path, "b.md", "new")

    second, _, _ = scan(fs(tmp_path))

    assert [c.doc_id for c in first] == ["a.md", "a/a.md", "a/b/c.md", "m/n.md", "z.md"]
    assert [(c.doc_id, c.event.op if c.event else None) for c in second] == [
        ("b.md", "upsert"),
        ("a/a.md", "delete"),
        ("z.md", "delete"),
    ]


def test_file_symlinks_followed_directory_symlinks_not(tmp_path: Path) -> None:
    """A symlinked file is indexed; a symlinked folder (here a loop) is not entered."""
    write(tmp_path, "real/doc.md", "real")
    (tmp_path / "alias.md").symlink_to(tmp_path / "real/doc.md")
    (tmp_path / "real/loop").symlink_to(tmp_path, target_is_directory=True)

    changes, _, _ = scan(fs(tmp_path))

    assert doc_ids(changes) == ["alias.md", "real/doc.md"]


def test_unlistable_folder_keeps_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be listed is reported, and its known files are not deleted."""
    write(tmp_path, "locked/a.md", "alpha")
    write(tmp_path, "open.md", "open")
    _, _, checkpoint = scan(fs(tmp_path))
    real_scandir = os.scandir

    def failing_scandir(path: Any) -> Any:
        if Path(path).name == "locked":
            raise PermissionError("denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    changes, report, _ = scan(fs(tmp_path), checkpoint)

    assert changes == []
    assert report.skipped == {"unreadable": 1}


def test_missing_root_is_an_error_not_a_mass_delete(tmp_path: Path) -> None:
    """A root that is not a directory raises instead of deleting every known document."""
    Checkpoint({"a.md": FileState(1, 1, "h", 1)}).save(tmp_path / "unmounted.checkpoint.json")
    with pytest.raises(ConfigError):
        list(fs(tmp_path / "unmounted").changes(PassReport()))


def test_broken_links_and_other_non_files_are_passed_over(tmp_path: Path) -> None:
    """A dangling link (a folder's only entry, or beside a file skipped for its extension) is
    neither indexed nor reported under another file's reason, and the pass goes on."""
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone/gone.md").symlink_to(tmp_path / "nowhere.md")
    write(tmp_path, "mixed/photo.png", "not text")
    (tmp_path / "mixed/gone.md").symlink_to(tmp_path / "nowhere.md")
    write(tmp_path, "kept.md", "kept")

    changes, report, _ = scan(fs(tmp_path))

    assert doc_ids(changes) == ["kept.md"]
    assert report.skipped == {"unsupported": 1}
