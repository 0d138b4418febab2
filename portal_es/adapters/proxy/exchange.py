"""One request/response cycle through the proxy, between a client and an upstream connection.

An `Exchange` is created when a request's headers are complete. It either answers locally (a
route's page, an error page) or borrows an upstream connection from the target's pool, streams
the request body up and the response down, and gives the connection back when both messages
are complete. Bodies are never held: each chunk is written on as it is parsed, and a side whose
write buffer fills pauses reading on the other side (transport flow control), so memory per
exchange stays at a few socket buffers whatever the body size.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from portal_es.adapters.proxy.http1 import CRLF, LAST_CHUNK, chunk
from portal_es.adapters.proxy.table import Page, RouteEntry, Target

if TYPE_CHECKING:
    from portal_es.adapters.proxy.client import ClientConnection
    from portal_es.adapters.proxy.upstream import Pool, UpstreamConnection

BAD_GATEWAY = Page.make(502, "Bad Gateway", "Bad Gateway\n")
GATEWAY_TIMEOUT = Page.make(504, "Gateway Timeout", "Gateway Timeout\n")
UPSTREAM_BUSY = Page.make(503, "Service Unavailable", "Upstream busy\n")

# Reasons a client connection stops reading (a bit mask: several may hold at once).
PAUSE_UPSTREAM_FULL = 1   # the upstream's write buffer is full
PAUSE_BUFFERED = 2        # body bytes are waiting for an upstream connection / their turn

MAX_BUFFERED = 256 * 1024

# How the body is framed on a side.
LENGTH, CHUNKED, UNTIL_CLOSE, NO_BODY = 0, 1, 2, 3


class Exchange:
    __slots__ = (
        "cancelled",
        "client",
        "client_close",
        "client_framing",
        "entry",
        "finished",
        "has_body",
        "head",
        "host",
        "http10",
        "is_head",
        "keep_alive",
        "local",
        "method",
        "out",
        "out_size",
        "pool",
        "referer",
        "request_chunked",
        "request_done",
        "response_done",
        "response_started",
        "retried",
        "reused",
        "sent",
        "status",
        "t_start",
        "t_upstream",
        "target",
        "upgrade",
        "upstream",
        "upstream_framing",
        "upstream_keep",
        "url",
        "user_agent",
        "waiting_since",
    )

    def __init__(self, client: ClientConnection, method: bytes, url: bytes, host: str,
                 keep_alive: bool, http10: bool) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.host = host
        self.keep_alive = keep_alive
        self.http10 = http10
        self.is_head = method == b"HEAD"
        self.upgrade = False
        self.entry: RouteEntry | None = None
        self.target: Target | None = None
        self.local: Page | None = None
        self.pool: Pool | None = None
        self.head = b""
        self.has_body = False
        self.request_chunked = False
        self.out: list[bytes] = []
        self.out_size = 0
        self.upstream: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.upstream_framing = NO_BODY
        self.upstream_keep = False
        self.client_framing = LENGTH
        self.client_close = not keep_alive
        self.cancelled = False
        self.finished = False
        self.status = 0
        self.sent = 0
        self.t_start = time.perf_counter()
        self.t_upstream = 0.0
        self.waiting_since = 0.0
        self.referer = b""
        self.user_agent = b""

    # --- request side (driven by the client connection) -----------------------------------

    def start(self) -> None:
        """This exchange's turn on its client connection: answer, or get an upstream."""
        if self.local is not None:
            self.answer(self.local)
            return
        assert self.pool is not None
        self.t_upstream = time.perf_counter()
        conn = self.pool.acquire(self, fresh=self.upgrade)
        if conn is not None:
            self.attach(conn, reused=True)

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        """The pool hands over a connection (at once, or when one is free or connected)."""
        if self.cancelled or self.response_done:
            conn.pool.release(conn) if not self.upgrade else conn.close()
            return
        self.upstream = conn
        self.reused = reused
        conn.bind(self)
        self.flush()
        if self.client.paused:
            self.client.resume(PAUSE_BUFFERED)

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)
        if self.upstream is None and self.out_size > MAX_BUFFERED:
            self.client.pause(PAUSE_BUFFERED)

    def flush(self) -> None:
        """Write what the last read produced in one call (one syscall per read, not per chunk)."""
        conn = self.upstream
        if conn is not None and self.out:
            out = self.out
            conn.write(out[0] if len(out) == 1 else b"".join(out))
            self.out = []
            self.out_size = 0

    def body(self, data: bytes) -> None:
        if self.local is not None or self.response_done:
            return  # answered already: the rest of the body is read and dropped
        self.send(chunk(data) if self.request_chunked else data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.request_chunked and self.local is None and not self.response_done:
            self.send(LAST_CHUNK)
        if self.response_done:
            self.finish()

    # --- response side (driven by the upstream connection) --------------------------------

    def response_head(self, status: int, head: bytes, framing: int,
                      upstream_keep: bool) -> None:
        """`head`: the status line and header lines (hop-by-hop ones removed), no final CRLF."""
        if status < 200:
            # Interim (100 Continue, 103 Early Hints): passed on as is, the final one follows.
            self.client.queue_write(head + CRLF)
            return
        self.status = status
        self.response_started = True
        self.upstream_framing = framing
        self.upstream_keep = upstream_keep
        if framing in (LENGTH, NO_BODY):
            client_framing = framing
        elif self.http10:
            client_framing = UNTIL_CLOSE  # an HTTP/1.0 client knows no chunks
            self.client_close = True
        else:
            client_framing = CHUNKED
        self.client_framing = client_framing
        if client_framing == CHUNKED:
            head += b"Transfer-Encoding: chunked\r\n"
        if self.client_close:
            head += b"Connection: close\r\n\r\n"
        elif self.http10:
            head += b"Connection: keep-alive\r\n\r\n"
        else:
            head += CRLF
        self.client.queue_write(head)

    def response_body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.client_framing == CHUNKED:
            self.client.queue_write(chunk(data))
        elif self.client_framing != NO_BODY:
            self.client.queue_write(data)

    def response_complete(self) -> None:
        if self.client_framing == CHUNKED:
            self.client.queue_write(LAST_CHUNK)
        self.response_done = True
        if not self.request_done:
            # Answered before the request was all sent (e.g. 413): the rest of the body can
            # no longer go anywhere useful, and this connection's framing is lost upstream.
            self.client_close = True
            self.upstream_keep = False
        self.finish()

    def upstream_lost(self, timeout: bool = False) -> None:
        """The upstream connection closed or timed out before this exchange was complete."""
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.unbind()
        if self.response_done or self.cancelled:
            return
        if self.response_started:
            if self.upstream_framing == UNTIL_CLOSE and not timeout:
                self.upstream_keep = False
                self.response_complete()  # a close-delimited body ends with the close
            else:
                self.client.abort()  # half a response: the client must see it broken
            return
        if self.reused and not self.retried and not self.has_body and self.pool is not None:
            # A kept-alive connection the upstream had just closed: send once more, fresh.
            self.retried = True
            self.out = [self.head]
            self.out_size = len(self.head)
            conn = self.pool.acquire(self, fresh=True)
            if conn is not None:  # pragma: no cover - fresh=True never returns one at once
                self.attach(conn, reused=False)
            return
        self.answer(GATEWAY_TIMEOUT if timeout else BAD_GATEWAY)

    def connect_failed(self, busy: bool = False) -> None:
        if not (self.cancelled or self.response_done or self.response_started):
            self.answer(UPSTREAM_BUSY if busy else BAD_GATEWAY)

    # --- both ------------------------------------------------------------------------------

    def answer(self, page: Page) -> None:
        """Answer from the proxy itself (route page or error); no upstream takes part."""
        self.status = page.status
        self.response_started = self.response_done = True
        self.upstream_keep = False
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.unbind()
            conn.close()
        # A body not yet read is dropped as it comes, unless the client may be waiting for a
        # 100 Continue that will never come: then closing is the only way to end the request.
        close = self.client_close or (self.has_body and not self.request_done)
        self.client_close = close
        if close:
            trailer = b"Connection: close\r\n\r\n"
        elif self.http10:
            trailer = b"Connection: keep-alive\r\n\r\n"
        else:
            trailer = CRLF
        body = b"" if self.is_head else page.body
        self.sent = len(body)
        self.client.queue_write(page.head + trailer + body)
        self.client.flush()
        if self.request_done or close:
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.unbind()
            if self.upstream_keep and self.request_done and not self.upgrade:
                conn.pool.release(conn)
            else:
                conn.close()
        self.client.exchange_done(self)

    def cancel(self) -> None:
        """The client went away: drop the upstream side (its framing is lost)."""
        self.cancelled = True
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.unbind()
            conn.close()
