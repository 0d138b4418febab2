"""`ProxyServer`: the HTTP/HTTPS proxy as the node sees it (start, update, health, stop).

Processes: the node's own process runs the health checker and the metrics, and starts one
worker process per core (settings.workers). The parent opens one listening SO_REUSEPORT socket
per worker and address (the kernel spreads new connections over their accept queues) and hands
each worker its own by file descriptor; the worker serves them on uvloop. Because the parent
keeps the sockets, a port given as 0 is known, and a restarted worker takes over its
predecessor's queue: connections that arrived meanwhile are served, not refused.
(A bound but not listening SO_REUSEPORT socket kept as a port reservation would not do: the
kernel sends SYNs to it and they are dropped.)

update() encodes the new configuration once and writes it to every worker's socketpair; each
worker swaps its table and certs in single assignments and acks the generation. Workers apply
the same update within a loop iteration of each other, and `apply()` waits for every ack.
A worker that dies is restarted and given the current configuration before it is counted.

With workers=0 the same data plane (`Worker`) runs in the caller's event loop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from portal_es.adapters.proxy.certs import default_cert
from portal_es.adapters.proxy.channel import encode, receive
from portal_es.adapters.proxy.health import HealthChecker
from portal_es.adapters.proxy.metrics import ProxyCollector, Totals, render
from portal_es.adapters.proxy.settings import ProxySettings
from portal_es.adapters.proxy.table import HealthKey, route_label
from portal_es.adapters.proxy.worker import Worker, access_log, listening_socket
from portal_es.domain.models import CertBundle, ErrorPages, Route

log = logging.getLogger("portal_es.proxy")

Address = tuple[str, int]
START_TIMEOUT = 20.0


class ProxyApplyError(RuntimeError):
    """A worker could not apply a configuration (it keeps serving the previous one)."""


def parse_address(value: str | Address | None) -> Address | None:
    if value is None or isinstance(value, tuple):
        return value
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class ProxyServer:
    def __init__(self, http_addr: str | Address | None, tls_addr: str | Address | None,
                 default_cert_dir: str | Path, settings: ProxySettings | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings or ProxySettings()
        self.http_addr = parse_address(http_addr)
        self.tls_addr = parse_address(tls_addr)
        self.cert_dir = Path(default_cert_dir)
        self.generation = 0
        self._config: tuple[int, list[Route], list[CertBundle], ErrorPages] = (
            0, [], [], ErrorPages())
        self._encoded_config = encode(("config", *self._config))
        self.health_checker = HealthChecker(self.settings.health_interval, self._health_changed)
        self.totals = Totals()
        self.registry = registry or CollectorRegistry()
        self._collector = ProxyCollector(self.totals, self.health_checker.rows,
                                         before_collect=self._collect_local)
        self._listeners: list[socket.socket] = []
        self._local: Worker | None = None
        self._workers: list[_WorkerProcess] = []
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        cert_files = await asyncio.to_thread(default_cert, self.cert_dir)
        count = self.settings.worker_count()
        if count == 0:
            sink = access_log.info if access_log.isEnabledFor(logging.INFO) else None
            self._local = Worker(self.settings, cert_files, access_sink=sink)
            http = listening_socket(*self.http_addr, False) if self.http_addr else None
            tls = listening_socket(*self.tls_addr, False) if self.tls_addr else None
            self.http_addr = http.getsockname()[:2] if http else None
            self.tls_addr = tls.getsockname()[:2] if tls else None
            self._local.configure(*self._config[1:], self._config[0])  # update() before start()
            await self._local.serve(http, tls)
        else:
            listeners: list[list[socket.socket | None]] = [[] for _ in range(count)]
            try:
                for which in ("http_addr", "tls_addr"):
                    address: Address | None = getattr(self, which)
                    for sockets in listeners:
                        sock = listening_socket(*address, True) if address else None
                        if sock is not None:
                            address = sock.getsockname()[:2]  # port 0: the others follow
                            self._listeners.append(sock)
                        sockets.append(sock)
                    setattr(self, which, address)
            except OSError:
                await self.stop()
                raise
            self._workers = [_WorkerProcess(self, i, cert_files, *listeners[i])
                             for i in range(count)]
            try:
                await asyncio.gather(*(w.start() for w in self._workers))
            except BaseException:
                await self.stop()
                raise
        await self.health_checker.start()
        self.registry.register(self._collector)
        self._started = True
        log.info("proxy: http on %s, https on %s, %s", _show(self.http_addr),
                 _show(self.tls_addr), f"{count} worker processes" if count else "in process")

    async def stop(self) -> None:
        if self._started:
            with contextlib.suppress(KeyError):
                self.registry.unregister(self._collector)
        self._started = False
        await self.health_checker.stop()
        if self._local is not None:
            await self._local.close(self.settings.stop_grace)
            self._local = None
        await asyncio.gather(*(w.stop(self.settings.stop_grace) for w in self._workers))
        self._workers = []
        for sock in self._listeners:
            sock.close()
        self._listeners = []

    # --- configuration -------------------------------------------------------------------------

    def update(self, routes: Sequence[Route], certs: Sequence[CertBundle],
               pages: ErrorPages) -> None:
        """Swap routes, certs and error pages everywhere; returns before workers have applied."""
        self.generation += 1
        self._config = (self.generation, list(routes), list(certs), pages)
        self.health_checker.update(routes)
        if self._local is not None:
            self._local.configure(*self._config[1:], self.generation)
            return
        self._encoded_config = encode(("config", *self._config))
        for worker in self._workers:
            worker.send(self._encoded_config)

    async def apply(self, routes: Sequence[Route], certs: Sequence[CertBundle],
                    pages: ErrorPages, timeout: float = 10.0) -> None:
        """update(), then wait until every worker serves the new configuration."""
        self.update(routes, certs, pages)
        await self.wait_applied(timeout)

    async def wait_applied(self, timeout: float = 10.0) -> None:
        """Until every worker serves the last update(); ProxyApplyError if one refused it."""
        generation = self.generation
        await asyncio.wait_for(
            asyncio.gather(*(w.applied(generation) for w in self._workers)), timeout)

    def _health_changed(self, unhealthy: frozenset[HealthKey]) -> None:
        if self._local is not None:
            self._local.set_unhealthy(unhealthy)
            return
        message = encode(("health", unhealthy))
        for worker in self._workers:
            worker.send(message)

    # --- observation ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Node-local health of every route target (for /status and GET /routes/health)."""
        routes = []
        state = self.health_checker.state
        for route in self._config[1]:
            targets = []
            for target in route.targets:
                s = state.get((route.key, target))
                targets.append({
                    "target": target,
                    "healthy": s.healthy if s else True,
                    "checked": bool(route.endpoint) and not route.page,
                    "checks": s.checks if s else 0,
                    "last_check": s.last_check if s else None,
                    "last_error": s.last_error if s else "",
                })
            routes.append({"subdomain": route.subdomain, "domain": route.domain,
                           "path": route.path, "route": route_label(route),
                           "targets": targets})
        return {"generation": self.generation, "workers": self.worker_pids(),
                "routes": routes}

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid]

    def metrics(self) -> bytes:
        """Prometheus text exposition of this proxy's registry (the API serves it at /metrics)."""
        return render(self.registry)

    def _collect_local(self) -> None:
        if self._local is not None:
            self.totals.add(self._local.stats.take())


def _show(address: Address | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "off"


class _WorkerProcess:
    """The parent's handle on one worker process and its socketpair."""

    def __init__(self, server: ProxyServer, index: int, cert_files: tuple[Path, Path],
                 http: socket.socket | None, tls: socket.socket | None) -> None:
        self.server = server
        self.index = index
        self.cert_files = cert_files
        self.listeners = (http, tls)
        self.pid = 0
        self.generation = 0
        self.failed: tuple[int, str] | None = None  # the last generation it refused, and why
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._acked = asyncio.Condition()
        self._reader_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        # The child must import this same package, wherever it was imported from here.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        fds = [s.fileno() if s is not None else -1 for s in self.listeners]
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "portal_es.adapters.proxy.worker_main",
                str(child_end.fileno()),
                pass_fds=(child_end.fileno(), *(fd for fd in fds if fd >= 0)), env=env)
        finally:
            child_end.close()
        reader, writer = await asyncio.open_connection(sock=parent_end)
        self.writer = writer
        server = self.server
        # Lines nobody would see are not formatted and shipped in the first place.
        settings = dataclasses.replace(server.settings, access_log=server.settings.access_log
                                       and access_log.isEnabledFor(logging.INFO))
        writer.write(encode(("init", settings, fds[0], fds[1], self.cert_files,
                             logging.getLogger().getEffectiveLevel())))
        writer.write(server._encoded_config)
        unhealthy = server.health_checker.unhealthy()
        if unhealthy:
            writer.write(encode(("health", unhealthy)))
        try:
            message = await asyncio.wait_for(receive(reader), START_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError) as e:
            self._kill()
            raise RuntimeError(f"proxy worker {self.index} did not start") from e
        if message[0] != "ready":
            self._kill()
            raise OSError(f"proxy worker {self.index}: {message[1]}")
        self.pid = message[1]
        self._reader_task = asyncio.create_task(self._read(reader), name=f"proxy-w{self.index}")
        await self.applied(server._config[0])

    def send(self, message: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(message)

    async def applied(self, generation: int) -> None:
        async with self._acked:
            await self._acked.wait_for(lambda: self.generation >= generation or (
                self.failed is not None and self.failed[0] >= generation))
        if self.generation < generation and self.failed is not None:
            raise ProxyApplyError(f"proxy worker {self.pid}: {self.failed[1]}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        server = self.server
        try:
            while True:
                message = await receive(reader)
                kind = message[0]
                if kind == "ack":
                    async with self._acked:
                        self.generation = message[1]
                        self._acked.notify_all()
                elif kind == "nack":
                    async with self._acked:
                        self.failed = (message[1], message[2])
                        self._acked.notify_all()
                elif kind == "stats":
                    server.totals.add(message[1])
                elif kind == "logs":
                    for name, level, text in message[1]:
                        if name == access_log.name:
                            access_log.log(level, "%s", text)
                        else:
                            logging.getLogger(name).log(level, "[worker %d] %s", self.pid, text)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not self._stopping:
            log.error("proxy: worker %d (pid %d) exited; restarting it", self.index, self.pid)
            asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        delay = 0.1
        while not self._stopping:
            try:
                self.generation = 0
                await self.start()
                return
            except (OSError, RuntimeError) as e:
                log.error("proxy: worker %d failed to restart: %s", self.index, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self.send(encode(("stop", grace)))
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), grace + 5)
            except TimeoutError:
                self._kill()
                await self.process.wait()
        if self._reader_task is not None:
            # Let it read what the worker sent last (final metrics, logs), then give up.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader_task, 2)
        if self.writer is not None:
            self.writer.close()

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
