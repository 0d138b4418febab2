"""The history commands as a person runs them: the real `portal-es` against real servers and
stores (SQLite, the machine's PostgreSQL). show/diff/restore go through the API; rebuild --at,
replay and archive work on the store itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portal_es.adapters import store
from projections import history
from tests.conftest import PortalServer
from tests.history.scenario import KEY, open_app, play, sqlite_url
from tests.http import call

PATHS = ("/services", "/routes", "/certs", "/vips", "/errors")


def portal_es(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_ES_")}
    return subprocess.run([sys.executable, "-m", "portal_es", *args], capture_output=True,
                          text=True, env=environ, timeout=60, check=False)


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        return json.loads(done.stdout)
    except ValueError:  # a table, or JSON lines
        return done.stdout


def store_args(work_dir: Path, db: str = "") -> list[str]:
    args = ["--work-dir", str(work_dir), "--cert-key-cipher", KEY, "--log-level", "WARNING"]
    return [*args, "--db-connection", db] if db else args


def write(server: PortalServer, method: str, path: str, body: Any) -> int:
    """A write through the API; the log position it ended at."""
    answer = call(method, server.url + path, body)
    assert answer.status == 200, answer.text
    return int(call("GET", server.url + "/status").json["head"])


def everything(server: PortalServer) -> dict[str, Any]:
    return {p: call("GET", server.url + p).json for p in PATHS}


def deploy(server: PortalServer) -> list[tuple[int, dict[str, Any]]]:
    """A few changes; the position after each and every GET answer then."""
    bodies: list[tuple[str, str, Any]] = [
        ("PUT", "/services", [{"host": "10.0.0.1", "port": 80, "servers": [
            {"host": "10.1.0.1", "port": 8080}, {"host": "10.1.0.2", "port": 8080}]}]),
        ("POST", "/routes", {"domain": "a.test", "targets": ["http://10.2.0.1"]}),
        ("PUT", "/errors", {"no-routes": "nothing", "no-healthy": "down"}),
        ("PUT", "/services", [{"host": "10.0.0.1", "port": 80, "scheduler": "rr", "servers": [
            {"host": "10.1.0.9", "port": 8080}]}, {"host": "10.0.0.2", "port": 53,
                                                   "type": "udp"}]),
        ("POST", "/vips", {"ip": "10.3.0.1"}),
    ]
    return [(write(server, *b), everything(server)) for b in bodies]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PortalServer]:
    s = PortalServer(tmp_path / "node", extra=["--cert-key-cipher", KEY]).start()
    yield s
    s.stop()


def client(server: PortalServer) -> Callable[..., subprocess.CompletedProcess[str]]:
    return lambda *args: portal_es(*args, "-i", "-P", str(server.port))


def test_show_diff_and_restore_through_the_api(server: PortalServer) -> None:
    steps = deploy(server)
    cli = client(server)
    (p1, state1), (p3, state3) = steps[0], steps[2]
    shown = ok(cli("show", "--at", str(p1)))
    assert shown["point"]["position"] == p1
    assert {f"/{k}" if k != "errors" else "/errors": v for k, v in shown["state"].items()} \
        == state1
    at_time = ok(cli("show", "--at", shown["point"]["time"]))
    assert at_time == shown
    assert ok(cli("show"))["state"]["vips"] == steps[-1][1]["/vips"]
    table = ok(cli("show", "--at", str(p3), "--output", "table"))
    assert "SERVICES:" in table and "10_1_0_2-8080" in table and "(no vips)" in table
    changes = ok(cli("diff", str(p1), str(p3)))
    assert changes["changed"] and [r["domain"] for r in changes["changes"]["routes"]["added"]] \
        == ["a.test"]
    assert not ok(cli("diff", str(p3), str(p3)))["changed"]
    lines = ok(cli("diff", str(p3), "--output", "table")).splitlines()
    assert "+ service tcp-10_0_0_2-53" not in lines  # udp: its id says so
    assert "+ service udp-10_0_0_2-53" in lines and "+ vip 10.3.0.1" in lines
    assert any(line.startswith("~ service tcp-10_0_0_1-80 (") for line in lines)
    # the bad deploy is undone: everything as it was at p3, recorded as events
    restored = ok(cli("restore", "--at", str(p3), "--reason", "bad deploy"))
    assert restored["restored"]["to"]["position"] == p3
    assert everything(server) == state3
    marker = call("GET", server.url + "/events?type=Restored").json["events"]
    assert [(e["data"]["restored_position"], e["data"]["reason"]) for e in marker] == \
        [(p3, "bad deploy")]
    head = call("GET", server.url + "/status").json["head"]
    again = ok(cli("restore", "--at", str(p3)))  # already so: nothing is written
    assert call("GET", server.url + "/status").json["head"] == head
    assert again["restored"]["changed"] is False
    # what cannot be: refused with the API's error
    assert call("GET", server.url + f"/state?at={head + 5}").status == 404
    assert call("GET", server.url + "/state?at=someday").status == 400
    assert call("POST", server.url + "/state/restore", {"reason": "x"}).status == 400
    assert cli("restore", "--reason", "x").returncode == 2


def test_replay_from_sqlite_into_postgres_gives_identical_get_answers(
    server: PortalServer, pg_url: str, tmp_path: Path, portal_factory: type[PortalServer]
) -> None:
    deploy(server)
    call("POST", server.url + "/state/restore", {"at": 3, "reason": "back"})
    exported = tmp_path / "log.jsonl"
    ok(portal_es("replay", "--export", str(exported), *store_args(server.work_dir)))
    printed = ok(portal_es("replay", *store_args(server.work_dir)))
    assert printed.splitlines()[1:] == exported.read_text().splitlines()[1:]
    imported = ok(portal_es("replay", "--import", str(exported),
                            *store_args(tmp_path / "pg-node", pg_url)))
    assert imported["head"]["position"] == call("GET", server.url + "/status").json["head"]
    again = portal_es("replay", "--import", str(exported), *store_args(tmp_path / "pg", pg_url))
    assert again.returncode == 1 and "does not come after" in again.stderr
    target = portal_factory(tmp_path / "pg-node", db_connection=pg_url,
                            extra=["--cert-key-cipher", KEY]).start()
    for path in (*PATHS, "/events?limit=1000", "/state", "/state?at=3"):
        a, b = call("GET", server.url + path), call("GET", target.url + path)
        assert (a.status, a.text, a.headers.get("ETag")) == (b.status, b.text,
                                                             b.headers.get("ETag")), path


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_rebuild_at_replay_and_archive_on_the_store(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No server: the commands work on the store (checked here in-process, by folding)."""
    work_dir = tmp_path / "node"
    url = request.getfixturevalue("pg_url") if db == "postgres" else ""
    db_url = store.database_url(url, work_dir) if url else sqlite_url(work_dir)
    store.migrate(db_url)
    app = open_app(db_url)
    steps = play(app)
    p, then = steps[8].position, steps[8].state
    args = [*store_args(work_dir, url), "--balancer", "none", "--no-vips",
            "--proxy-http", "127.0.0.1:18080", "--proxy-tls", "127.0.0.1:18443"]
    plan = ok(portal_es("rebuild", "--at", str(p), "--dry-run", *args))
    assert plan["restore"]["changed"] and "version" not in plan["restore"]
    assert history.state_at(app).state.portal_json() == steps[-1].state  # a dry run
    done = ok(portal_es("rebuild", "--at", str(p), "--reason", "test", *args))
    assert done["restore"]["events"] > 1 and done["applied"]
    assert history.state_at(app).state.portal_json() == then
    log = ok(portal_es("replay", *store_args(work_dir, url))).splitlines()
    last = json.loads(log[-2])
    assert last["topic"].endswith(":Restored") and last["state"]["reason"] == "test"
    assert last["state"]["actor"].startswith("cli:")
    # archive the beginning: the state stays, the archive replays into an empty store
    archived = ok(portal_es("archive", "--until", str(p), "--file",
                            str(tmp_path / "a.jsonl"), *store_args(work_dir, url)))
    assert archived["last_position"] == p and archived["deleted"] == p
    assert history.state_at(app).state.portal_json() == then
    with pytest.raises(history.PointUnavailable):
        history.state_at(app, p - 1)
    fresh = tmp_path / "fresh"
    ok(portal_es("replay", "--import", str(tmp_path / "a.jsonl"), *store_args(fresh)))
    assert history.state_at(open_app(sqlite_url(fresh))).state.portal_json() == then
