"""A portal-es server process inside a network namespace, and its API called from there.

A namespace cannot reach the host's loopback (nor the host its), so the server is started with
`ip netns exec` and every API call is made by a thread that entered the same namespace.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.conftest import PortalServer
from tests.http import Answer, call
from tests.netns import run_in


@dataclass
class NsPortal(PortalServer):
    netns: str = ""

    def args(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().args()]

    def start(self) -> NsPortal:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.work_dir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"portal-es exited {self.process.returncode}:\n{self.log}")
            if run_in(self.netns, self._listening):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"portal-es did not listen within 40 s:\n{self.log}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.3):
                return True
        except OSError:
            return False

    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return run_in(self.netns, lambda: call(method, self.url + path, body, **kwargs))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`portal-es <args>` run inside the namespace (node maintenance commands)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "portal_es", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
