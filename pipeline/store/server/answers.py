"""Qdrant's answers as the error tree, and when an API key may go over plain HTTP."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from qdrant_client.http.exceptions import UnexpectedResponse

from pipeline.core.errors import (
    AuthenticationFailed,
    ConfigError,
    EmbedstreamError,
    FatalError,
    StoreRejected,
    StoreUnavailable,
)

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class Conflict(FatalError):
    """409: what we wanted to create exists (callers that expect the race catch this)."""


def answer_error(exc: UnexpectedResponse, url: str, *, write: bool) -> EmbedstreamError:
    """The error tree's answer to a Qdrant HTTP error status (see the module docstring)."""
    status = exc.status_code or 0
    message = _server_message(exc)
    if status >= 500 or status in (0, 408, 429):
        return StoreUnavailable(f"Qdrant server at {url} answered {status}: {message}")
    if status in (401, 403):
        return AuthenticationFailed(
            f"the Qdrant server at {url} refused the request ({status}): {message}; check store.api_key"
        )
    if status == 409:
        return Conflict(f"Qdrant server at {url}: {message}")
    if write and status != 404:
        return StoreRejected(f"Qdrant rejected the write ({status}): {message}")
    return FatalError(f"Qdrant server at {url} answered {status}: {message}")


def _server_message(exc: UnexpectedResponse) -> str:
    """Qdrant's own explanation (``{"status": {"error": ...}}``), else the raw answer, bounded."""
    try:
        error = exc.structured()["status"]["error"]
    except (ValueError, KeyError, TypeError):
        error = exc.content.decode("utf-8", "replace")
    return str(error)[:500]


def refuse_clear_text_key(url: str | None, api_key: str | None, allowed: bool) -> None:
    """ConfigError when ``api_key`` would go over ``http://`` to a host that is not loopback."""
    parts = urlsplit(url or "")
    if api_key is None or allowed or parts.scheme != "http" or _is_loopback(parts.hostname or ""):
        return
    raise ConfigError(
        f"store.api_key would cross the network in clear text: store.url={url} is http:// to a host "
        "that is not loopback; use https://, or set store.allow_insecure_api_key=true (trusted network only)"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def answered_in_tls(exc: BaseException) -> bool:
    """A plain HTTP request answered with a TLS alert: httpx cannot parse it as HTTP."""
    chain: BaseException | None = exc
    while chain is not None:
        if any(sign in str(chain) for sign in ("illegal request line", "illegal status line")):
            return True
        chain = chain.__cause__ or chain.__context__
    return False
