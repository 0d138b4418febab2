"""IPVS for real: boot the Debian-kernel VM once (tests/vm/ipvs-vm.sh) and run
tests/kernel_vm inside it with this venv's python. The host kernel has no IPVS.

Fails with the guest's output when a guest test fails. When the VM cannot run (no qemu, no
kernel package, no boot) it skips on a developer's machine and fails under CI=true.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "vm" / "ipvs-vm.sh"
GUEST_TIMEOUT = int(os.environ.get("IPVS_VM_TIMEOUT", "900"))
TAIL = 150  # lines of guest output in a failure message


@contextmanager
def _terminal(config: pytest.Config) -> Iterator[None]:
    """Let output through pytest's capture (download progress is worth seeing live)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        yield


def _prepare(config: pytest.Config) -> None:
    """Install what is missing and fetch the kernel (~70 MB the first time), printing progress."""
    with _terminal(config):
        done = subprocess.run([str(RUNNER), "--prepare"], stdout=sys.stderr, check=False)
    if done.returncode:
        unavailable(f"cannot prepare the IPVS VM ({RUNNER.name} --prepare exited "
                    f"{done.returncode}: see its output above)")


def _guest_command() -> str:
    pytest_args = [
        "-m", "pytest", "tests/kernel_vm",
        "--ignore", "tests/kernel_vm/test_without_ipvs.py",  # needs no IPVS: the host runs it
        "-q", "-rfE", "--color=no", "--tb=short", "--durations=8",
        # Every import costs ~12x in the emulated guest: no cache, no plugin autoload, and not
        # tests/conftest.py (PostgreSQL fixtures) above --confcutdir.
        "-p", "no:cacheprovider", "--confcutdir", "tests/kernel_vm",
        "-W", "ignore::pytest.PytestConfigWarning",  # asyncio_mode: its plugin is not loaded
    ]
    return "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 " + shlex.join([sys.executable, *pytest_args])


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-TAIL:])


@pytest.fixture(scope="session")
def guest_run(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    """One VM boot per session: the whole kernel_vm suite in it."""
    if os.geteuid() != 0:
        # The guest's root is the host's / (the venv's python may live under /root), and the
        # guest creates namespaces and programs IPVS as root.
        unavailable("the IPVS VM needs root (it shares the host's / with the guest)")
    _prepare(request.config)
    try:
        return subprocess.run([str(RUNNER), _guest_command()], capture_output=True, text=True,
                              timeout=GUEST_TIMEOUT + 60,
                              env={**os.environ, "VM_TIMEOUT": str(GUEST_TIMEOUT)}, check=False)
    except subprocess.TimeoutExpired as e:
        unavailable(f"the IPVS VM did not finish within {GUEST_TIMEOUT} s: {e}")
        raise  # unreachable: unavailable() skips or fails


def _guest_part(out: str) -> str:
    """The guest's own lines: from the boot marker to the exit code (no firmware noise)."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if "GUEST-BOOTED" in line), 0)
    end = next((i for i, line in enumerate(lines) if "GUEST-EXIT-CODE" in line), len(lines))
    return "\n".join(lines[start: end + 1])


def test_ipvs_kernel_suite_in_vm(guest_run: subprocess.CompletedProcess[str]) -> None:
    out = guest_run.stdout + guest_run.stderr
    if "GUEST-BOOTED" not in out:
        unavailable(f"the IPVS VM did not boot (exit {guest_run.returncode}):\n{_tail(out)}")
    guest = _guest_part(out)
    print(guest)  # boot time, durations and summary: shown with -s / -rP
    if guest_run.returncode != 0:
        pytest.fail(f"IPVS kernel tests failed in the VM (exit {guest_run.returncode}):\n"
                    f"{_tail(guest)}", pytrace=False)
    assert re.search(r"^\d+ passed", guest, re.M), f"no passing pytest summary:\n{_tail(guest)}"
