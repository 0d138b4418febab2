"""Store benchmark: write throughput and cold-start fold time, against named floors.

Run as a script (not a test):

    .venv/bin/python bench/store.py [--backend sqlite|postgres|both] [--commands N]
                                    [--fold-events N] [--http-clients 1,8] [--time-limit S]
                                    [--pg-url URL] [--pg-schema NAME] [--profile]

Per backend (SQLite: a file in a temp dir; PostgreSQL: database `test`, its portal tables
created by the migration in a schema of their own, dropped and re-created before and between
the phases and dropped after; see --pg-schema):

1. writes in-process: N sequential AddService/AddServer commands through
   PortalApplication.execute, the path every API write takes;
2. writes over HTTP: a real `portal-es serve` process (plain HTTP on loopback, no kernel
   balancer) and N POST /services from 1..k concurrent aiohttp clients;
3. the floor of a durable write: N raw SQLAlchemy INSERTs of rows of the same size into a
   scratch table in the same database, one transaction per row, run in blocks alternating
   with those of (1) so that both see the same disk;
4. the fold: a cold StateView.catch_up() over a log of --fold-events events (built in memory
   on one Balancer and saved in batches, no snapshots), against the floor of a raw SELECT of
   every row; the same fold timed by stage (read, decode, evolve); the aggregate's load; and
   a cold start when a snapshot is at the head (as the writer takes them by default).

The machine is shared: figures drift between runs with whatever else runs on it (the fsync
latency most of all), so compare ratios measured in one run rather than absolute figures.

Progress goes to stderr; the result table (Markdown) to stdout. Every loop is bounded in
count and in time (--time-limit per phase).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import os
import platform
import pstats
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path

import aiohttp
import sqlalchemy as sa

from portal_es.adapters import store
from portal_es.config import Settings
from portal_es.domain.balancer import BALANCER_ID, Balancer, Meta
from portal_es.domain.commands import AddServer, AddService, Command
from portal_es.domain.events import BalancerEvent
from portal_es.domain.models import Server, Service
from portal_es.domain.state import BalancerState
from portal_es.entrypoints.server import open_application
from portal_es.service.app import PortalApplication
from projections.state_view import StateView

PG_URL = os.environ.get("PORTAL_ES_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PORTAL_TABLES = ("portal_tracking", "portal_snapshots", "portal_events", "alembic_version")
SCRATCH_TABLE = "bench_raw_inserts"
SERVICE_PORT = 8080  # clear of the API's and the proxies' reserved sockets
FOLD_BATCH = 2000  # events per app.save while building the fold log
FOLD_SERVICES = 1000  # services in the fold log; servers churn on them
FOLD_MAX_SERVERS = 8  # servers per service before each add also removes the oldest
META = Meta(actor="bench", request_id="bench")
FOLD_PAGE = 1000  # as StateView reads the log
WRITE_BLOCK = 100  # in-process writes, then as many raw inserts, in turn
SNAPSHOT_ENV = "PORTAL_SNAPSHOT_INTERVAL"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# --- small helpers --------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Ticker:
    """Progress on stderr at most every `every` seconds."""

    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = done / (now - self.started) if now > self.started else 0.0
            progress(f"{self.label}: {done}/{self.total} ({rate:,.0f}/s)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN when there are no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def service_host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def server_host(i: int) -> str:
    return f"192.168.{(i >> 8) & 255}.{i & 255}"


def make_service(i: int) -> Service:
    return Service(host=service_host(i), port=SERVICE_PORT)


def make_server(i: int) -> Server:
    return Server(host=server_host(i % 65536), port=9000 + i // 65536)


@dataclass
class Rate:
    """A timed run of `count` operations (of `wanted`), with per-operation latencies."""

    count: int
    wanted: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000

    def note(self) -> str:
        out = "" if self.count == self.wanted else f" (only {self.count}/{self.wanted}: time limit)"
        return out + (f" ({self.errors} errors)" if self.errors else "")


# --- backends -------------------------------------------------------------------------------


class Backend:
    """Where a phase's log lives: fresh (empty, migrated) for each phase."""

    name = ""

    def db_connection(self, work_dir: Path) -> str:
        """The server's --db-connection value for a store in `work_dir`."""
        raise NotImplementedError

    def fresh(self, work_dir: Path) -> str:
        """Empty the store a server in `work_dir` would open; its SQLAlchemy URL."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Leave nothing behind."""

    def engine(self, work_dir: Path) -> sa.Engine:
        return sa.create_engine(store.database_url(self.db_connection(work_dir), work_dir))

    def server_version(self) -> str:
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"

    def db_connection(self, work_dir: Path) -> str:
        return ""

    def fresh(self, work_dir: Path) -> str:
        work_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            (work_dir / (store.SQLITE_FILE + suffix)).unlink(missing_ok=True)
        return store.database_url("", work_dir)

    def server_version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


class PostgresBackend(Backend):
    """Database `test`. By default in a schema of its own (search_path set in the URL, for
    this process and for the server's), because the test suite drops and re-creates the
    portal tables of the public schema of the same database whenever it runs: sharing them
    would break both. `--pg-schema public` uses the public schema's tables themselves."""

    name = "postgres"

    def __init__(self, url: str, schema: str) -> None:
        if not SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.base_url = url
        self.schema = schema
        self.url = url
        if schema != "public":
            separator = "&" if "?" in url else "?"
            self.url = f"{url}{separator}options=-csearch_path%3D{schema}"

    def db_connection(self, work_dir: Path) -> str:
        return self.url

    def _drop(self) -> None:
        engine = sa.create_engine(store.database_url(self.base_url, Path(".")))
        try:
            with engine.begin() as conn:
                if self.schema == "public":
                    for table in (*PORTAL_TABLES, SCRATCH_TABLE):
                        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
                else:
                    conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        finally:
            engine.dispose()

    def fresh(self, work_dir: Path) -> str:
        work_dir.mkdir(parents=True, exist_ok=True)
        self._drop()
        if self.schema != "public":
            engine = sa.create_engine(store.database_url(self.base_url, Path(".")))
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"CREATE SCHEMA {self.schema}"))
            finally:
                engine.dispose()
        return store.database_url(self.url, work_dir)

    def cleanup(self) -> None:
        self._drop()

    def server_version(self) -> str:
        engine = sa.create_engine(store.database_url(self.base_url, Path(".")))
        try:
            with engine.connect() as conn:
                full = str(conn.execute(sa.text("SHOW server_version")).scalar())
        finally:
            engine.dispose()
        where = "public schema" if self.schema == "public" else f"schema {self.schema}"
        return f"PostgreSQL {full.split()[0]} (database test, {where})"


def settings_for(backend: Backend, work_dir: Path) -> Settings:
    return Settings.model_validate({
        "work-dir": str(work_dir), "db-connection": backend.db_connection(work_dir),
        "balancer": "none", "no-vips": True,
    })


@contextmanager
def application(backend: Backend, work_dir: Path) -> Iterator[PortalApplication]:
    """A PortalApplication on a fresh, migrated store, opened as `portal-es serve` opens it."""
    backend.fresh(work_dir)
    app = open_application(settings_for(backend, work_dir))
    try:
        yield app
    finally:
        app.close()


def reopen(backend: Backend, work_dir: Path) -> PortalApplication:
    """A new application on the existing store: what a restarted process has."""
    return open_application(settings_for(backend, work_dir))


# --- phase 1: writes in-process -------------------------------------------------------------


def write_commands(n: int) -> Iterator[Command]:
    """AddService, then AddServer on it, alternately: n commands, n/2 services."""
    for i in range(n):
        if i % 2 == 0:
            yield AddService(make_service(i // 2))
        else:
            yield AddServer(make_service(i // 2).id, make_server(i // 2))


def bench_execute(
    app: PortalApplication, n: int, time_limit: float, profile: cProfile.Profile | None = None
) -> Rate:
    """n commands through execute, nothing else (the profiled run)."""
    latencies: list[float] = []
    deadline = time.monotonic() + time_limit
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    for command in write_commands(n):
        t0 = time.perf_counter()
        app.execute(command, META)
        latencies.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    if profile is not None:
        profile.disable()
    return Rate(len(latencies), n, time.perf_counter() - started, latencies)


def bench_writes(
    app: PortalApplication, engine: sa.Engine, n: int, time_limit: float
) -> tuple[Rate, Rate, int]:
    """n commands through execute and n raw inserts, alternating in blocks of WRITE_BLOCK, so
    that both see the same machine (the disk's fsync latency drifts with whatever else runs).
    Returns (execute, raw inserts, the raw rows' size: the log's average state size)."""
    commands = list(write_commands(n))
    executed: list[float] = []
    inserted: list[float] = []
    state = b""
    ticker = Ticker("in-process writes (and as many raw inserts)", n)
    deadline = time.monotonic() + time_limit
    with RawInserter(engine) as raw:
        for start in range(0, n, WRITE_BLOCK):
            for command in commands[start:start + WRITE_BLOCK]:
                t0 = time.perf_counter()
                outcome = app.execute(command, META)
                executed.append(time.perf_counter() - t0)
                if not outcome.events:
                    raise RuntimeError(f"{command} appended nothing")
            if not state:
                state = b"x" * avg_state_bytes(engine)
            for _ in range(len(executed) - len(inserted)):
                inserted.append(raw.insert(state))
            ticker.tick(len(executed))
            if time.monotonic() > deadline:
                break
    return (Rate(len(executed), n, sum(executed), executed),
            Rate(len(inserted), n, sum(inserted), inserted), len(state))


def avg_state_bytes(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        value = conn.execute(sa.text("SELECT avg(length(state)) FROM portal_events")).scalar()
    return round(float(value or 0))


# --- phase 2: writes over HTTP --------------------------------------------------------------


class ServerProcess:
    """`portal-es serve` on loopback, plain HTTP, no kernel balancer (as tests/conftest.py)."""

    def __init__(self, work_dir: Path, db_connection: str) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "portal_es", "serve",
            "--api-host", "127.0.0.1", "--api-port", str(self.port),
            "--work-dir", str(work_dir),
            "--proxy-http", f"127.0.0.1:{free_port()}", "--proxy-tls", f"127.0.0.1:{free_port()}",
            "--api-token", "", "--insecure", "--balancer", "none", "--no-vips",
        ]
        if db_connection:
            self.args += ["--db-connection", db_connection]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        path = self.work_dir / "server.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def __enter__(self) -> ServerProcess:
        log = open(self.work_dir / "server.log", "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"portal-es exited {code}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"portal-es did not listen within 30 s:\n{self.log_tail()}")

    def __exit__(self, *_: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def post_services(url: str, n: int, clients: int, time_limit: float) -> Rate:
    """n POST /services (distinct services) from `clients` concurrent clients."""
    next_index = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit
    ticker = Ticker(f"HTTP writes, {clients} client(s)", n)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                i = next(next_index)
                if i >= n:
                    return
                body = {"host": service_host(i), "port": SERVICE_PORT}
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/services", json=body) as response:
                        text = await response.text()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError) as e:
                    ok, text = False, repr(e)
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(text)
                ticker.tick(len(latencies))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
    if errors:
        progress(f"{len(errors)} HTTP errors, first: {errors[0][:300]}")
    return Rate(len(latencies), n, seconds, latencies, errors=len(errors))


def bench_http(
    backend: Backend, work_dir: Path, n: int, clients: int, time_limit: float
) -> Rate:
    backend.fresh(work_dir)
    with ServerProcess(work_dir, backend.db_connection(work_dir)) as server:
        progress(f"{backend.name}: server on {server.url}, {n} POST /services, {clients} clients")
        return asyncio.run(post_services(server.url, n, clients, time_limit))


# --- phase 3: the floor of a durable write ----------------------------------------------------


class RawInserter:
    """The floor of a durable write: INSERT one row like portal_events' (same columns, same
    size) into a scratch table of the same database, one transaction (one commit) per row."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            SCRATCH_TABLE, self.metadata,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("originator_id", sa.String(36), nullable=False),
            sa.Column("originator_version", sa.BigInteger(), nullable=False),
            sa.Column("topic", sa.Text(), nullable=False),
            sa.Column("state", sa.LargeBinary(), nullable=False),
        )
        self.insert_statement = self.table.insert()
        self.version = 0

    def __enter__(self) -> RawInserter:
        self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)
        return self

    def __exit__(self, *_: object) -> None:
        self.metadata.drop_all(self.engine)

    def insert(self, state: bytes) -> float:
        self.version += 1
        started = time.perf_counter()
        with self.engine.begin() as conn:
            conn.execute(self.insert_statement, {
                "originator_id": "2f5f6a0e-8a4b-5b8e-9b59-1c1a4d6c0b2e",
                "originator_version": self.version,
                "topic": "portal_es.domain.events:ServiceAdded", "state": state,
            })
        return time.perf_counter() - started


# --- phase 4: the fold ----------------------------------------------------------------------


def build_log(app: PortalApplication, events: int, time_limit: float) -> int:
    """Append `events` events (Created included) to the log, built in memory on one Balancer:
    FOLD_SERVICES services, then servers added round-robin, each add past FOLD_MAX_SERVERS
    also removing that service's oldest server. Saved every FOLD_BATCH events."""
    balancer = Balancer()
    ticker = Ticker("building the fold log", events)
    deadline = time.monotonic() + time_limit
    service_ids: list[str] = []
    next_server = itertools.count()
    for step in itertools.count():
        if balancer.version >= events or time.monotonic() > deadline:
            break
        if len(service_ids) < FOLD_SERVICES:
            service = balancer.add_service(META, make_service(len(service_ids)), ())
            service_ids.append(service.id)
        else:
            service_id = service_ids[step % FOLD_SERVICES]
            servers = balancer.state.services[service_id].servers
            if len(servers) >= FOLD_MAX_SERVERS:
                balancer.remove_server(META, service_id, servers[0].id)
            if balancer.version < events:
                balancer.add_server(META, service_id, make_server(next(next_server)))
        if len(balancer.pending_events) >= FOLD_BATCH:
            app.save(balancer)
            ticker.tick(balancer.version)
    app.save(balancer)
    return balancer.version


def raw_read(engine: sa.Engine) -> tuple[float, int]:
    """Seconds to SELECT (and fetch) every row of the log, in log order; rows read."""
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, originator_id, originator_version, topic, state "
            "FROM portal_events ORDER BY id"
        )).fetchall()
    return time.perf_counter() - started, len(rows)


@dataclass
class FoldSplit:
    read: float = 0.0  # recorder.select_notifications, pages of FOLD_PAGE
    decode: float = 0.0  # mapper.to_domain_event
    evolve: float = 0.0  # event.evolve(state)
    version: int = 0

    @property
    def total(self) -> float:
        return self.read + self.decode + self.evolve


def split_fold(app: PortalApplication) -> FoldSplit:
    """Fold the whole log as StateView does (same calls, same page size), timing each stage
    per page in one pass, so that the three parts add up to the whole."""
    split = FoldSplit()
    state = BalancerState()
    position = 0
    for _ in range(10_000_000):  # bounded: far more pages than any benchmark log has
        t0 = time.perf_counter()
        notifications = app.recorder.select_notifications(
            start=position, limit=FOLD_PAGE, inclusive_of_start=False
        )
        t1 = time.perf_counter()
        events = [app.mapper.to_domain_event(n) for n in notifications]
        t2 = time.perf_counter()
        for event in events:
            if event.originator_id == BALANCER_ID:
                if isinstance(event, BalancerEvent):
                    event.evolve(state)
                split.version = event.originator_version
        t3 = time.perf_counter()
        split.read += t1 - t0
        split.decode += t2 - t1
        split.evolve += t3 - t2
        if notifications:
            position = notifications[-1].id
        if len(notifications) < FOLD_PAGE:
            return split
    raise RuntimeError("the log did not end")


@dataclass
class SnapshotResult:
    """A cold start when the store has a snapshot at the head (NaN: the core has none)."""

    fold_seconds: float = float("nan")
    load_seconds: float = float("nan")
    write_seconds: float = float("nan")


@dataclass
class FoldResult:
    events: int
    build_seconds: float
    fold_seconds: float
    raw_read_seconds: float
    split: FoldSplit
    aggregate_load_seconds: float
    snapshot: SnapshotResult
    state_services: int
    state_servers: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.fold_seconds


@contextmanager
def no_snapshots() -> Iterator[None]:
    """Applications opened inside take no snapshots (PORTAL_SNAPSHOT_INTERVAL=0), so that
    the log is all there is to read."""
    old = os.environ.get(SNAPSHOT_ENV)
    os.environ[SNAPSHOT_ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[SNAPSHOT_ENV]
        else:
            os.environ[SNAPSHOT_ENV] = old


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_fold(backend: Backend, work_dir: Path, events: int, time_limit: float) -> FoldResult:
    with no_snapshots(), application(backend, work_dir) as app:
        started = time.perf_counter()
        appended = build_log(app, events, time_limit)
        build_seconds = time.perf_counter() - started
    progress(f"{backend.name}: log of {appended} events built in {build_seconds:.1f} s")
    engine = backend.engine(work_dir)
    try:
        raw_read(engine)  # warm the database's page cache: every measurement below reads warm
        raw_seconds, rows = raw_read(engine)
    finally:
        engine.dispose()
    if rows != appended:
        raise RuntimeError(f"{rows} rows in portal_events, {appended} appended")

    progress(f"{backend.name}: cold fold of {rows} events (fresh application and StateView)")
    with no_snapshots():
        app = reopen(backend, work_dir)
    try:
        view = StateView(app)
        fold_seconds = timed(view.catch_up)
        if view.version != appended:
            raise RuntimeError(f"folded to version {view.version}, expected {appended}")
        services = len(view.state.services)
        servers = sum(len(s.servers) for s in view.state.services.values())
    finally:
        app.close()

    progress(f"{backend.name}: fold again in one pass, timing read / decode / evolve")
    with no_snapshots():
        app = reopen(backend, work_dir)
    try:
        split = split_fold(app)
        if split.version != appended:
            raise RuntimeError(f"split fold reached version {split.version}, not {appended}")
    finally:
        app.close()

    progress(f"{backend.name}: aggregate load after a restart, no snapshot")
    with no_snapshots():
        app = reopen(backend, work_dir)
    try:
        load_seconds = timed(app.version)
    finally:
        app.close()

    # As shipped, the writer snapshots the state every SNAPSHOT_INTERVAL events: a snapshot
    # at the head is what a restarted node of a 100k-event log resumes from.
    snapshot = SnapshotResult()
    app = reopen(backend, work_dir)
    try:
        put_snapshot = getattr(app, "put_snapshot", None)
        if put_snapshot is not None:
            put_snapshot(view.state, view.version, view.position, None)
    finally:
        app.close()
    if put_snapshot is not None:
        progress(f"{backend.name}: cold start from a snapshot at the head")
        app = reopen(backend, work_dir)
        try:
            resumed = StateView(app)
            snapshot.fold_seconds = timed(resumed.catch_up)
            if resumed.version != appended:
                raise RuntimeError(f"resumed at version {resumed.version}, not {appended}")
            snapshot.load_seconds = timed(app.version)
            snapshot.write_seconds = timed(
                lambda: app.execute(AddService(make_service(10_000_000)), META)
            )
        finally:
            app.close()
    return FoldResult(
        appended, build_seconds, fold_seconds, raw_seconds, split, load_seconds, snapshot,
        services, servers,
    )


# --- a backend's whole run ------------------------------------------------------------------


@dataclass
class BackendResult:
    name: str
    server: str
    execute: Rate
    state_bytes: int
    raw: Rate
    http: dict[int, Rate]
    fold: FoldResult
    profile: str = ""


def top_costs(profile: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def run_backend(backend: Backend, root: Path, args: argparse.Namespace) -> BackendResult:
    n, limit = args.commands, args.time_limit
    work_dir = root / backend.name / "inprocess"
    progress(f"{backend.name}: {n} in-process writes and {n} raw inserts, interleaved")
    with application(backend, work_dir) as app:
        engine = backend.engine(work_dir)
        try:
            execute, raw, state_bytes = bench_writes(app, engine, n, limit)
        finally:
            engine.dispose()
    profile = None
    if args.profile:
        # A second, profiled run: the profiler's overhead stays out of the figures above.
        profile = cProfile.Profile()
        with application(backend, work_dir) as app:
            bench_execute(app, n, limit, profile)

    http = {}
    for clients in args.http_clients:
        http[clients] = bench_http(
            backend, root / backend.name / f"http-{clients}", n, clients, limit
        )

    progress(f"{backend.name}: building a log of {args.fold_events} events")
    fold = bench_fold(backend, root / backend.name / "fold", args.fold_events, limit)
    return BackendResult(
        backend.name, backend.server_version(), execute, state_bytes, raw, http, fold,
        top_costs(profile) if profile is not None else "",
    )


# --- report ---------------------------------------------------------------------------------


def rate_cell(rate: Rate) -> str:
    return f"{rate.per_second:,.0f}{rate.note()}"


def latency_cell(rate: Rate) -> str:
    return f"{rate.p50_ms:.2f} / {rate.p99_ms:.2f}"


def report(results: list[BackendResult], args: argparse.Namespace, argv: Sequence[str]) -> str:
    rows: list[tuple[str, Callable[[BackendResult], str]]] = [
        (f"in-process writes/s ({args.commands} AddService/AddServer via execute)",
         lambda r: rate_cell(r.execute)),
        ("in-process latency p50 / p99 (ms)", lambda r: latency_cell(r.execute)),
        ("in-process writes/s, first 10% / last 10% of the run",
         lambda r: growth_cell(r.execute)),
    ]
    for clients in args.http_clients:
        rows += [
            (f"HTTP POST /services writes/s, {clients} client(s)",
             http_cell(clients, rate_cell)),
            (f"HTTP latency p50 / p99 (ms), {clients} client(s)",
             http_cell(clients, latency_cell)),
        ]
    rows += [
        ("raw INSERT rows/s (1 transaction per row, same row size, interleaved)",
         lambda r: f"{rate_cell(r.raw)} ({r.state_bytes} B)"),
        ("raw INSERT latency p50 / p99 (ms)", lambda r: latency_cell(r.raw)),
        ("**portal-es writes/s ÷ raw inserts/s** (in-process)",
         lambda r: f"**{r.execute.per_second / r.raw.per_second:.2f}**"),
    ]
    rows += [
        (f"HTTP writes/s ÷ raw inserts/s, {clients} client(s)", http_ratio_cell(clients))
        for clients in args.http_clients
    ]
    rows += [
        ("fold: events in the log (final state)",
         lambda r: f"{r.fold.events:,} ({r.fold.state_services:,} services, "
                   f"{r.fold.state_servers:,} servers)"),
        ("fold: cold StateView.catch_up() (s)", lambda r: f"{r.fold.fold_seconds:.2f}"),
        ("fold: events/s", lambda r: f"{r.fold.events_per_second:,.0f}"),
        ("raw SELECT of every row of portal_events (s)",
         lambda r: f"{r.fold.raw_read_seconds:.3f}"),
        ("**fold time ÷ raw read time**",
         lambda r: f"**{r.fold.fold_seconds / r.fold.raw_read_seconds:.1f}**"),
        ("fold again, one timed pass (s) = recorder read + decode + evolve", fold_split_cell),
        ("aggregate load after restart, whole log (first write pays it) (s)",
         lambda r: f"{r.fold.aggregate_load_seconds:.2f}"),
        ("with a snapshot at the head: cold StateView / aggregate load / first write (s)",
         lambda r: f"{r.fold.snapshot.fold_seconds:.3f} / {r.fold.snapshot.load_seconds:.3f} / "
                   f"{r.fold.snapshot.write_seconds:.3f}"),
        ("building the fold log in memory + app.save (s)",
         lambda r: f"{r.fold.build_seconds:.1f}"),
    ]
    names = [r.name for r in results]
    lines = [
        "portal-es store benchmark",
        "",
        f"command: {' '.join(shlex.quote(a) for a in argv)}",
        f"machine: nproc {os.cpu_count()}, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, eventsourcing {dist_version('eventsourcing')}, "
        f"eventsourcing-sqlalchemy {dist_version('eventsourcing-sqlalchemy')}, "
        f"SQLAlchemy {sa.__version__}, aiohttp {aiohttp.__version__}",
        "stores: " + "; ".join(f"{r.name} = {r.server}" for r in results),
        "",
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)


def http_cell(clients: int, cell: Callable[[Rate], str]) -> Callable[[BackendResult], str]:
    return lambda r: cell(r.http[clients])


def http_ratio_cell(clients: int) -> Callable[[BackendResult], str]:
    return lambda r: f"{r.http[clients].per_second / r.raw.per_second:.2f}"


def growth_cell(rate: Rate) -> str:
    lat = rate.latencies
    tenth = max(1, len(lat) // 10)
    first, last = lat[:tenth], lat[-tenth:]
    return f"{len(first) / sum(first):,.0f} / {len(last) / sum(last):,.0f}"


def fold_split_cell(r: BackendResult) -> str:
    f = r.fold.split
    return f"{f.total:.2f} = {f.read:.2f} + {f.decode:.2f} + {f.evolve:.2f}"


# --- main -----------------------------------------------------------------------------------


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def client_counts(value: str) -> list[int]:
    try:
        counts = [positive(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a list like 1,8") from None
    if not counts or max(counts) > 64:
        raise argparse.ArgumentTypeError("between 1 and 64 clients")
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--commands", type=positive, default=2000,
                        help="writes per write measurement (default 2000)")
    parser.add_argument("--fold-events", type=positive, default=100_000,
                        help="events in the log the fold reads (default 100000)")
    parser.add_argument("--http-clients", type=client_counts, default=[1, 8],
                        help="concurrent HTTP clients, comma-separated (default 1,8)")
    parser.add_argument("--time-limit", type=float, default=600.0,
                        help="seconds per phase before it stops short (default 600)")
    parser.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL (default {PG_URL})")
    parser.add_argument("--pg-schema", default="portal_es_bench",
                        help="schema for the portal tables, dropped after (default "
                             "portal_es_bench; 'public' shares the test suite's tables)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the in-process write path (cProfile) to stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv[1:])
    backends: list[Backend] = []
    if args.backend in ("sqlite", "both"):
        backends.append(SQLiteBackend())
    if args.backend in ("postgres", "both"):
        backends.append(PostgresBackend(args.pg_url, args.pg_schema))
    results = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="portal-es-bench-") as tmp:
        for backend in backends:
            try:
                results.append(run_backend(backend, Path(tmp), args))
            except Exception as e:  # report the other backends' figures all the same
                progress(f"{backend.name}: FAILED: {e!r}")
                traceback.print_exc()
                failed.append(backend.name)
            finally:
                backend.cleanup()
    for result in results:
        if result.profile:
            print(f"--- {result.name}: profile of the in-process write path ---", file=sys.stderr)
            print(result.profile, file=sys.stderr)
    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    if results:
        print(report(results, args, [python, *argv]))
    if failed:
        print(f"\nFAILED (see stderr): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
