"""The real `portal-es` command (a subprocess) against a real server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import PortalServer
from tests.http import call


@dataclass(frozen=True)
class Run:
    """What one `portal-es` invocation did."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def portal_es(*args: str, env: dict[str, str] | None = None) -> Run:
    """`python -m portal_es ARGS`, with no PORTAL_ES_* variable but those in `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_ES_")}
    process = subprocess.run(
        [sys.executable, "-m", "portal_es", *args], capture_output=True, text=True,
        env={**environ, **(env or {})}, timeout=60,
    )
    return Run(process.returncode, process.stdout, process.stderr)


def portal_es_many(*commands: Sequence[str], env: dict[str, str] | None = None) -> list[Run]:
    """Independent invocations side by side (each is ~0.5 s of interpreter start-up)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: portal_es(*args, env=env), commands))


Cli = Callable[..., Run]
Clis = Callable[..., list[Run]]


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    """One plain-HTTP server without token for every CLI test (a server takes ~3 s to start)."""
    s = PortalServer(tmp_path_factory.mktemp("cli") / "node").start()
    yield s
    s.stop()


@pytest.fixture
def cli(server: PortalServer) -> Cli:
    """`portal-es ARGS -i -P <port>`: the global flags after the subcommand, as Portal allowed."""

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        return portal_es(*args, "-i", "-P", str(server.port), env=env)

    return run


@pytest.fixture
def clis(server: PortalServer) -> Clis:
    """Like `cli`, for several independent commands run side by side."""

    def run(*commands: Sequence[str]) -> list[Run]:
        return portal_es_many(*([*c, "-i", "-P", str(server.port)] for c in commands))

    return run


@pytest.fixture
def empty(server: PortalServer) -> PortalServer:
    """The shared server with no services, routes, certs or vips (emptied over HTTP: fast)."""
    for what in ("/services", "/routes", "/certs", "/vips"):
        assert call("PUT", server.url + what, []).status == 200
    return server


def one_line(run: Run) -> Any:
    """The API's JSON, printed as is on one line, from a command that succeeded."""
    assert run.code == 0, run.err
    assert run.out.endswith("\n") and run.out.count("\n") == 1, run.out
    return run.json
