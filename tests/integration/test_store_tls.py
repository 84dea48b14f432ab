"""The Qdrant server adapter's transport security: https verified against store.ca_file.

Each check runs twice. First against a local HTTPS endpoint that answers the one REST
call made (``GET /collections``) the way Qdrant does and records the API key of every
request it reads: that shows directly that a refused certificate keeps the key at home,
and needs no server binary. Then against a real Qdrant server started with TLS, its
certificate from a private CA (``qdrant_tls_server``, :mod:`tests.qdrant_fixtures`), with
a full store round trip. Either way qdrant-client, httpx and the TLS handshake are real.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.config.settings import StoreSettings
from pipeline.core.errors import AuthenticationFailed, EmbedstreamError
from pipeline.store import CollectionSpec, PointWrite, SearchOptions
from pipeline.store.server import ServerStore
from tests.pki import CertificateAuthority
from tests.qdrant_fixtures import QdrantServer, QdrantTlsEndpoint

API_KEY = "qdrant-test-key"


@dataclass
class Endpoint:
    url: str
    ca: Path
    rogue_ca: Path
    seen_keys: list[str | None] = field(default_factory=list)


def handler_for(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class QdrantLike(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            key = self.headers.get("api-key")
            endpoint.seen_keys.append(key)
            if key != API_KEY:
                self._answer(401, {"status": {"error": "Invalid api-key"}})
            else:
                self._answer(200, {"result": {"collections": []}, "status": "ok", "time": 0.0})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    return QdrantLike


@pytest.fixture
def https_endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    ca = CertificateAuthority("qdrant test CA")
    server_cert = ca.issue("qdrant", ["127.0.0.1", "localhost"])
    server_cert.write_pem(tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    endpoint = Endpoint(
        url="",
        ca=ca.write_pem(tmp_path / "ca.pem"),
        rogue_ca=CertificateAuthority("someone else").write_pem(tmp_path / "rogue.pem"),
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(endpoint))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    endpoint.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    server.server_close()


def test_https_with_a_private_ca_sends_the_api_key(https_endpoint: Endpoint):
    """With store.ca_file the adapter trusts the private CA and sends the API key over TLS."""
    store = ServerStore(https_endpoint.url, API_KEY, ca_file=https_endpoint.ca)
    try:
        assert store.collections() == []
    finally:
        store.close()
    assert https_endpoint.seen_keys == [API_KEY]


def test_a_server_certificate_from_another_ca_is_refused_before_the_key_is_sent(https_endpoint: Endpoint):
    """An untrusted server certificate is AuthenticationFailed, and the API key never left."""
    store = ServerStore(https_endpoint.url, API_KEY, ca_file=https_endpoint.rogue_ca)
    try:
        with pytest.raises(AuthenticationFailed, match="is not trusted"):
            store.collections()
    finally:
        store.close()
    assert https_endpoint.seen_keys == []


def test_a_refused_api_key_is_authentication_failed(https_endpoint: Endpoint):
    """A 401 answer stops the caller with AuthenticationFailed naming the setting, not a retry."""
    store = ServerStore(https_endpoint.url, "not-the-key", ca_file=https_endpoint.ca)
    try:
        with pytest.raises(
            AuthenticationFailed, match=r"refused the request \(401\).*store\.api_key"
        ) as raised:
            store.collections()
    finally:
        store.close()
    assert "not-the-key" not in str(raised.value)


# -- the same checks against a real Qdrant server on TLS ------------------------------------

ACCESS_LOG = "actix_web::middleware::logger"  # one line per HTTP request the server read


def requests_read_since(server: QdrantServer, offset: int, tls: QdrantTlsEndpoint) -> list[str]:
    """The requests the server read from log byte ``offset`` on, up to a marker request
    of our own: once the marker is logged, every earlier request is too."""
    marker = f"/collections/marker_{uuid.uuid4().hex}/exists"
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.http_port, timeout=10, context=ssl.create_default_context(cafile=str(tls.ca))
    )
    try:
        connection.request("GET", marker, headers={"api-key": tls.api_key or ""})
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.log_since(offset).splitlines() if ACCESS_LOG in line]
        if any(marker in line for line in lines):
            return [line for line in lines if marker not in line]
        assert time.monotonic() < deadline, f"the marker request was never logged:\n{server.log_tail()}"
        time.sleep(0.05)


def test_a_real_server_on_https_with_a_private_ca_and_the_api_key(qdrant_tls_server: QdrantTlsEndpoint):
    """store.url https://, store.ca_file and store.api_key: a real store round trip over TLS."""
    settings = StoreSettings(
        url=qdrant_tls_server.url, api_key=qdrant_tls_server.api_key, ca_file=qdrant_tls_server.ca
    )
    collection = f"tls_{uuid.uuid4().hex[:12]}"
    vectors = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    written = [
        PointWrite(str(uuid.uuid5(uuid.NAMESPACE_URL, f"tls{i}")), v, {"doc_key": "a", "version": 1})
        for i, v in enumerate(vectors)
    ]
    store = ServerStore.from_settings(settings)
    try:
        store.create_collection(collection, CollectionSpec(4))
        store.upsert(collection, written)
        assert store.count(collection) == 3
        hits = store.search(collection, [0.1, 0.9, 0.0, 0.0], SearchOptions(limit=1))
        assert [h.id for h in hits] == [written[1].id]
        assert collection in store.collections()
    finally:
        store.drop_collection(collection)
        store.close()


def test_a_real_servers_certificate_from_another_ca_is_refused_before_the_key_is_sent(
    qdrant_tls_server: QdrantTlsEndpoint,
):
    """Trusting another CA, the adapter refuses the real server's certificate: AuthenticationFailed,
    and the server never read a request (so never the API key in its headers)."""
    server = qdrant_tls_server.server
    assert server is not None
    offset = server.log_size()
    store = qdrant_tls_server.store(ca_file=qdrant_tls_server.rogue_ca)
    try:
        with pytest.raises(AuthenticationFailed, match=r"is not trusted.*store\.ca_file"):
            store.collections()
    finally:
        store.close()
    assert requests_read_since(server, offset, qdrant_tls_server) == []


def test_a_real_server_refusing_the_api_key_is_authentication_failed(qdrant_tls_server: QdrantTlsEndpoint):
    """The real server's 401 is AuthenticationFailed naming store.api_key; the key is not in it."""
    store = ServerStore(qdrant_tls_server.url, "not-the-key", ca_file=qdrant_tls_server.ca)
    try:
        with pytest.raises(
            AuthenticationFailed, match=r"refused the request \(401\).*store\.api_key"
        ) as raised:
            store.collections()
    finally:
        store.close()
    assert "not-the-key" not in str(raised.value)


# qdrant-client's background version check fails too (http to a TLS port) and warns.
@pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")
def test_http_to_the_tls_port_says_the_port_speaks_tls(qdrant_tls_server: QdrantTlsEndpoint):
    """store.url http:// pointed at a TLS port is a configuration mistake: the error says the
    port speaks TLS and to use https://, instead of a vague "unavailable" retried forever."""
    store = ServerStore(qdrant_tls_server.plain_url, qdrant_tls_server.api_key)
    try:
        with pytest.raises(EmbedstreamError, match=r"(?i)speaks TLS.*https://"):
            store.collections()
    finally:
        store.close()
