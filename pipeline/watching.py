"""How a running ``watch`` serves other processes, and how they find it.

The embedded engine admits one process per store, so the watcher owns it and publishes
its HTTP address in ``<state_dir>/watch.json``; ``search`` and ``status`` go there first.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.embedded import EmbeddedPipeline
from pipeline.http import DaemonServer

log = logging.getLogger(__name__)

_TIMEOUT_S = 60.0


def _endpoint_file(state_dir: Path) -> Path:
    return state_dir / "watch.json"


@contextmanager
def serve_pipeline(pipeline: EmbeddedPipeline, registry: CollectorRegistry, addr: str) -> Iterator[str]:
    def search(body: dict[str, Any]) -> Any:
        results = pipeline.search(str(body["query"]), int(body.get("k", 10)), body.get("filters") or {})
        return [r.as_json() for r in results]

    routes = {"/search": search, "/status": lambda _body: pipeline.status()}
    server = DaemonServer(addr, registry, lambda: (True, "ok"), routes).start()
    endpoint = _endpoint_file(pipeline.settings.state_dir)
    endpoint.write_text(json.dumps({"pid": os.getpid(), "url": server.url}))
    try:
        yield server.url
    finally:
        endpoint.unlink(missing_ok=True)
        server.stop()


def remote_search(
    state_dir: Path, query: str, k: int, filters: Mapping[str, str]
) -> list[dict[str, Any]] | None:
    """Results from a running watcher, or None when there is none."""
    answer = _call(state_dir, "/search", {"query": query, "k": k, "filters": dict(filters)})
    return list(answer) if answer is not None else None


def remote_status(state_dir: Path) -> dict[str, Any] | None:
    answer = _call(state_dir, "/status", None)
    return dict(answer) if answer is not None else None


def _call(state_dir: Path, route: str, body: dict[str, Any] | None) -> Any:
    endpoint = _endpoint_file(state_dir)
    try:
        url = json.loads(endpoint.read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 -- our own loopback endpoint
        url + route, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the running watcher at {url} answered {exc.code}: {exc.read()!r}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        log.info("no watcher answers at %s; opening the store directly", url)
        return None
