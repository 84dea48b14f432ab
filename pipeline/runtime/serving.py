"""How a running ``watch`` serves other processes, and how they find it and trust it.

The embedded engine admits one process per store, so the watcher owns it and answers
``search`` and ``status`` for the others over HTTP. ``<state_dir>/watch.json`` (mode 0600)
says who answers: pid, resolved state dir, index, model fingerprint, URL, and the token its
requests must carry. A client trusts the file only while that pid lives and the state dir
is its own; each request carries the client's state dir, index and (for a search) model
fingerprint, and the watcher refuses what it does not serve. So an answer never comes from
another store, index or model, and whoever cannot read the state dir cannot query it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.config.settings import Settings
from pipeline.core.errors import ConfigError, EmbedstreamError, StoreLocked, StoreUnavailable
from pipeline.core.files import atomic_write
from pipeline.observability.http import DaemonServer, Reply, bearer, is_loopback, split_addr
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.versions.search import MAX_K, SearchAnswer, live_documents, nothing_found
from pipeline.versions.spec import live_version

log = logging.getLogger(__name__)

ENDPOINT_FILE = "watch.json"
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Identity:
    """What a watcher serves; a request for anything else is refused."""

    state_dir: str  # resolved, so two spellings of one directory are equal
    index: str
    fingerprint: str


@dataclass(frozen=True)
class Endpoint:
    """The contents of ``watch.json``."""

    pid: int
    state_dir: str
    index: str
    fingerprint: str
    url: str
    token: str | None  # None when http.token is configured: clients send their own

    @classmethod
    def read(cls, state_dir: Path) -> Endpoint | None:
        try:
            return cls(**json.loads((state_dir / ENDPOINT_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None  # none, or a partial or foreign file: no watcher to trust


@contextmanager
def serve_pipeline(pipeline: EmbeddedPipeline, registry: CollectorRegistry, addr: str) -> Iterator[str]:
    """Serve ``/search``, ``/status`` (and the probes, ``/metrics``) at ``addr`` until the block
    ends; ``watch.json`` exists exactly as long as the endpoint does. Yields its URL."""
    settings = pipeline.settings
    configured = settings.http.token.get_secret_value() if settings.http.token else None
    check_bind(addr, configured is not None)
    token = configured or secrets.token_urlsafe(32)
    identity = Identity(str(settings.state_dir.resolve()), settings.index.name, pipeline.encoder.fingerprint)
    routes = {
        "/search": lambda body: _search(pipeline, identity, body),
        "/status": lambda body: _status(pipeline, identity, body),
    }
    server = DaemonServer(addr, registry, lambda: (True, "ok"), routes, token=token).start()
    path = settings.state_dir / ENDPOINT_FILE
    try:
        endpoint = Endpoint(
            os.getpid(), **asdict(identity), url=server.url, token=None if configured else token
        )
        # atomic_write creates the file 0600 (mkstemp): only the owner reads the token.
        atomic_write(path, json.dumps(asdict(endpoint)).encode())
        yield server.url
    finally:
        _withdraw(path)
        server.stop()


def check_bind(addr: str, token_configured: bool) -> None:
    """The endpoint answers with document text: beyond loopback only behind a token."""
    host, _ = split_addr(addr)
    if not token_configured and not is_loopback(host):
        msg = (
            f"http.addr {addr} can be reached from other machines, and the watcher answers with "
            "your documents' text: bind 127.0.0.1, or set http.token (EMBEDSTREAM_HTTP__TOKEN) so "
            "that every request must carry it"
        )
        raise ConfigError(msg)


def _withdraw(path: Path) -> None:
    # Only our own file: a stopped watcher must not remove a successor's.
    endpoint = Endpoint.read(path.parent)
    if endpoint is not None and endpoint.pid == os.getpid():
        path.unlink(missing_ok=True)


def _refusal(identity: Identity, body: Mapping[str, Any], *, model: bool) -> Reply | None:
    wanted = asdict(identity)
    if not model:
        del wanted["fingerprint"]
    for key, ours in wanted.items():
        theirs = body.get(key)
        if theirs != ours:
            return Reply(409, {"error": f"this watcher serves {key} {ours!r}, not {theirs!r}"})
    return None


def _search(pipeline: EmbeddedPipeline, identity: Identity, body: Mapping[str, Any]) -> Any:
    query, k, filters = body.get("query"), body.get("k", 10), body.get("filters") or {}
    if not isinstance(query, str) or not query.strip():
        return Reply(400, {"error": "the query is empty"})
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        return Reply(400, {"error": f"k must be an integer from 1 to {MAX_K}, got {k!r}"})
    if not isinstance(filters, dict) or not all(isinstance(v, str) for v in filters.values()):
        return Reply(400, {"error": "filters must map keys to strings"})
    if refused := _refusal(identity, body, model=True):
        return refused
    results = [r.as_json() for r in pipeline.search(query, k, filters)]
    if results:
        return {"results": results, "empty": None}
    with pipeline.locked():
        documents = live_documents(pipeline.store, live_version(pipeline.store, identity.index))
    return {"results": results, "empty": nothing_found(identity.index, documents, filters)}


def _status(pipeline: EmbeddedPipeline, identity: Identity, body: Mapping[str, Any]) -> Any:
    return _refusal(identity, body, model=False) or pipeline.status()


def remote_search(
    settings: Settings, fingerprint: str, query: str, k: int, filters: Mapping[str, str]
) -> SearchAnswer | None:
    """The running watcher's answer, or None when no watcher serves this store.

    ``fingerprint`` is the model this search would encode with; a watcher of another model
    cannot answer (its vectors are not comparable), nor can the store be opened beside it.
    """
    endpoint = find_watcher(settings)
    if endpoint is None:
        return None
    if endpoint.fingerprint != fingerprint:
        msg = (
            f"index {endpoint.index!r} was built with model {endpoint.fingerprint} (so says its running "
            f"watcher, pid {endpoint.pid}), but this search uses {fingerprint}: set model.name "
            "(--model) to the model the index was built with"
        )
        raise ConfigError(msg)
    body = {
        **_identity_of(settings),
        "fingerprint": fingerprint,
        "query": query,
        "k": k,
        "filters": dict(filters),
    }
    answer = _call(endpoint, settings, "/search", body)
    return SearchAnswer(list(answer["results"]), answer.get("empty")) if answer is not None else None


def remote_status(settings: Settings) -> dict[str, Any] | None:
    """The running watcher's status of this store's index, or None when there is none."""
    endpoint = find_watcher(settings)
    if endpoint is None:
        return None
    answer = _call(endpoint, settings, "/status", _identity_of(settings))
    return dict(answer) if answer is not None else None


def find_watcher(settings: Settings) -> Endpoint | None:
    """The watcher that owns this store, or None: no file, a dead pid (a watcher that was
    killed), or a file that describes another directory (a copied state dir)."""
    state_dir = settings.state_dir.resolve()
    endpoint = Endpoint.read(state_dir)
    if endpoint is None:
        return None
    if not _alive(endpoint.pid):
        log.info("the watcher of %s (pid %d) is gone; opening the store directly", state_dir, endpoint.pid)
        return None
    if Path(endpoint.state_dir) != state_dir:
        log.info("%s describes the store %s, not this one; ignored", ENDPOINT_FILE, endpoint.state_dir)
        return None
    if endpoint.index != settings.index.name:
        msg = (
            f"the store {state_dir} is owned by a running watcher (pid {endpoint.pid}) that serves "
            f"index {endpoint.index!r}, not {settings.index.name!r}: use --index {endpoint.index}, or "
            "stop the watcher to open the store yourself"
        )
        raise StoreLocked(msg)
    return endpoint


def _identity_of(settings: Settings) -> dict[str, str]:
    return {"state_dir": str(settings.state_dir.resolve()), "index": settings.index.name}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _call(endpoint: Endpoint, settings: Settings, route: str, body: dict[str, Any]) -> Any:
    configured = settings.http.token.get_secret_value() if settings.http.token else None
    token = configured or endpoint.token
    headers = {"Content-Type": "application/json", **(bearer(token) if token else {})}
    request = urllib.request.Request(  # noqa: S310 -- the URL is the watcher's own, from watch.json
        endpoint.url + route, data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _refused(endpoint, exc) from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            msg = f"the watcher at {endpoint.url} (pid {endpoint.pid}) did not answer within {_TIMEOUT_S:g} s"
            raise StoreUnavailable(msg) from exc
        log.info("no watcher answers at %s (%s); opening the store directly", endpoint.url, reason)
        return None


def _refused(endpoint: Endpoint, exc: urllib.error.HTTPError) -> EmbedstreamError:
    try:
        detail = str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        detail = exc.reason
    watcher = f"the watcher at {endpoint.url} (pid {endpoint.pid})"
    if exc.code == 401:
        return ConfigError(f"{watcher} refused the token: set http.token to the watcher's")
    if exc.code == 409:
        return StoreLocked(f"{watcher} owns this store and refused: {detail}")
    return EmbedstreamError(f"{watcher} answered {exc.code}: {detail}")
