"""A portal-es server process inside a network namespace, and its API called from there.

A namespace cannot reach the host's loopback (nor the host its), so the server is started with
`ip netns exec` and every API call is made by a thread that entered the same namespace.
"""

from __future__ import annotations

import subprocess
import sys
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

    start_timeout: float = 40.0  # setns + a cold start in a namespace are slower

    def _listening(self) -> bool:
        # The namespace's loopback is only reachable from inside the namespace.
        return run_in(self.netns, super()._listening)

    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return run_in(self.netns, lambda: call(method, self.url + path, body, **kwargs))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`portal-es <args>` run inside the namespace (node maintenance commands)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "portal_es", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
