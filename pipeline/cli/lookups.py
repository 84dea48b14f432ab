"""What the embedded mode's commands read without indexing (``search``, ``status``), and what
``index``, ``watch``, ``search`` and ``status`` say when the store is not theirs to open:
another process owns it, or the state dir does not exist (a search never creates one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.config.settings import Settings
from pipeline.core.errors import StoreLocked
from pipeline.versions.search import SearchAnswer, live_documents, nothing_found, search_documents
from pipeline.versions.spec import live_version

# Each command says how to get past a store that another process holds.
_WAY_OUT = {
    "index": "wait for it to finish, or index into another --state-dir",
    "watch": "one process owns a store: stop it first, or watch with another --state-dir",
    "search": "wait for it to finish (a running `embedstream watch` answers searches itself)",
}
_WATCHER_WAY_OUT = {
    "index": "it already indexes its folder; stop it to index here, or use another --state-dir",
    "watch": "one watcher per store: stop it first, or watch with another --state-dir",
    "search": "it answers searches itself: check that its state dir and --index are these",
}


def missing_state_dir(settings: Settings) -> str | None:
    """Why there is nothing to read: the embedded store's state dir does not exist."""
    if settings.store.url or settings.state_dir.exists():
        return None
    return (
        f"nothing is indexed in index {settings.index.name!r} yet: the state dir {settings.state_dir} "
        "does not exist (check --state-dir, or run `embedstream index PATH` first)"
    )


@contextmanager
def store_owned_elsewhere(settings: Settings, command: str) -> Iterator[None]:
    """A StoreLocked from opening the embedded store, told for ``command``: who holds it (a
    watcher, or another run such as ``index``) and what to do."""
    try:
        yield
    except StoreLocked as exc:
        lock = settings.qdrant_dir / "LOCK"
        if not lock.is_file() or "embedded store" not in str(exc):
            raise  # a watcher's refusal, or a server store: already says what to do
        raise StoreLocked(
            _owned_by(settings, lock.read_text().strip() or "another process", command)
        ) from exc


def _owned_by(settings: Settings, owner: str, command: str) -> str:
    from pipeline.runtime.serving import Endpoint

    endpoint = Endpoint.read(settings.state_dir.resolve())
    if endpoint is not None and owner == f"pid {endpoint.pid}":
        way_out = _WATCHER_WAY_OUT.get(command, _WATCHER_WAY_OUT["search"])
        return f"the store {settings.state_dir} is owned by `embedstream watch` ({owner}): {way_out}"
    way_out = _WAY_OUT.get(command, _WAY_OUT["search"])
    return f"the store {settings.state_dir} is in use by {owner} (another embedstream command): {way_out}"


@contextmanager
def dead_letters_reported_here() -> Iterator[None]:
    """The command prints each dead letter itself: the library's warning about it would
    say it a second time (shown still at --log-level info or debug)."""
    logger = logging.getLogger("pipeline.bus.dead_letters")
    level = logger.level
    if logger.getEffectiveLevel() >= logging.WARNING:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def search_store(settings: Settings, query: str, k: int, filters: dict[str, str]) -> SearchAnswer:
    """Answered by the running watcher when one owns the store, else by the store itself."""
    from pipeline.runtime.adapters import make_encoder, open_store
    from pipeline.runtime.models import VersionEncoders
    from pipeline.runtime.serving import remote_search

    if missing := missing_state_dir(settings):
        return SearchAnswer([], missing)
    encoder = make_encoder(settings)
    remote = remote_search(settings, encoder.fingerprint, query, k, filters)
    if remote is not None:
        return remote
    with store_owned_elsewhere(settings, "search"):
        store = open_store(settings)
    try:
        version = live_version(store, settings.index.name)
        if version is not None:  # the live version's own model: a promote or rollback applies at once
            encoder = VersionEncoders(settings, encoder).for_version(version)
        results = search_documents(store, version, encoder, query, k, filters)
        documents = 0 if results else live_documents(store, version)
    finally:
        store.close()
    empty = None if results else nothing_found(settings.index.name, documents, filters)
    return SearchAnswer([r.as_json() for r in results], empty)


def store_status(settings: Settings) -> dict[str, Any]:
    """Asked of the running watcher when one owns the store, else read from the store."""
    from pipeline.runtime.adapters import open_store
    from pipeline.runtime.embedded import index_status
    from pipeline.runtime.serving import remote_status

    if missing_state_dir(settings):
        return {"alias": settings.index.name, "live": None, "versions": []}
    remote = remote_status(settings)
    if remote is not None:
        return remote
    with store_owned_elsewhere(settings, "status"):
        store = open_store(settings)
    try:
        return index_status(store, settings.index.name)
    finally:
        store.close()
