"""The upstream side: keep-alive connections to targets, pooled per target and worker.

A `Pool` lends an idle connection (most recently used first: its TCP state is warm), opens a
new one while under the per-target limit, else queues the exchange until a connection is
given back or closes. Responses are parsed with llhttp (httptools) and streamed to the client
as they arrive. A connection goes back to the pool only after a complete response to a
complete request on a keep-alive connection; anything else closes it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import deque
from typing import TYPE_CHECKING

import httptools

from portal_es.adapters.proxy.exchange import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    PAUSE_UPSTREAM_FULL,
    UNTIL_CLOSE,
    Exchange,
)
from portal_es.adapters.proxy.http1 import HOP_BY_HOP, connection_tokens
from portal_es.adapters.proxy.table import Target

if TYPE_CHECKING:
    from portal_es.adapters.proxy.worker import Worker

log = logging.getLogger("portal_es.proxy")


class _HeadDone(Exception):
    """Stops llhttp after the head of a response to HEAD (it would wait for the body)."""


# Response header lines the proxy removes (hop-by-hop) or must see (framing), matched in the
# raw head by the regex engine instead of a Python callback per header.
_HOP_LINE = re.compile(
    rb"\r\n(" + b"|".join(re.escape(n) for n in sorted(HOP_BY_HOP)) + rb")[ \t]*:[ \t]*([^\r\n]*)",
    re.IGNORECASE)
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:", re.IGNORECASE)
_HEAD_END = b"\r\n\r\n"
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})


class UpstreamConnection(asyncio.Protocol):
    """One connection to a target. Response heads are not split into headers in Python: llhttp
    checks and frames the message, the raw head is passed on with hop-by-hop lines cut out."""

    __slots__ = (
        "buffer", "closed", "exchange", "idle_since", "idle_ticks", "in_head", "parser",
        "partial", "pool", "reading_paused", "scan", "status", "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.status = 0
        self.closed = False
        self.reading_paused = False
        self.idle_ticks = 0  # timeout sweeps without a byte from the upstream
        self.idle_since = 0.0
        self.in_head = False
        self.buffer = b""    # the bytes being parsed, with a head left incomplete before them
        self.partial = b""   # the start of a head that the last read did not complete
        self.scan = 0        # where in `buffer` the next head starts

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.pool.worker.upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.worker.upstreams.discard(self)
        self.pool.lost(self)
        exchange = self.exchange
        if exchange is not None:
            if exchange.upgrade and exchange.response_started:
                exchange.upstream = None
                self.exchange = None
                exchange.client.flush()
                exchange.finish()
            else:
                exchange.upstream_lost()
                exchange.client.flush()

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: this connection's framing is lost
            return
        if exchange.upgrade:
            self._tunnel(exchange, data)
            return
        if self.partial:
            self.buffer = self.partial + data
            self.partial = b""
        else:
            self.buffer = data
        self.scan = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if isinstance(e.__context__, _HeadDone):
                self.parser = httptools.HttpResponseParser(self)
                self.in_head = False
                exchange.response_complete()
            else:
                log.warning("bad response from %s: %s", self.pool.name, e)
                self.close()  # connection_lost -> 502, or a broken response to the client
                return
        if self.in_head:
            self.partial = self.buffer[self.scan:]
        self.buffer = b""
        exchange.client.flush()

    def eof_received(self) -> bool | None:
        return False  # close; connection_lost completes a close-delimited body

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume(PAUSE_UPSTREAM_FULL)

    # --- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        exchange = self.exchange
        if exchange is None:  # pragma: no cover - data without an exchange closes first
            return
        status = self.status = self.parser.get_status_code()
        buffer = self.buffer
        end = buffer.find(_HEAD_END, self.scan)
        head = buffer[self.scan:end + 2]  # status line and header lines, each with its CRLF
        self.scan = end + 4
        framing = LENGTH if _CONTENT_LENGTH.search(head) else UNTIL_CLOSE
        hop = _HOP_LINE.findall(head)
        if hop:
            drop: set[bytes] = set()
            for name, value in hop:
                name = name.lower()
                if name == b"transfer-encoding":
                    framing = CHUNKED
                elif name == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                    drop |= connection_tokens([value]) - _PLAIN_CONNECTION
            head = _HOP_LINE.sub(b"", head)
            if drop:  # headers the Connection header lists are hop-by-hop too (rare)
                head = re.sub(rb"\r\n(" + b"|".join(re.escape(d) for d in drop)
                              + rb")[ \t]*:[^\r\n]*", b"", head, flags=re.IGNORECASE)
        if not head.startswith(b"HTTP/1.1 "):
            head = b"HTTP/1.1" + head[8:]  # the client hears HTTP/1.1 whatever the upstream spoke
        if status < 200 or status == 204 or status == 304 or exchange.is_head:
            framing = NO_BODY
        exchange.response_head(status, head, framing, self.parser.should_keep_alive())
        if exchange.is_head and status >= 200:
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None and self.status >= 200:
            exchange.response_complete()

    # --- used by exchanges and the pool --------------------------------------------------------

    def _tunnel(self, exchange: Exchange, data: bytes) -> None:
        if not exchange.response_started:
            exchange.response_started = True
            try:  # "HTTP/1.1 101 ..." : the status, for the log and metrics only
                exchange.status = int(data[9:12])
            except ValueError:
                exchange.status = 502
        exchange.sent += len(data)
        client = exchange.client
        if client.transport is not None:
            client.transport.write(data)

    def bind(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.idle_ticks = 0
        if exchange.client.writing_paused:
            self.pause_reading()

    def unbind(self) -> None:
        self.exchange = None

    def write(self, data: bytes) -> None:
        self.idle_ticks = 0
        self.transport.write(data)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def timed_out(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream = self
            exchange.upstream_lost(timeout=True)
            exchange.client.flush()
        self.close()


class Pool:
    """Connections of one worker to one target (scheme, host, port)."""

    __slots__ = ("idle", "limit", "name", "retired", "ssl", "target", "total", "waiters",
                 "worker")

    def __init__(self, worker: Worker, target: Target) -> None:
        self.worker = worker
        self.target = target
        self.name = f"{'https' if target.tls else 'http'}://{target.host}:{target.port}"
        self.limit = worker.settings.max_connections_per_target
        self.idle: list[UpstreamConnection] = []
        self.waiters: deque[Exchange] = deque()
        self.total = 0   # open or opening
        self.retired = False
        self.ssl: ssl.SSLContext | None = worker.upstream_tls if target.tls else None

    def acquire(self, exchange: Exchange, fresh: bool = False) -> UpstreamConnection | None:
        """An idle connection now, or None and the exchange is attached later (or failed)."""
        if not fresh:
            idle = self.idle
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
        if self.total < self.limit:
            self.total += 1
            self.worker.loop.create_task(self._connect(exchange))
        else:
            exchange.waiting_since = self.worker.loop.time()
            self.waiters.append(exchange)
        return None

    async def _connect(self, exchange: Exchange) -> None:
        loop = self.worker.loop
        target = self.target
        made: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            made.append(UpstreamConnection(self))
            return made[0]

        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    factory, target.host, target.port, ssl=self.ssl,
                    server_hostname=target.host if self.ssl else None),
                self.worker.settings.connect_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            # The slot is freed here unless the connection was made: then connection_lost does.
            if not (made and made[0].transport is not None):
                self.total -= 1
            log.warning("proxy: cannot connect to %s: %s", self.name, e or type(e).__name__)
            exchange.connect_failed()
            exchange.client.flush()
            self._open_for_waiters()
            return
        if conn.closed:  # closed by the target right after accepting
            exchange.connect_failed()
            exchange.client.flush()
            return
        exchange.attach(conn, reused=False)

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        conn.resume_reading()
        while self.waiters:
            exchange = self.waiters.popleft()
            if not (exchange.cancelled or exchange.response_done):
                exchange.attach(conn, reused=True)
                return
        if self.retired:
            conn.close()
            return
        conn.idle_since = self.worker.loop.time()
        self.idle.append(conn)

    def lost(self, conn: UpstreamConnection) -> None:
        self.total -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._open_for_waiters()

    def _open_for_waiters(self) -> None:
        while self.waiters and self.total < self.limit:
            exchange = self.waiters.popleft()
            if exchange.cancelled or exchange.response_done:
                continue
            self.total += 1
            self.worker.loop.create_task(self._connect(exchange))

    def sweep(self, now: float) -> None:
        """Close connections idle too long, fail exchanges that waited too long for one."""
        settings = self.worker.settings
        if self.idle:
            deadline = now - settings.pool_idle_timeout
            for conn in [c for c in self.idle if c.idle_since < deadline]:
                conn.close()
        if self.waiters:
            deadline = now - settings.connect_timeout
            while self.waiters and self.waiters[0].waiting_since < deadline:
                exchange = self.waiters.popleft()
                exchange.connect_failed(busy=True)
                exchange.client.flush()

    def retire(self) -> None:
        """No route uses this target any more: close idle connections, busy ones on release."""
        self.retired = True
        for conn in list(self.idle):
            conn.close()

    @property
    def empty(self) -> bool:
        return self.total == 0 and not self.waiters
