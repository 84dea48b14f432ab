"""A throwaway PostgreSQL cluster for the SQL connector's tests (a pytest plugin module).

Debian's server binaries (``/usr/lib/postgresql/<N>/bin``; ``.ci/run`` installs the
``postgresql`` package when they are missing), a cluster made by ``initdb`` in a temp dir,
listening on 127.0.0.1 only, on a free port, with trust authentication for one user. initdb
and the server refuse to run as root, so as root they run as the ``postgres`` user.

Set ``EMBEDSTREAM_TEST_POSTGRES_URL`` (a server URL whose user may CREATE DATABASE) to use
a server of your own instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

URL_ENV = "EMBEDSTREAM_TEST_POSTGRES_URL"
USER = "embedstream"
SERVICE_USER = "postgres"  # Debian's package creates it


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One initdb'd cluster under a temp dir; ``url(db)`` for SQLAlchemy (psycopg 3)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="embedstream-pg-"))
        self._as_root = os.geteuid() == 0
        if self._as_root:  # the server user must own (and be able to reach) its directory
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)
        self.data = self.root / "data"

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--locale=C")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database (ours, or $EMBEDSTREAM_TEST_POSTGRES_URL)."""
    external = os.environ.get(URL_ENV)
    if external:
        yield external
        return
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does it)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
