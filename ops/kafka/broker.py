"""Run a real single-node Apache Kafka 4.x broker (KRaft) for tests, CI and benchmarks.

Why this exists: the pipeline's behaviour under broker restarts, compaction and
consumer-group offset commits can only be trusted when exercised against a real
broker, and CI can reach package registries only (no Docker, no Kafka tarball).
So the broker comes as plain jars from Maven Central (``ops/kafka/fetch.sh``,
``ops/kafka/pom.xml``) and this module runs them with ``java -cp 'libs/*'
kafka.Kafka server.properties``.

The module is stdlib-only so it can be imported before any project dependency is
installed; when kafka-python happens to be importable it is used to make the
readiness check stricter (an admin client must be able to list topics).

Library use::

    with KafkaBroker(libs_dir, tmp_path / "kafka") as broker:
        produce_to(broker.bootstrap)
        broker.stop()      # broker down, data and ports kept
        broker.start()     # same address, same data: clients reconnect

Secured listeners (TLS, SASL_SSL with SCRAM) beside PLAINTEXT, for security tests::

    security = BrokerSecurity(keystore=..., wrong_host_keystore=..., keystore_password=...,
                              client_ca=ca_pem, scram_users={"alice": "secret"})
    broker = KafkaBroker(libs_dir, work_dir, security=security)
    broker.listener("SASL_SSL")   # -> "127.0.0.1:<port>"

Foreground use (``make kafka``, benchmarks)::

    python ops/kafka/broker.py --libs .cache/kafka/libs --work .cache/kafka/work
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import importlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

__all__ = ["SECURE_LISTENERS", "BrokerSecurity", "KafkaBroker", "KafkaCluster", "main"]

#: Broker entry point (Scala object in kafka_2.13; unchanged across Kafka 4.x).
KAFKA_MAIN_CLASS = "kafka.Kafka"
#: KRaft storage formatter; in Kafka 4.x it still lives in kafka_2.13 under this name
#: (``bin/kafka-storage.sh`` runs the same class).
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
#: Logged by KafkaRaftServer once the broker and controller are up.
READY_LOG_LINE = "Kafka Server started"
#: Small heap by default: CI machines have 2 cores and little memory, and a test
#: broker holds little data. Override with the same variable Kafka's scripts use.
DEFAULT_HEAP_OPTS = "-Xms128m -Xmx512m"
LOG_TAIL_LINES = 40

_LOWEST_PREFERRED_PORT = 10000
_REPO_ROOT = Path(__file__).resolve().parents[2]

# Brokers started by this process; killed at interpreter exit so that a test run
# that crashes or forgets stop() does not leave a JVM holding ports behind (the
# JVM runs in its own session, so it would not get the terminal's signals).
_LIVE_BROKERS: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftover_brokers() -> None:
    for broker in list(_LIVE_BROKERS):
        with contextlib.suppress(Exception):
            broker.kill()


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_free_port(exclude: set[int]) -> int:
    """Pick a free 127.0.0.1 port, preferably below the kernel's ephemeral range.

    Why: tests stop the broker for a while and restart it on the same port. While
    it is down, a port from the ephemeral range could be handed out as the local
    port of some outgoing connection and then the restart would fail to bind.
    Ports below the range are never auto-assigned, so only an explicit bind can
    take them. Falls back to a kernel-chosen port if none is found there.
    """
    low, _ = _ephemeral_port_range()
    if low > _LOWEST_PREFERRED_PORT:
        rng = random.SystemRandom()
        for _ in range(100):
            port = rng.randrange(_LOWEST_PREFERRED_PORT, low)
            if port not in exclude and _port_is_free(port):
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port


def _java_executable() -> str:
    """Return ``$JAVA_HOME/bin/java`` when set (CI pins a JDK that way), else PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise FileNotFoundError("java not found: set JAVA_HOME or put java (17+) on PATH")
    return found


def _random_cluster_id() -> str:
    """Return an id like ``kafka-storage.sh random-uuid``: unpadded URL-safe base64.

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with "-": the
    storage tool's argument parser would take it for an option and fail.
    """
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not raw.startswith("-"):
            return raw


_LOG4J2_PROPERTIES = """\
# Written by ops/kafka/broker.py: everything to stdout, which goes to broker.log.
status = warn
name = embedstream-test-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
# The multi-hundred-line config dumps (server and internal clients) drown the
# useful lines; the effective server config is in server.properties anyway.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


#: Listeners a broker with :class:`BrokerSecurity` opens beside PLAINTEXT, and the
#: security protocol each speaks. WRONG_HOST serves a certificate issued for another
#: host name (hostname-verification tests); MUTUAL_TLS requires a client certificate.
SECURE_LISTENERS = {
    "SSL": "SSL",
    "SASL_SSL": "SASL_SSL",
    "WRONG_HOST": "SSL",
    "MUTUAL_TLS": "SSL",
}
#: SASL mechanisms the SASL_SSL listener accepts; every SCRAM user exists for each.
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class BrokerSecurity:
    """TLS material (made by the caller) and SCRAM users for the secured listeners.

    Keystores are PKCS12 files whose store and key share ``keystore_password``;
    ``client_ca`` is the PEM CA that MUTUAL_TLS trusts for client certificates. The
    SCRAM users are written into the metadata log when the storage is formatted
    (``kafka-storage format --add-scram``), so they exist from the first start on.
    """

    keystore: Path
    wrong_host_keystore: Path
    keystore_password: str
    client_ca: Path
    scram_users: Mapping[str, str] = field(default_factory=dict)

    def properties(self) -> dict[str, str]:
        """TLS and SASL settings of the secured listeners, for ``server.properties``."""
        props = {
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.keystore_password,
            "ssl.key.password": self.keystore_password,
            "listener.name.wrong_host.ssl.keystore.location": str(self.wrong_host_keystore),
            "listener.name.mutual_tls.ssl.client.auth": "required",
            "listener.name.mutual_tls.ssl.truststore.type": "PEM",
            "listener.name.mutual_tls.ssl.truststore.location": str(self.client_ca),
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        }
        for mechanism in SCRAM_MECHANISMS:
            props[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = _SCRAM_LOGIN
        return props

    def format_args(self) -> list[str]:
        """``--add-scram`` arguments creating every user for every SCRAM mechanism."""
        return [
            f"--add-scram={mechanism}=[name={name},password={password}]"
            for name, password in self.scram_users.items()
            for mechanism in SCRAM_MECHANISMS
        ]


class KafkaBroker:
    """One single-node Kafka broker+controller (KRaft combined mode) on 127.0.0.1.

    Ports are chosen once, in ``__init__``, and the data lives in ``work_dir``;
    both survive ``stop()``/``kill()`` and ``start()``/``restart()``, so a restart
    brings the same topics, committed offsets and address back and clients
    reconnect on their own. Storage is formatted only the first time.
    """

    def __init__(
        self,
        libs_dir: Path,
        work_dir: Path,
        port: int | None = None,
        *,
        properties: Mapping[str, str] | None = None,
        security: BrokerSecurity | None = None,
        node_id: int = 1,
        controller_port: int | None = None,
        quorum_voters: str | None = None,
        cluster_id: str | None = None,
        heap_opts: str | None = None,
    ) -> None:
        """Prepare (not start) a broker.

        ``properties`` overrides or extends the generated ``server.properties``
        (e.g. retention settings for one test). ``security`` adds the secured
        listeners of :data:`SECURE_LISTENERS`, each on its own port.

        ``node_id``, ``controller_port``, ``quorum_voters`` (``id@host:port,...``) and
        ``cluster_id`` make this one node of a multi-node quorum (:class:`KafkaCluster`
        sets them); left out, the broker is a quorum of one. ``heap_opts`` replaces
        :data:`DEFAULT_HEAP_OPTS` (``$KAFKA_HEAP_OPTS`` still wins).
        """
        self.libs_dir = Path(libs_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.port = port if port is not None else _pick_free_port(set())
        self.controller_port = (
            controller_port if controller_port is not None else _pick_free_port({self.port})
        )
        self.node_id = node_id
        self.quorum_voters = quorum_voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id
        self._heap_default = heap_opts or DEFAULT_HEAP_OPTS
        self.security = security
        self.secure_ports: dict[str, int] = {}
        if security is not None:
            taken = {self.port, self.controller_port}
            for name in SECURE_LISTENERS:
                self.secure_ports[name] = _pick_free_port(taken)
                taken.add(self.secure_ports[name])
        self._extra_properties = dict(properties or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    # -- paths -------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """Kafka ``log.dirs`` (topic data and the KRaft metadata log)."""
        return self.work_dir / "data"

    @property
    def log_file(self) -> Path:
        """Broker stdout/stderr, appended across restarts."""
        return self.work_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        """Generated ``server.properties`` (rewritten on every start)."""
        return self.work_dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        """Address for clients' ``bootstrap_servers``; stable across restarts."""
        return f"127.0.0.1:{self.port}"

    def listener(self, name: str) -> str:
        """Bootstrap address of a secured listener (a key of :data:`SECURE_LISTENERS`)."""
        if name not in self.secure_ports:
            raise KeyError(f"no {name} listener: the broker was made without security= or {name} is unknown")
        return f"127.0.0.1:{self.secure_ports[name]}"

    # -- lifecycle ---------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the broker JVM is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the broker JVM while it runs (it leads its own session)."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def start(self, timeout_s: float = 120) -> None:
        """Start the broker and return once clients can use it.

        Ready means: the client port accepts TCP, the log says the server
        started, and (when kafka-python is importable) an admin client can list
        topics. On timeout or early exit the JVM is killed and RuntimeError
        carries the tail of the broker log. A no-op if already running.
        """
        if self.is_running():
            return
        log_offset = self.launch()
        self.wait_ready(timeout_s, log_offset)

    def prepare(self) -> None:
        """Write the config and format the storage (first time only); start nothing."""
        self._check_libs()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def launch(self) -> int:
        """Start the JVM without waiting for it; return the log offset for :meth:`wait_ready`.

        The nodes of a multi-node quorum must be launched together: none is ready
        before a majority of the controllers runs.
        """
        if self.is_running():
            return self.log_file.stat().st_size if self.log_file.exists() else 0
        self.prepare()
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._log_handle = self.log_file.open("ab")
        self._log_handle.write(f"\n=== broker.py: starting broker on {self.bootstrap} ===\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen(
            self._java_command(KAFKA_MAIN_CLASS, str(self.properties_file), heap=self._heap_opts()),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,
        )
        _LIVE_BROKERS.add(self)
        return log_offset

    def wait_ready(self, timeout_s: float, log_offset: int = 0) -> None:
        """Wait until the launched broker serves clients; kill it and raise if it does not."""
        try:
            self._wait_ready(timeout_s, log_offset)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout_s: float = 30) -> None:
        """Shut down gracefully (SIGTERM); SIGKILL if it takes over ``timeout_s``."""
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

    def kill(self) -> None:
        """SIGKILL at once: simulates a broker crash (no clean shutdown marker)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def restart(self, timeout_s: float = 120) -> None:
        """Stop (if running) and start again on the same ports and data (no format)."""
        self.stop()
        self.start(timeout_s)

    def wait(self) -> int:
        """Block until the broker process exits on its own; return its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        rc = proc.wait()
        self._reap()
        return rc

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last ``lines`` lines of the broker log, for error messages."""
        try:
            with self.log_file.open("r", encoding="utf-8", errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except OSError:
            return "<no broker log>"

    def __enter__(self) -> Self:
        """Start the broker (default timeout) for a ``with`` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker gracefully at the end of a ``with`` block."""
        self.stop()

    def __repr__(self) -> str:
        """Show address, work dir and whether the JVM is alive."""
        state = "running" if self.is_running() else "stopped"
        return f"KafkaBroker({self.bootstrap}, work_dir={str(self.work_dir)!r}, {state})"

    # -- internals ---------------------------------------------------------

    def _reap(self) -> None:
        self._proc = None
        _LIVE_BROKERS.discard(self)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _check_libs(self) -> None:
        if not any(self.libs_dir.glob("kafka_2.13-*.jar")):
            raise FileNotFoundError(f"no kafka_2.13 jar in {self.libs_dir}; run ops/kafka/fetch.sh first")

    def _listeners(self) -> dict[str, str]:
        """Every client listener (name -> protocol) with PLAINTEXT first."""
        return {"PLAINTEXT": "PLAINTEXT", **{name: SECURE_LISTENERS[name] for name in self.secure_ports}}

    def _listener_properties(self) -> dict[str, str]:
        ports = {"PLAINTEXT": self.port, **self.secure_ports}
        client = ",".join(f"{name}://127.0.0.1:{ports[name]}" for name in self._listeners())
        protocols = ",".join(f"{name}:{proto}" for name, proto in self._listeners().items())
        props = {
            "listeners": f"{client},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": client,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{protocols}",
        }
        if self.security is not None:
            props |= self.security.properties()
        return props

    def _server_properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            # Static voter set (not --standalone/dynamic quorum): the controller
            # endpoints are then only in this file, never in the metadata log.
            "controller.quorum.voters": self.quorum_voters,
            **self._listener_properties(),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Single node: internal topics cannot have more than one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests should not wait 3 s for the first rebalance of each group.
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "default.replication.factor": "1",
            # Compacted topics: one cleaner thread with a small dedupe buffer (the
            # 128 MiB default would take a quarter of the small heap), checking often.
            "log.cleaner.enable": "true",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
            # Two CPU cores: keep thread pools small.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            # After kill() the controller keeps the old broker registration until
            # its session expires (9 s default), delaying restart; 3 s suffices
            # on one machine.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        props.update(self._extra_properties)
        return props

    def _write_config(self) -> None:
        body = "# Written by ops/kafka/broker.py; regenerated on every start.\n"
        body += "".join(f"{key}={value}\n" for key, value in self._server_properties().items())
        self.properties_file.write_text(body, encoding="utf-8")
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")

    def _heap_opts(self) -> list[str]:
        return (os.environ.get("KAFKA_HEAP_OPTS") or self._heap_default).split()

    def _java_command(self, main_class: str, *args: str, heap: list[str]) -> list[str]:
        return [
            _java_executable(),
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            f"{self.libs_dir}/*",
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        cmd = self._java_command(
            STORAGE_TOOL_CLASS,
            "format",
            f"--cluster-id={self.cluster_id or _random_cluster_id()}",
            f"--config={self.properties_file}",
            *(self.security.format_args() if self.security is not None else []),
            heap=["-Xmx256m"],
        )
        with self.log_file.open("ab") as log:
            log.write(b"\n=== broker.py: formatting KRaft storage ===\n")
            log.flush()
            rc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        if rc != 0:
            raise RuntimeError(self._with_log_tail(f"{STORAGE_TOOL_CLASS} format failed (exit {rc})"))

    def _with_log_tail(self, message: str) -> str:
        return f"{message}; last {LOG_TAIL_LINES} lines of {self.log_file}:\n{self.log_tail()}"

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _tcp_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _client_ready(self) -> bool:
        """kafka-python admin round trip, when kafka-python is importable.

        Why: an open port and the "started" log line can precede the broker
        being unfenced and serving metadata; a topic listing cannot.
        """
        try:
            admin_mod: Any = importlib.import_module("kafka.admin")
        except ImportError:
            return True
        client: Any = None
        try:
            client = admin_mod.KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="embedstream-broker-readiness",
                request_timeout_ms=5000,
            )
            client.list_topics()
        except Exception:  # any failure means "not ready yet"
            return False
        else:
            return True
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def _wait_ready(self, timeout_s: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout_s
        proc = self._proc
        if proc is None:
            raise RuntimeError("broker process was not started")
        while True:
            rc = proc.poll()
            if rc is not None:
                raise RuntimeError(self._with_log_tail(f"Kafka broker exited with code {rc} on startup"))
            if self._tcp_open() and READY_LOG_LINE in self._log_since(log_offset) and self._client_ready():
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    self._with_log_tail(f"Kafka broker on {self.bootstrap} not ready after {timeout_s:.0f}s")
                )
            time.sleep(0.2)


#: Heap of each node of a :class:`KafkaCluster`: three JVMs share a small CI machine.
CLUSTER_HEAP_OPTS = "-Xms64m -Xmx256m"


class KafkaCluster:
    """``size`` KRaft nodes on 127.0.0.1, each ``process.roles=broker,controller``.

    The nodes share one cluster id and one static voter set (``controller.quorum.voters``
    lists every node), so the metadata quorum has ``size`` voters and survives losing
    a minority. Each node has its own client and controller ports (chosen once) and its
    own work dir ``work_dir/node-<id>``; :meth:`kill` (SIGKILL) and :meth:`restart` of one
    node keep both, so it rejoins as the same broker. Internal topics are replicated on
    min(size, 3) nodes; topics' ``min.insync.replicas`` is left at the broker default (1)
    so that the client's topic settings decide it.

    Library use::

        with KafkaCluster(libs_dir, tmp_path / "cluster") as cluster:
            admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
            cluster.kill(cluster.active_controller())
            cluster.restart(...)
    """

    def __init__(
        self,
        libs_dir: Path,
        work_dir: Path,
        size: int = 3,
        *,
        properties: Mapping[str, str] | None = None,
        heap_opts: str = CLUSTER_HEAP_OPTS,
    ) -> None:
        """Prepare (not start) ``size`` nodes with ids 1..size."""
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.work_dir = Path(work_dir).resolve()
        self.cluster_id = _random_cluster_id()
        taken: set[int] = set()
        ports: dict[int, tuple[int, int]] = {}
        for node_id in range(1, size + 1):
            client = _pick_free_port(taken)
            taken.add(client)
            controller = _pick_free_port(taken)
            taken.add(controller)
            ports[node_id] = (client, controller)
        voters = ",".join(f"{node_id}@127.0.0.1:{ctl}" for node_id, (_, ctl) in ports.items())
        replicas = str(min(size, 3))
        min_isr = str(min(size, 2))
        props = {
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "default.replication.factor": replicas,
            **(properties or {}),
        }
        self.nodes: dict[int, KafkaBroker] = {
            node_id: KafkaBroker(
                libs_dir,
                self.work_dir / f"node-{node_id}",
                client,
                properties=props,
                node_id=node_id,
                controller_port=controller,
                quorum_voters=voters,
                cluster_id=self.cluster_id,
                heap_opts=heap_opts,
            )
            for node_id, (client, controller) in ports.items()
        }

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated: clients survive any node being down."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def node(self, node_id: int) -> KafkaBroker:
        """The node with ``node_id`` (1..size)."""
        return self.nodes[node_id]

    def running(self) -> list[int]:
        """Ids of the nodes whose JVM is alive."""
        return [node_id for node_id, node in self.nodes.items() if node.is_running()]

    def start(self, timeout_s: float = 180) -> None:
        """Start every node that is not running, together, and wait until each serves clients."""
        pending = {node_id: node for node_id, node in self.nodes.items() if not node.is_running()}
        try:
            for node in pending.values():
                node.prepare()  # formatting runs a JVM each: one at a time on small machines
            offsets = {node_id: node.launch() for node_id, node in pending.items()}
            deadline = time.monotonic() + timeout_s
            for node_id, node in pending.items():
                node.wait_ready(max(deadline - time.monotonic(), 1.0), offsets[node_id])
        except BaseException:
            self.kill_all()
            raise

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: a crash, no controlled shutdown; its ports and data stay."""
        self.nodes[node_id].kill()

    def restart(self, node_id: int, timeout_s: float = 120) -> None:
        """Start a stopped or killed node again on the same ports and data; wait until ready."""
        self.nodes[node_id].restart(timeout_s)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM every node at once, SIGKILL what still runs after ``timeout_s``.

        One at a time would be slower: the last nodes' controlled shutdown waits
        for a controller quorum that is already gone.
        """
        for node in self.nodes.values():
            pid = node.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            node.stop(timeout_s=max(deadline - time.monotonic(), 0.1))

    def kill_all(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes.values():
            node.kill()

    # -- who leads what (needs kafka-python) --------------------------------

    def _admin(self) -> Any:
        admin_mod: Any = importlib.import_module("kafka.admin")
        alive = [self.nodes[node_id].bootstrap for node_id in self.running()]
        if not alive:
            raise RuntimeError("no node of the cluster is running")
        return admin_mod.KafkaAdminClient(
            bootstrap_servers=alive, client_id="embedstream-cluster-probe", request_timeout_ms=10_000
        )

    def _probe(self, ask: Callable[[Any], Any], timeout_s: float = 30) -> Any:
        """``ask(admin)`` on a fresh admin client, again on errors: right after a kill the
        cluster's metadata still names the dead node, and a request may go to it."""
        deadline = time.monotonic() + timeout_s
        while True:
            admin: Any = None
            try:
                admin = self._admin()
                return ask(admin)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()

    def partitions(self, topic: str) -> dict[int, dict[str, Any]]:
        """Partition -> ``{"leader": id, "replicas": [ids], "isr": [ids]}`` as the cluster reports it."""
        described = self._probe(lambda admin: admin.describe_topics([topic]))
        found: dict[int, dict[str, Any]] = {}
        for entry in described:
            if entry.get("name") != topic:
                continue
            for partition in entry.get("partitions", []):
                found[int(partition["partition_index"])] = {
                    "leader": int(partition["leader_id"]),
                    "replicas": sorted(int(n) for n in partition.get("replica_nodes", [])),
                    "isr": sorted(int(n) for n in partition.get("isr_nodes", [])),
                }
        return found

    def active_controller(self) -> int:
        """Node id of the KRaft metadata quorum's leader (the active controller).

        From DescribeQuorum on ``__cluster_metadata`` (a broker forwards it to the
        controllers); -1 while an election is under way.
        """
        quorum = self._probe(lambda admin: admin.describe_metadata_quorum())
        return int(quorum["topics"][0]["partitions"][0]["leader_id"])

    def __enter__(self) -> Self:
        """Start every node for a ``with`` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every node at the end of a ``with`` block."""
        self.stop()

    def __repr__(self) -> str:
        """Show the nodes and which run."""
        return f"KafkaCluster({self.bootstrap}, running={self.running()})"


def _default_libs_dir() -> Path:
    env = os.environ.get("KAFKA_LIBS_DIR")
    return Path(env) if env else _REPO_ROOT / ".cache" / "kafka" / "libs"


def main(argv: list[str] | None = None) -> int:
    """Run a broker in the foreground until Ctrl-C/SIGTERM (``make kafka``, benches)."""
    parser = argparse.ArgumentParser(description="Run a single-node Kafka (KRaft) broker.")
    parser.add_argument("--libs", type=Path, default=_default_libs_dir(), help="jars from fetch.sh")
    parser.add_argument(
        "--work",
        type=Path,
        default=_REPO_ROOT / ".cache" / "kafka" / "work",
        help="data + logs",
    )
    parser.add_argument("--port", type=int, default=None, help="client port (default: free port)")
    parser.add_argument("--timeout", type=float, default=120.0, help="startup timeout, seconds")
    args = parser.parse_args(argv)

    def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_sigterm)
    broker = KafkaBroker(args.libs, args.work, args.port)
    try:
        broker.start(args.timeout)
        print(
            f"kafka broker ready: bootstrap={broker.bootstrap} log={broker.log_file}",
            flush=True,
        )
        rc = broker.wait()
    except KeyboardInterrupt:
        print("stopping kafka broker...", file=sys.stderr, flush=True)
        broker.stop()
        return 0
    else:
        print(f"kafka broker exited with code {rc}; see {broker.log_file}", file=sys.stderr)
        return rc or 1
    finally:
        broker.kill()


if __name__ == "__main__":
    sys.exit(main())
