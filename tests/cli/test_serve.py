"""`serve`, `--server`, `migrate`, `--version`: the server side of the command line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portal_es.config import FIELDS
from tests.cli.conftest import portal_es, portal_es_many
from tests.conftest import free_port


def test_serve_help_lists_every_setting_with_portals_short_flags() -> None:
    run = portal_es("serve", "--help")
    assert run.code == 0
    for key in FIELDS:
        assert re.search(rf"(^|\s)--{key}\b", run.out), key
    for short, key in (("-H", "api-host"), ("-P", "api-port"), ("-t", "api-token"),
                       ("-i", "insecure"), ("-c", "conf")):
        assert f"{short}, --{key}" in run.out
    assert "[default: 8443]" in run.out and "[default: 0.0.0.0:80]" in run.out


def test_version_and_bare_command() -> None:
    version, bare = portal_es_many(["--version"], [])
    assert re.fullmatch(r"portal-es \d+\.\d+\.\d+\S*\n", version.out)
    assert bare.code == 0 and "show-services" in bare.out and "serve" in bare.out


@pytest.mark.parametrize(("conf", "message"), [
    ('{"api-port": 9000,', "is not valid JSON, YAML or TOML"),
    ('{"proxy-http": "nonsense"}', "'nonsense' is not host:port"),
    ('{"no-such-setting": 1}', "unknown setting(s): no-such-setting"),
])
def test_a_bad_config_file_stops_serve(tmp_path: Path, conf: str, message: str) -> None:
    (tmp_path / "bad.json").write_text(conf)
    # Loopback listeners: should the file not stop it, the server must not take real ports.
    run = portal_es("serve", "-c", str(tmp_path / "bad.json"), "-P", str(free_port()),
                    "--proxy-tls", f"127.0.0.1:{free_port()}", "--balancer", "none",
                    "--no-vips", "--work-dir", str(tmp_path / "node"))
    assert run.code == 2 and message in run.err and run.err.startswith("portal-es: ")
    assert not (tmp_path / "node").exists()  # nothing started


def test_bad_settings_from_env_or_store_stop_serve(tmp_path: Path) -> None:
    level = portal_es("serve", "--work-dir", str(tmp_path / "a"),
                      env={"PORTAL_ES_LOG_LEVEL": "chatty"})
    assert level.code == 2 and "log-level 'chatty'" in level.err
    serve, migrate = portal_es_many(
        ["serve", "--work-dir", str(tmp_path / "b"), "--db-connection", "mysql://db/portal"],
        ["migrate", "--work-dir", str(tmp_path / "c"), "--db-connection", "mysql://db/portal"],
    )
    for run in (serve, migrate):
        assert run.code == 2 and "unsupported db-connection 'mysql'" in run.err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    first = portal_es("migrate", "--work-dir", str(tmp_path))
    again = portal_es("--work-dir", str(tmp_path), "migrate")  # root flags reach the command
    db = f"sqlite:///{tmp_path}/portal-es.db"
    assert (first.code, again.code) == (0, 0), first.err + again.err
    assert re.fullmatch(rf"{db}: migrated from revision \(empty store\) to \w+\n", first.out)
    assert re.fullmatch(rf"{db}: already at revision \w+, nothing to do\n", again.out)


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not listen")


def test_root_server_flag_starts_the_server_with_the_root_flags(tmp_path: Path) -> None:
    """Portal's `portal --server`: the global flags (-i -t -P) configure the server too."""
    port = free_port()
    args = [sys.executable, "-m", "portal_es", "-i", "-t", "root-token", "-P", str(port), "-s",
            "--work-dir", str(tmp_path), "--proxy-http", f"127.0.0.1:{free_port()}",
            "--proxy-tls", f"127.0.0.1:{free_port()}", "--balancer", "none", "--no-vips"]
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(port, process)
        refused, accepted = portal_es_many(
            ["show-services", "-i", "-P", str(port)],
            ["show-services", "-i", "-P", str(port), "-t", "root-token"],
        )
        assert (refused.code, accepted.code, accepted.out) == (1, 0, "[]\n")
    finally:
        process.terminate()
        process.wait(10)
