"""`portal-es events`: the audit log as JSON lines, filtered, paged through `next`."""

from __future__ import annotations

import json
from typing import Any

from tests.cli.conftest import Run, portal_es_many
from tests.conftest import PortalServer
from tests.http import call


def _lines(run: Run) -> list[dict[str, Any]]:
    assert run.code == 0, run.err
    return [json.loads(line) for line in run.out.splitlines()]


def _all_events(server: PortalServer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while since is not None:
        page = call("GET", f"{server.url}/events?limit=1000&since={since}").json
        out += page["events"]
        since = page["next"]
    return out


def test_events_filters_and_paging(server: PortalServer) -> None:
    for port in (80, 81):
        assert call("POST", server.url + "/services", {"host": "10.7.0.1", "port": port}
                    ).status == 200
    assert call("DELETE", server.url + "/services/tcp-10_7_0_1-81").status == 200
    everything = _all_events(server)
    middle = everything[len(everything) // 2]["position"]
    flags = ["-i", "-P", str(server.port)]
    full, paged, typed, entity, window, limited, future, table = portal_es_many(
        ["events", *flags],
        ["events", "--page-size", "2", *flags],
        ["events", "--type", "ServiceRemoved", *flags],
        ["events", "--entity", "tcp-10_7_0_1-81", *flags],
        ["events", "--since", str(middle - 1), "--until", str(middle), *flags],
        ["events", "--limit", "3", "--page-size", "2", *flags],
        ["events", "--since-time", "2999-01-01T00:00:00", *flags],
        ["events", "--output", "table", "--type", "ServiceAdded", *flags],
    )
    assert _lines(full) == everything  # one compact JSON object per line, all of them
    assert paged.out == full.out  # followed `next` two at a time
    assert {e["type"] for e in _lines(typed)} == {"ServiceRemoved"}
    about = _lines(entity)
    assert [e["type"] for e in about] == ["ServiceAdded", "ServiceRemoved"]
    assert [e["position"] for e in _lines(window)] == [middle]
    assert _lines(limited) == everything[:3]
    assert future.out == ""
    rows = table.out.splitlines()
    assert rows[0].split() == ["POSITION", "TIME", "TYPE", "ACTOR", "DATA"]
    assert rows[1:] and all(row.split()[2] == "ServiceAdded" for row in rows[1:])
