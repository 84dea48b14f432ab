"""Qdrant server fixtures (a pytest plugin): a real Qdrant 1.19 server per session, clusters.

The server is the ``qdrant`` binary shipped xz-compressed in ``../shared/qdrant/`` (see
its README), unpacked once into ``.cache/qdrant/qdrant`` (by ``xz``, else Python's
``lzma``). Each :class:`QdrantServer` runs
on free 127.0.0.1 ports with storage, snapshots and its log in a temp dir of its own, and
is stopped by its own process id.

Where the server comes from, in this order: ``EMBEDSTREAM_TEST_QDRANT_URL`` (with
``EMBEDSTREAM_TEST_QDRANT_API_KEY`` if it wants a key) names a server of your own; else
the shared binary is started; else the tests that need a server skip, saying so. The TLS
server (:func:`qdrant_tls_server`) is always ours: its certificate comes from a CA made
for the test module, which no external server has; so is a cluster (:class:`QdrantCluster`,
:func:`qdrant_cluster`), whose peers a test kills and restarts.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import lzma
import os
import platform
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pytest

from pipeline.store.server import ServerStore
from tests.pki import CertificateAuthority

REPO = Path(__file__).resolve().parents[1]
QDRANT_VERSION = "1.19.0"
SHARED_ARCHIVE = REPO.parent / "shared" / "qdrant" / f"qdrant-{QDRANT_VERSION}-x86_64-linux.xz"
CACHED_BINARY = REPO / ".cache" / "qdrant" / "qdrant"
URL_ENV = "EMBEDSTREAM_TEST_QDRANT_URL"
KEY_ENV = "EMBEDSTREAM_TEST_QDRANT_API_KEY"
LOG_TAIL_LINES = 40

# Servers started by this process; killed at interpreter exit, so that a run that crashes
# before its fixtures' teardown leaves no server holding ports and a temp dir behind.
_LIVE_SERVERS: weakref.WeakSet[QdrantServer] = weakref.WeakSet()
# A pytest killed outright runs no atexit: then the kernel kills its servers (the
# parent-death signal, set by util-linux's setpriv just before it execs the server). It
# fires when the thread that started the server ends: start servers from the main thread.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_PARENT = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


@atexit.register
def _kill_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.kill()


def _version_of(binary: Path) -> str:
    """What ``binary --version`` prints (``qdrant 1.19.0``); raises if it does not run."""
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def unpack_qdrant(archive: Path = SHARED_ARCHIVE, target: Path = CACHED_BINARY) -> Path:
    """The runnable server binary: ``target``, unpacked from ``archive`` unless already there.

    It is written under a temp name beside ``target``, checked with ``--version``, then
    renamed into place, so that runs unpacking at the same time never run half a file.
    """
    expected = f"qdrant {QDRANT_VERSION}"
    if target.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if _version_of(target) == expected:
                return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            if xz := shutil.which("xz"):
                subprocess.run([xz, "-dc", str(archive)], stdout=out, check=True)
            else:  # the same format, a little slower
                with lzma.open(archive) as packed:
                    shutil.copyfileobj(packed, out, 1 << 20)
        partial.chmod(0o755)
        version = _version_of(partial)
        if version != expected:
            raise RuntimeError(f"{archive} holds {version!r}, not {expected!r}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (the server binds them moments later)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate chain and its unencrypted key (PEM)."""

    cert: Path
    key: Path


class QdrantServer:
    """One ``qdrant`` process on 127.0.0.1: REST on ``http_port``, gRPC on ``grpc_port``.

    ``root`` holds its storage, snapshots and ``qdrant.log`` (stdout and stderr, never the
    test output). With ``api_key`` every request but the health checks must carry it; with
    ``tls`` both ports speak only TLS.
    """

    def __init__(
        self, binary: Path, root: Path, *, api_key: str | None = None, tls: TlsFiles | None = None
    ) -> None:
        self.binary = binary
        self.root = root
        self.api_key = api_key
        self.tls = tls
        self.http_port = 0
        self.grpc_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "qdrant.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _environment(self) -> dict[str, str]:
        # Only what we set configures it: no QDRANT__* leaks in from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT__")}
        env |= {
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(self.http_port),
            "QDRANT__SERVICE__GRPC_PORT": str(self.grpc_port),
            "QDRANT__SERVICE__ENABLE_STATIC_CONTENT": "false",
            "QDRANT__TELEMETRY_DISABLED": "true",
            "QDRANT__STORAGE__STORAGE_PATH": str(self.root / "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": str(self.root / "snapshots"),
        }
        if self.api_key is not None:
            env["QDRANT__SERVICE__API_KEY"] = self.api_key
        if self.tls is not None:
            env |= {
                "QDRANT__SERVICE__ENABLE_TLS": "true",
                "QDRANT__TLS__CERT": str(self.tls.cert),
                "QDRANT__TLS__KEY": str(self.tls.key),
            }
        return env

    def start(self, timeout_s: float = 60, attempts: int = 3) -> None:
        """Start it and return once ``GET /readyz`` answers 200.

        Ports are picked free just before the start; should another process take one in
        between, the server exits at once and is started again on other ports. On
        timeout or exit the process is killed and RuntimeError carries the log's tail.
        """
        if self.is_running():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self._pick_ports()
            offset = self.log_size()
            self._log = self.log_file.open("ab")
            self._log.write(f"\n=== qdrant_fixtures: starting {self.url} ===\n".encode())
            self._log.flush()
            self._proc = subprocess.Popen(
                [*_DIE_WITH_PARENT, str(self.binary), *self._arguments()],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.root,  # its relative config/ lookups find nothing here
                env=self._environment(),
            )
            _LIVE_SERVERS.add(self)
            try:
                self._wait_ready(timeout_s)
            except _PortTaken:
                self.kill()
                if attempt == attempts:
                    raise RuntimeError(self._failure("could not bind its ports", offset)) from None
            except BaseException:
                self.kill()
                raise
            else:
                return

    def _pick_ports(self) -> None:
        """Free ports for the next start (a restart of a single server may move)."""
        self.http_port, self.grpc_port = _free_ports(2)

    def _arguments(self) -> list[str]:
        """Command-line arguments after the binary."""
        return []

    def _wait_ready(self, timeout_s: float) -> None:
        offset = self.log_size()
        deadline = time.monotonic() + timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                if "Address already in use" in self.log_since(offset):
                    raise _PortTaken
                raise RuntimeError(self._failure(f"exited with status {self._proc.returncode}", offset))
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"was not ready within {timeout_s:.0f} s", offset))
            time.sleep(0.05)

    def _ready(self) -> bool:
        connection: http.client.HTTPConnection
        if self.tls is not None:
            # A readiness probe of our own process: whether clients trust it is under test.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection("127.0.0.1", self.http_port, timeout=2, context=context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _failure(self, what: str, offset: int) -> str:
        return f"Qdrant server {self.url} ({self.binary}) {what}; log {self.log_file}:\n" + self.log_tail(
            since=offset
        )

    def log_size(self) -> int:
        """The log's length in bytes now: pass it to :meth:`log_since` later."""
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def log_since(self, offset: int) -> str:
        """What the server logged from byte ``offset`` on."""
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
        """The last ``lines`` lines of the server log (from byte ``since``), for messages."""
        return "".join(deque(self.log_since(since).splitlines(keepends=True), maxlen=lines)) or "<empty>"

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL if it is still running after ``timeout_s``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._reap()

    def terminate(self) -> None:
        """SIGTERM without waiting (:meth:`stop` waits): stops several servers at once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL at once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def _reap(self) -> None:
        _LIVE_SERVERS.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"QdrantServer({self.url}, pid={self.pid}, {state}, root={self.root})"


class _PortTaken(Exception):
    """The server exited because another process bound one of its ports first."""


@dataclass(frozen=True)
class QdrantEndpoint:
    """Where the tests' Qdrant server answers; ``server`` is None when it is not ours."""

    url: str
    api_key: str | None
    server: QdrantServer | None = None

    def store(self, **options: Any) -> ServerStore:
        """A new adapter on this server (``options`` go to :class:`ServerStore`)."""
        return ServerStore(self.url, self.api_key, **options)


def _no_server_reason(archive: Path, *, tls: bool, cluster: bool = False) -> str | None:
    """Why the shared binary cannot serve on this machine, or None when it can."""
    if tls:  # an external server has no certificate from our CA
        instead = "the TLS tests need a server of their own, started from it"
    elif cluster:  # an external server cannot be killed and restarted by the test
        instead = "the cluster tests need peers of their own, started from it"
    else:
        instead = (
            f"{URL_ENV} is not set either (run qdrant/qdrant:v{QDRANT_VERSION} and set it, "
            f"and {KEY_ENV} if the server wants a key)"
        )
    if not archive.is_file():
        return f"no Qdrant server to test against: {archive} does not exist, and {instead}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"no Qdrant server to test against: {archive} is an x86_64 Linux binary, and {instead}"
    return None


def started_server(root: Path, *, api_key: str | None = None, tls: TlsFiles | None = None) -> QdrantServer:
    """A started server from the shared binary; skips the test when there is none."""
    reason = _no_server_reason(SHARED_ARCHIVE, tls=tls is not None)
    if reason:
        pytest.skip(reason)
    server = QdrantServer(unpack_qdrant(), root, api_key=api_key, tls=tls)
    server.start()
    return server


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantEndpoint]:
    """A Qdrant server for the session, plain http with an API key.

    ``$EMBEDSTREAM_TEST_QDRANT_URL`` (and ``$EMBEDSTREAM_TEST_QDRANT_API_KEY``) when set,
    else ours from the shared binary. The server may hold other tests' collections: give
    yours names unique to the test.
    """
    external = os.environ.get(URL_ENV)
    if external:
        yield QdrantEndpoint(external, os.environ.get(KEY_ENV) or None)
        return
    server = started_server(tmp_path_factory.mktemp("qdrant"), api_key=secrets.token_urlsafe(16))
    try:
        yield QdrantEndpoint(server.url, server.api_key, server)
    finally:
        server.stop()


@dataclass(frozen=True, kw_only=True)
class QdrantTlsEndpoint(QdrantEndpoint):
    """Our server on https: ``ca`` signed its certificate (for 127.0.0.1 and localhost),
    ``rogue_ca`` signed nothing it serves."""

    ca: Path
    rogue_ca: Path

    def store(self, **options: Any) -> ServerStore:
        """A new adapter trusting ``ca`` (override with ``ca_file=``)."""
        return ServerStore(self.url, self.api_key, **({"ca_file": self.ca} | options))

    @property
    def plain_url(self) -> str:
        """``http://`` to the same (TLS) port: a misconfigured client."""
        return "http:" + self.url.removeprefix("https:")


@pytest.fixture(scope="module")
def qdrant_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantTlsEndpoint]:
    """Our own Qdrant server on https, with an API key and a certificate from a private CA."""
    root = tmp_path_factory.mktemp("qdrant-tls")
    ca = CertificateAuthority("embedstream qdrant test CA")
    tls = TlsFiles(root / "server.pem", root / "server.key")
    ca.issue("qdrant", ["127.0.0.1", "localhost"]).write_pem(tls.cert, tls.key)
    server = started_server(root / "server", api_key=secrets.token_urlsafe(16), tls=tls)
    try:
        yield QdrantTlsEndpoint(
            server.url,
            server.api_key,
            server,
            ca=ca.write_pem(root / "ca.pem"),
            rogue_ca=CertificateAuthority("somebody else's CA").write_pem(root / "rogue-ca.pem"),
        )
    finally:
        server.stop()


class QdrantPeer(QdrantServer):
    """One peer of a :class:`QdrantCluster`: a server in distributed mode, with a P2P port.

    Its ports are picked at its first start and kept: a restarted peer comes back at the
    same P2P address (what the cluster's consensus knows it by) and on the same storage.
    """

    def __init__(self, binary: Path, root: Path, *, bootstrap: QdrantPeer | None = None) -> None:
        super().__init__(binary, root)
        self.bootstrap = bootstrap
        self.p2p_port = 0
        self._joined = False

    @property
    def p2p_url(self) -> str:
        return f"http://127.0.0.1:{self.p2p_port}"

    def start(self, timeout_s: float = 60, attempts: int = 3) -> None:
        super().start(timeout_s, attempts)
        self._joined = True

    def _pick_ports(self) -> None:
        if self._joined:
            return  # a restart: the same address, or the cluster no longer knows this peer
        # A first start that lost a port to another process starts over, as a new peer.
        shutil.rmtree(self.root / "storage", ignore_errors=True)
        self.http_port, self.grpc_port, self.p2p_port = _free_ports(3)

    def _environment(self) -> dict[str, str]:
        return super()._environment() | {
            "QDRANT__CLUSTER__ENABLED": "true",
            "QDRANT__CLUSTER__P2P__PORT": str(self.p2p_port),
        }

    def _arguments(self) -> list[str]:
        joining = [] if self.bootstrap is None else ["--bootstrap", self.bootstrap.p2p_url]
        return [*joining, "--uri", self.p2p_url]

    def get(self, path: str) -> Any:
        """The ``result`` of ``GET path`` on this peer's REST port; None when it does not answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            return json.loads(body)["result"]
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            return None
        finally:
            connection.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"QdrantPeer({self.url}, p2p {self.p2p_url}, pid={self.pid}, {state}, root={self.root})"


class QdrantCluster:
    """``size`` Qdrant peers on 127.0.0.1 forming one cluster (distributed mode).

    Peer 0 starts the cluster; the others join it through its P2P port. Each peer has its
    own storage, HTTP, gRPC and P2P ports under ``root/peer-<i>``; any peer can be stopped,
    killed (SIGKILL) and restarted on the same ports and storage. :meth:`stop` stops them
    all by their process ids. Every peer answers the whole API: :attr:`url` is peer 0's.
    """

    def __init__(self, binary: Path, root: Path, size: int = 3) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one peer, not {size}")
        first = QdrantPeer(binary, root / "peer-0")
        self.peers = [
            first,
            *(QdrantPeer(binary, root / f"peer-{i}", bootstrap=first) for i in range(1, size)),
        ]

    @property
    def url(self) -> str:
        return self.peers[0].url

    def start(self, timeout_s: float = 60) -> None:
        """Start every peer, one after the other, and wait until the cluster is formed."""
        try:
            for peer in self.peers:
                peer.start(timeout_s)
            self.wait_formed(timeout_s)
        except BaseException:
            self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL peer ``index``: no shutdown, whatever it had not written is lost."""
        self.peers[index].kill()

    def stop_peer(self, index: int) -> None:
        """SIGTERM peer ``index`` (a graceful shutdown)."""
        self.peers[index].stop()

    def restart(self, index: int, timeout_s: float = 60) -> None:
        """Peer ``index`` again, on its ports and storage; returns once the cluster is formed."""
        self.peers[index].stop()
        self.peers[index].start(timeout_s)
        self.wait_formed(timeout_s)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM to every peer at once, then SIGKILL to any still running after ``timeout_s``."""
        for peer in self.peers:
            peer.terminate()
        deadline = time.monotonic() + timeout_s
        for peer in self.peers:
            peer.stop(timeout_s=max(0.0, deadline - time.monotonic()))

    def peer_id(self, index: int) -> int:
        """The cluster's id of peer ``index`` (it must be running)."""
        info = self.peers[index].get("/cluster")
        if info is None:
            raise RuntimeError(f"{self.peers[index]} does not answer GET /cluster")
        return int(info["peer_id"])

    def wait_formed(self, timeout_s: float = 60) -> None:
        """Until every running peer knows all ``size`` peers and the same Raft leader."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = {str(p): p.get("/cluster") for p in self.peers if p.is_running()}
            leaders = {_leader(view) for view in views.values()}
            if (
                views
                and None not in leaders
                and len(leaders) == 1
                and all(view is not None and len(view["peers"]) == len(self.peers) for view in views.values())
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"did not form within {timeout_s:.0f} s: {views}"))
            time.sleep(0.1)

    def replicas(self, collection: str, index: int = 0) -> dict[int, dict[int, str]]:
        """shard id -> peer id -> replica state (``Active``, ``Dead``, ``Partial``...) of
        ``collection``, as peer ``index`` sees it; empty when it does not answer."""
        info = self.peers[index].get(f"/collections/{collection}/cluster")
        if info is None:
            return {}
        found: dict[int, dict[int, str]] = {}
        for shard in info["local_shards"]:
            found.setdefault(int(shard["shard_id"]), {})[int(info["peer_id"])] = str(shard["state"])
        for shard in info["remote_shards"]:
            found.setdefault(int(shard["shard_id"]), {})[int(shard["peer_id"])] = str(shard["state"])
        return found

    def wait_replicas_active(self, collection: str, timeout_s: float = 60) -> None:
        """Until every running peer sees every replica of ``collection`` Active (the
        replicas of a restarted peer have caught up by shard transfer)."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = {i: self.replicas(collection, i) for i, p in enumerate(self.peers) if p.is_running()}
            if all(
                view and all(state == "Active" for states in view.values() for state in states.values())
                for view in views.values()
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    self._failure(f"{collection}: replicas not Active within {timeout_s:.0f} s: {views}")
                )
            time.sleep(0.1)

    def _failure(self, what: str) -> str:
        tails = "".join(f"\n--- {p.log_file}:\n{p.log_tail(15)}" for p in self.peers)
        return f"Qdrant cluster {what}{tails}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"QdrantCluster({self.peers})"


def _leader(view: Any) -> int | None:
    if view is None or view.get("status") != "enabled":
        return None
    leader = view["raft_info"].get("leader")
    return int(leader) if leader is not None else None


def started_cluster(root: Path, size: int = 3) -> QdrantCluster:
    """A formed cluster of ``size`` peers from the shared binary; skips the test when there is none."""
    reason = _no_server_reason(SHARED_ARCHIVE, tls=False, cluster=True)
    if reason:
        pytest.skip(reason)
    cluster = QdrantCluster(unpack_qdrant(), root, size)
    cluster.start()
    return cluster


@pytest.fixture
def qdrant_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantCluster]:
    """A three-peer Qdrant cluster of the test's own, on loopback, without an API key.

    The test may kill, stop and restart its peers; all are stopped by process id after it.
    """
    cluster = started_cluster(tmp_path_factory.mktemp("qdrant-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
