"""History benchmark: how long a node takes to rebuild from a long log, with and without
snapshots.

Run as a script (not a test):

    .venv/bin/python bench/history.py [--events 10000,100000,1000000] [--services 200]
                                      [--servers 10] [--interval 1000] [--skip-without N]

On SQLite (a file in a temp dir): the fold's cost is the same on PostgreSQL, and this bench
must not drop the portal tables of the shared `test` database under other runs.

For each size, a log of N events is written (built in memory on one Balancer: server weight
changes, servers removed and added back, over --services services of --servers servers each,
so the state stays the size of a real configuration while the history grows), with the
snapshots a writer takes on the way (every SNAPSHOT_INTERVAL events, thinned as in
production). Then, each on a freshly opened application (cold, as a process starting):

- rebuild: `portal-es rebuild`'s work with the `none` data plane (NodeProjector: resume, fold
  to the head, apply, record the position): the cost that grows with history;
- read model: StateView.catch_up(), what `serve` does before it answers;
- aggregate: loading the Balancer for the first command (the library's repository).

"with" = the writer's snapshots are there; "without" = they were deleted (the fold starts at
position 0). Progress goes to stderr; the Markdown table to stdout. The goal: a node rebuilds
from 1M events in under 10 s on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from portal_es.adapters import log_tables, store
from portal_es.adapters.kernel.none import NoDataplane
from portal_es.adapters.log_tables import Row
from portal_es.domain.balancer import BALANCER_ID, Balancer, Meta
from portal_es.domain.models import Server, Service
from portal_es.service.app import PortalApplication
from projections.node import NodeProjector
from projections.state_view import StateView

KEY = "Q0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEVSS0VZQ0lQSEU="
META = Meta("bench", "bench")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def service(n: int, servers: int) -> Service:
    return Service(
        host=f"10.{n // 250}.{n % 250}.1", port=80,
        servers=tuple(Server(host=f"10.200.{n % 250}.{i + 1}", port=8080)
                      for i in range(servers)),
    )


Snapshot = tuple[Any, int, int, Any]  # state, version, position, time: put_snapshot's


def history_rows(app: PortalApplication, events: int, services: int, servers: int,
                 interval: int) -> Iterator[tuple[Row, Snapshot | None]]:
    """N events of a plausible history, mapped as the application stores them, each with the
    snapshot a writer would take after it (every `interval` versions) or None."""
    balancer = Balancer()
    templates = [service(n, servers) for n in range(services)]
    for template in templates:
        balancer.add_service(META, template, ())
    position = 0
    step = 0
    while True:
        pending = balancer.collect_events()
        first = pending[0].originator_version if pending else 0
        last = pending[-1].originator_version if pending else 0
        crossed = last // interval > (first - 1) // interval  # as the writer decides
        for event in pending:
            if position == events:
                return
            position += 1
            stored = app.mapper.to_stored_event(event)
            row = Row(position, BALANCER_ID, stored.originator_version, stored.topic,
                      stored.state)
            done = crossed and event is pending[-1]  # the state is the one after the last
            yield row, ((balancer.state, stored.originator_version, position,
                         event.timestamp) if done else None)  # type: ignore[attr-defined]
        target = templates[step % services]
        current = balancer.state.services[target.id].servers
        if step % 7 == 3 and len(current) > 1:  # a server goes, and comes back later
            balancer.remove_server(META, target.id, current[-1].id)
        elif len(current) < servers:
            balancer.add_server(META, target.id, target.servers[len(current)])
        else:
            weighted = tuple(s.model_copy(update={"weight": step % 9 + 1}) for s in current)
            balancer.replace_servers(META, target.id, weighted)
        step += 1


def write_log(url: str, events: int, services: int, servers: int, interval: int) -> None:
    app = open_app(url, interval)
    started = time.perf_counter()
    batch: list[Row] = []
    for row, snapshot in history_rows(app, events, services, servers, interval):
        batch.append(row)
        if snapshot is not None or len(batch) == 20_000:
            log_tables.insert_rows(app, batch)  # a snapshot follows the events it holds
            batch.clear()
        if snapshot is not None:
            app.put_snapshot(*snapshot)
    log_tables.insert_rows(app, batch)
    app.close()
    progress(f"  wrote {events} events in {time.perf_counter() - started:.1f} s")


def open_app(url: str, interval: int) -> PortalApplication:
    env = store.application_env(url, KEY)
    env["SNAPSHOT_INTERVAL"] = str(interval)
    return PortalApplication(env)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@dataclass
class Result:
    events: int
    snapshots: str
    rebuild: float
    read_model: float
    aggregate: float
    folded_from: int


def measure(url: str, interval: int, events: int, label: str) -> Result:
    app = open_app(url, interval)
    # No drain window: the bench's events are seconds old, so with one every event would be
    # "recent" (in a real log the window holds the last seconds of changes, not the history).
    node = NodeProjector(app, "bench", NoDataplane(), drain_timeout=timedelta(0))
    rebuild = timed(lambda: node.step(full=True))
    folded_from = app.latest_snapshot().position if label == "with" else 0  # type: ignore[union-attr]
    app.close()
    app = open_app(url, interval)
    view = StateView(app)
    read_model = timed(view.catch_up)
    app.close()
    app = open_app(url, interval)
    aggregate = timed(app.version)
    app.close()
    assert node.position == events, (node.position, events)
    return Result(events, label, rebuild, read_model, aggregate, folded_from)


def run(args: argparse.Namespace) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for events in args.events:
            (Path(tmp) / str(events)).mkdir(exist_ok=True)
            url = store.database_url("", Path(tmp) / str(events))
            store.migrate(url)
            progress(f"{events} events:")
            write_log(url, events, args.services, args.servers, args.interval)
            results.append(measure(url, args.interval, events, "with"))
            progress(f"  with snapshots: {results[-1]}")
            if events > args.skip_without:
                continue
            app = open_app(url, args.interval)
            log_tables.delete_snapshots(app, log_tables.snapshot_versions(app))
            app.close()
            results.append(measure(url, args.interval, events, "without"))
            progress(f"  without: {results[-1]}")
            Path(url.removeprefix("sqlite:///")).unlink()
    return results


def table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        f"history bench: sqlite, {args.services} services x {args.servers} servers, "
        f"snapshot every {args.interval} events; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "",
        "| events | snapshots | rebuild (node) s | read model s | aggregate load s | "
        "folded from position |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r.events:,} | {r.snapshots} | {r.rebuild:.2f} | {r.read_model:.2f} | "
              f"{r.aggregate:.2f} | {r.folded_from:,} |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="10000,100000,1000000",
                        type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--interval", type=int, default=1000)
    parser.add_argument("--skip-without", type=int, default=10**9,
                        help="measure 'without snapshots' only up to this many events")
    args = parser.parse_args()
    print(table(run(args), args))


if __name__ == "__main__":
    main()
