"""A real PostgreSQL server for the tests: one per test session, a fresh database per test.

`postgres_server` runs initdb and pg_ctl from Debian's /usr/lib/postgresql/*/bin (installed by
scripts/install-system-deps.sh) on a loopback port, with its data and socket in a temp dir under
/tmp. As root it runs them as the `postgres` user (PostgreSQL refuses to run as root), so the temp
dir is made directly under /tmp (pytest's tmp dirs are 0700 root) and handed to that user.

`database_url` is parametrized over sqlite and postgresql: every test that takes it runs on both.
Without PostgreSQL the postgresql case fails in CI (CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from systemtools import require_tool

PG_USER = "gridtrace"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@{self.host}:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) on the `postgres` database."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=PG_USER, dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def find_pg_bindir() -> str | None:
    """Debian's newest /usr/lib/postgresql/*/bin holding initdb, else initdb on PATH, else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresStartError(Exception):
    """initdb or pg_ctl failed; the message carries their output and the server log's tail."""


@contextlib.contextmanager
def running_postgres(bindir: str) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a loopback port (also used by benchmarks), removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="gridtrace-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    root.chmod(0o700)
    data = root / "data"
    port = _free_port()
    started = False
    try:
        try:
            subprocess.run(
                _as_postgres([f"{bindir}/initdb", "-D", str(data), "-U", PG_USER, "--auth=trust",
                              "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
                check=True, capture_output=True, text=True, timeout=120,
            )
            # fsync and synchronous_commit stay on (the defaults): the hub refuses a server without them.
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='{root}' "
                "-c shared_buffers=128MB -c max_wal_size=2GB -c max_connections=200"
            )
            subprocess.run(
                _as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                              "-o", options, "start"]),
                check=True, capture_output=True, text=True, timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
            raise PostgresStartError(
                f"PostgreSQL did not start: {' '.join(exc.cmd)}: {exc.stderr}\n{log[-2000:]}"
            ) from exc
        started = True
        yield PostgresServer("127.0.0.1", port, data)
    finally:
        if started:
            subprocess.run(
                _as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True, timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_pg_bindir()
    initdb = require_tool(
        "initdb", "postgresql", "the storage tests run on a real PostgreSQL server",
        fallback=f"{bindir}/initdb" if bindir else None,
    )
    try:
        with running_postgres(str(Path(initdb).parent)) as server:
            yield server
    except PostgresStartError as exc:
        pytest.fail(str(exc))


@contextlib.contextmanager
def empty_database(kind: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    """An empty database of `kind` ("sqlite": a file in `directory`; "postgresql": a fresh
    database on the session's server, dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'hub.sqlite'}"
        return
    assert kind == "postgresql", kind
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.new_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    with empty_database(request.param, request, tmp_path) as url:
        yield url
