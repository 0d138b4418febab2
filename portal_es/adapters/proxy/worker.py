"""The data plane of one process: listeners, the current table and certs, upstream pools.

Used in two ways: inside the node's own event loop (`workers=0`), or as the body of a worker
process (`worker_main`, started by `ProxyServer`), which binds
its own SO_REUSEPORT listeners, runs uvloop, and takes orders from the parent over the
socketpair FD: "config" (swap table + certs, then ack), "health" (unhealthy targets), "stop".
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from portal_es.adapters.proxy import accesslog
from portal_es.adapters.proxy.certs import SniListener
from portal_es.adapters.proxy.channel import encode, receive
from portal_es.adapters.proxy.client import ClientConnection
from portal_es.adapters.proxy.exchange import Exchange
from portal_es.adapters.proxy.metrics import WorkerStats
from portal_es.adapters.proxy.settings import ProxySettings
from portal_es.adapters.proxy.table import HealthKey, RouteTable, Target
from portal_es.adapters.proxy.upstream import Pool, UpstreamConnection
from portal_es.domain.models import CertBundle, ErrorPages, Route

log = logging.getLogger("portal_es.proxy")
access_log = logging.getLogger(accesslog.ACCESS_LOGGER)

BACKLOG = 1024
TICK = 0.5  # seconds between timeout sweeps


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def upstream_tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Worker:
    def __init__(self, settings: ProxySettings, default_cert: tuple[Path, Path],
                 access_sink: Callable[[str], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.settings = settings
        self.table = RouteTable((), ErrorPages())
        self.health: dict[HealthKey, bool] = {}
        self.sni = SniListener(*default_cert)
        self.upstream_tls = upstream_tls_context(settings.upstream_verify_tls)
        self.pools: dict[tuple[bool, str, int], Pool] = {}
        self.clients: set[ClientConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()
        self.stats = WorkerStats()
        self.clock = accesslog.Clock()
        self.access_sink = access_sink if settings.access_log else None
        self.servers: list[asyncio.Server] = []
        self._ticker: asyncio.Task[None] | None = None

    # --- configuration -------------------------------------------------------------------------

    def configure(self, routes: Sequence[Route], certs: Sequence[CertBundle],
                  pages: ErrorPages, generation: int) -> None:
        """Swap in a new configuration: each of table and certs in one assignment."""
        table = RouteTable(routes, pages, generation, self.health)
        self.sni.update(certs)
        self.table = table
        keep = table.pool_keys()
        for key, pool in list(self.pools.items()):
            if key not in keep:
                pool.retire()
                if pool.empty:
                    del self.pools[key]

    def set_unhealthy(self, unhealthy: frozenset[HealthKey]) -> None:
        self.health = dict.fromkeys(unhealthy, False)
        self.table.set_health(self.health)

    def pool(self, target: Target) -> Pool:
        key = target.pool_key
        pool = self.pools.get(key)
        if pool is None or pool.retired:
            pool = self.pools[key] = Pool(self, target)
        return pool

    # --- serving -------------------------------------------------------------------------------

    async def serve(self, http_sock: socket.socket | None, tls_sock: socket.socket | None) -> None:
        if http_sock is not None:
            self.servers.append(await self.loop.create_server(
                lambda: ClientConnection(self, tls=False), sock=http_sock, backlog=BACKLOG))
        if tls_sock is not None:
            self.servers.append(await self.loop.create_server(
                lambda: ClientConnection(self, tls=True), sock=tls_sock, backlog=BACKLOG,
                ssl=self.sni.context, ssl_handshake_timeout=self.settings.connect_timeout * 2))
        self._ticker = self.loop.create_task(self._tick())

    async def close(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, then close."""
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            busy = False
            for client in list(self.clients):
                if client.active is None and client.tunnel is None:
                    client.close()
                else:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.abort()
        for conn in list(self.upstreams):
            conn.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    async def _tick(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(TICK)
            try:
                self.sweep(self.loop.time(), settings)
            except Exception:  # a bug here must not stop timeouts for good
                log.exception("proxy: timeout sweep failed")

    def sweep(self, now: float, settings: ProxySettings) -> None:
        # Timeouts count sweeps: the hot path only resets a counter, it reads no clock.
        idle_limit = settings.idle_timeout / TICK
        for client in list(self.clients):
            if client.active is None and client.tunnel is None:
                client.idle_ticks += 1
                if client.idle_ticks > idle_limit:
                    client.close()
        read_limit = settings.read_timeout / TICK
        tunnel_limit = settings.tunnel_timeout / TICK
        for conn in [c for c in self.upstreams if c.exchange is not None]:
            exchange = conn.exchange
            assert exchange is not None
            # Paused reading is the client being slow to take the response, not the upstream.
            if conn.reading_paused or exchange.client.paused:
                conn.idle_ticks = 0
                continue
            conn.idle_ticks += 1
            if conn.idle_ticks > (tunnel_limit if exchange.upgrade else read_limit):
                log.warning("proxy: %s did not answer within %.0f s", conn.pool.name,
                            settings.read_timeout)
                conn.timed_out()
        for key, pool in list(self.pools.items()):
            pool.sweep(now)
            if pool.retired and pool.empty:
                del self.pools[key]

    # --- accounting ----------------------------------------------------------------------------

    def record(self, exchange: Exchange, peer: str) -> None:
        done = time.perf_counter()
        entry = exchange.entry
        route = entry.label if entry is not None else ""
        upstream = done - exchange.t_upstream if exchange.t_upstream else None
        self.stats.observe(route, exchange.status, upstream)
        sink = self.access_sink
        if sink is not None:
            target = exchange.target
            sink(accesslog.line(
                self.clock, peer, exchange.method, exchange.url, exchange.http10,
                exchange.status, exchange.sent, exchange.referer, exchange.user_agent,
                exchange.host, route, target.url if target is not None else "", upstream,
                done - exchange.t_start))


# --- the worker process ---------------------------------------------------------------------


class _Outbox:
    """Log records and access lines for the parent, sent in batches (not one write each)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.records: list[tuple[str, int, str]] = []

    def add(self, name: str, level: int, message: str) -> None:
        self.records.append((name, level, message))

    def access(self, line: str) -> None:
        self.records.append((accesslog.ACCESS_LOGGER, logging.INFO, line))

    def flush(self) -> None:
        if self.records and not self.writer.is_closing():
            self.writer.write(encode(("logs", self.records)))
            self.records = []


class _ToParent(logging.Handler):
    def __init__(self, outbox: _Outbox) -> None:
        super().__init__()
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.outbox.add(record.name, record.levelno, message)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


async def _run(fd: int) -> None:
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=channel)
    kind, settings, http_fd, tls_fd, cert_files, log_level = await receive(reader)
    assert kind == "init"
    outbox = _Outbox(writer)
    root = logging.getLogger()
    root.handlers[:] = [_ToParent(outbox)]
    root.setLevel(log_level)
    worker = Worker(settings, cert_files, access_sink=outbox.access)
    try:
        # Listening sockets opened by the parent (SO_REUSEPORT, one per worker), inherited.
        http_sock = socket.socket(fileno=http_fd) if http_fd >= 0 else None
        tls_sock = socket.socket(fileno=tls_fd) if tls_fd >= 0 else None
        await worker.serve(http_sock, tls_sock)
    except OSError as e:
        writer.write(encode(("failed", str(e))))
        await writer.drain()
        return
    # Everything loaded so far lives as long as the process: keep it out of GC passes.
    gc.freeze()
    writer.write(encode(("ready", os.getpid())))
    # The parent owns signals (Ctrl-C in a terminal reaches the whole process group); a
    # SIGTERM sent to the group drains this worker as a "stop" from the parent would.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)

    async def report() -> None:
        ticks = 0
        while True:
            await asyncio.sleep(0.1)
            ticks += 1
            outbox.flush()
            if ticks % 10 == 0:
                requests, latency = worker.stats.take()
                if requests:
                    writer.write(encode(("stats", (requests, latency))))

    reporter = loop.create_task(report())
    grace = settings.stop_grace
    terminate = loop.create_task(terminated.wait())
    try:
        while True:
            next_message = loop.create_task(receive(reader))
            await asyncio.wait((next_message, terminate), return_when=asyncio.FIRST_COMPLETED)
            if not next_message.done():
                next_message.cancel()
                break
            message = next_message.result()
            kind = message[0]
            if kind == "config":
                _, generation, routes, certs, pages = message
                try:
                    worker.configure(routes, certs, pages, generation)
                except Exception as e:  # keeps serving the previous table; the parent is told
                    log.exception("proxy: configuration %d not applied", generation)
                    writer.write(encode(("nack", generation, f"{type(e).__name__}: {e}")))
                else:
                    writer.write(encode(("ack", generation)))
            elif kind == "health":
                worker.set_unhealthy(message[1])
            elif kind == "stop":
                grace = message[1]
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        grace = 0.0  # the parent is gone: nobody to hand metrics or logs to
    terminate.cancel()
    await worker.close(grace)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    with contextlib.suppress(Exception):
        writer.write(encode(("stats", worker.stats.take())))
        outbox.flush()
        await writer.drain()
        writer.close()


def main(argv: list[str]) -> None:
    import uvloop

    uvloop.run(_run(int(argv[1])))

