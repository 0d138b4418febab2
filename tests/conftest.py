"""Shared fixtures: a real portal-es server process, the machine's PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy

IN_CI = os.environ.get("CI") == "true"
PG_URL = os.environ.get("PORTAL_ES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(reason: str) -> None:
    """A needed real part is missing: a failure in CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


@dataclass
class PortalServer:
    """A `portal-es serve` process on loopback with its own work dir."""

    work_dir: Path
    db_connection: str = ""
    token: str = ""
    tls: bool = False
    kernel: bool = False  # program a data plane: only ever inside a namespace the test made
    port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    proxy_tls_port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    start_timeout: float = 30.0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.work_dir / "server.log"
        return path.read_text() if path.exists() else ""

    def args(self) -> list[str]:
        args = [
            sys.executable, "-m", "portal_es", "serve",
            "--api-host", "127.0.0.1", "--api-port", str(self.port),
            "--work-dir", str(self.work_dir),
            "--proxy-http", f"127.0.0.1:{self.proxy_port}",
            "--proxy-tls", f"127.0.0.1:{self.proxy_tls_port}",
            "--api-token", self.token,
            "--proxy-workers", "0",  # the proxy inside the server process: lighter tests
        ]
        if self.db_connection:
            args += ["--db-connection", self.db_connection]
        if not self.tls:
            args.append("--insecure")
        if not self.kernel:
            args += ["--balancer", "none", "--no-vips"]
        return args + self.extra

    def start(self) -> PortalServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.work_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"portal-es exited {self.process.returncode}:\n{self.log}")
            if self._listening():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"portal-es did not listen within {self.start_timeout} s:\n{self.log}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[PortalServer]:
    """A running server on the embedded (SQLite) store, plain HTTP, no token."""
    server = PortalServer(tmp_path / "node").start()
    yield server
    server.stop()


@pytest.fixture
def portal_factory(tmp_path: Path) -> Iterator[type[PortalServer]]:
    started: list[PortalServer] = []

    class Factory(PortalServer):
        def start(self) -> PortalServer:
            started.append(self)
            return super().start()

    yield Factory
    for server in started:
        server.stop()


def reset_postgres(url: str) -> None:
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        for table in ("portal_tracking", "portal_snapshots", "portal_events", "alembic_version"):
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


@pytest.fixture
def pg_url() -> str:
    """The machine's PostgreSQL database `test`, emptied of portal-es tables."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError:
        unavailable("PostgreSQL is not listening on 127.0.0.1:5432")
    reset_postgres(PG_URL)
    return PG_URL
