"""The client side of the proxy: one asyncio Protocol per accepted connection (HTTP or TLS).

Requests are parsed with llhttp (httptools) as bytes arrive. When a request's headers are
complete it is routed on the table current at that moment and becomes an `Exchange`. Requests
pipelined behind a running one wait in order (their bodies buffered up to a bound, then reading
pauses). An Upgrade request (WebSocket) turns the connection into a byte pipe to its upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from portal_es.adapters.proxy.exchange import PAUSE_BUFFERED, Exchange
from portal_es.adapters.proxy.http1 import HOP_BY_HOP, REPLACED, connection_tokens, simple_response

if TYPE_CHECKING:
    from portal_es.adapters.proxy.worker import Worker

log = logging.getLogger("portal_es.proxy")

_BAD_REQUEST = simple_response(400, b"Bad Request\n")
_TOO_LARGE = simple_response(431, b"Request Header Fields Too Large\n")
_NOT_ALLOWED = simple_response(405, b"Method Not Allowed\n")
_INTERNAL_ERROR = simple_response(500, b"Internal Server Error\n")

# Request headers the proxy reads or drops, by lower-cased name.
(_HOST, _CONTENT_LENGTH, _USER_AGENT, _REFERER, _FORWARDED_FOR, _CONNECTION,
 _TRANSFER_ENCODING, _UPGRADE, _DROPPED) = range(9)
_KEPT = (_HOST, _CONTENT_LENGTH, _USER_AGENT, _REFERER)
_SPECIAL = {
    b"host": _HOST, b"content-length": _CONTENT_LENGTH, b"user-agent": _USER_AGENT,
    b"referer": _REFERER, b"x-forwarded-for": _FORWARDED_FOR, b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING, b"upgrade": _UPGRADE,
    **{name: _DROPPED for name in HOP_BY_HOP | REPLACED
       if name not in (b"x-forwarded-for", b"connection", b"transfer-encoding", b"upgrade")},
}


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "active", "closing", "eof", "head_size", "headers", "idle_ticks", "in_head", "out",
        "parser", "parsing", "paused", "peer", "peer_bytes", "pending_head", "queue", "scheme",
        "transport", "tunnel", "url", "worker", "writing_paused",
    )

    def __init__(self, worker: Worker, tls: bool) -> None:
        self.worker = worker
        self.scheme = b"https" if tls else b"http"
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.peer_bytes = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.head_size = 0     # bytes of the header lines parsed (exact; checked when complete)
        self.pending_head = 0  # bytes read while a head stays incomplete (an endless head)
        self.eof = False
        self.parsing: Exchange | None = None   # the request whose body is being read
        self.active: Exchange | None = None    # the request whose response is being written
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.tunnel: Exchange | None = None
        self.out: list[bytes] = []
        self.paused = 0
        self.writing_paused = False
        self.closing = False
        self.idle_ticks = 0  # timeout sweeps since the client last sent anything

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.peer_bytes = self.peer.encode()
        self.worker.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.worker.clients.discard(self)
        if self.tunnel is not None and self.tunnel.response_started:
            self.worker.record(self.tunnel, self.peer)  # a WebSocket the client ended
        for exchange in (self.active, self.parsing, self.tunnel, *self.queue):
            if exchange is not None:
                exchange.cancel()
        self.active = self.parsing = self.tunnel = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.send(data)
            tunnel.flush()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._start_tunnel(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as e:
            if self.active is not None:
                # Garbage behind a request still being answered: finish that answer (an error
                # written now would land inside it), read nothing more, then close.
                self.eof = True
                self.pause(PAUSE_BUFFERED)
            elif not self.closing:
                rejected = e.__context__
                if isinstance(rejected, _Reject):
                    self.queue_write(rejected.response)
                elif rejected is not None:  # a bug of ours, not the client's
                    log.error("proxy: request from %s failed", self.peer, exc_info=rejected)
                    self.queue_write(_INTERNAL_ERROR)
                else:
                    log.debug("bad request from %s: %s (%r)", self.peer, e, e.__context__)
                    self.queue_write(_BAD_REQUEST)
                self.close()
            return
        if self.in_head:
            self.pending_head += len(data)
            if self.pending_head > self.worker.settings.max_header_bytes:
                self.queue_write(_TOO_LARGE)
                self.close()
                return
        active = self.active
        if active is not None and active.out:
            active.flush()
        if self.queue:
            # A pipelined request waits: stop reading until its turn (bodies stay bounded).
            self.pause(PAUSE_BUFFERED)

    def eof_received(self) -> bool | None:
        # The client finished sending; answers already underway still go out, then close.
        self.eof = True
        if self.active is None and self.tunnel is None:
            self.close()
        return self.scheme == b"http"  # TLS cannot stay half-open (asyncio warns)

    def pause_writing(self) -> None:
        self.writing_paused = True
        exchange = self.tunnel or self.active
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        exchange = self.tunnel or self.active
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # --- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.in_head = True
        self.head_size = 0
        self.pending_head = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        # The hot path of every request: one pass over the headers, sorting out the few the
        # proxy reads or replaces and formatting the rest for the upstream as they come.
        self.in_head = False
        parser = self.parser
        worker = self.worker
        url = self.url
        if self.head_size + len(url) > worker.settings.max_header_bytes:
            raise _Reject(_TOO_LARGE)
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Reject(_NOT_ALLOWED)  # a reverse proxy, not a forward one
        host = length = upgrade_to = referer = user_agent = b""
        forwarded_for: list[bytes] = []
        connection: list[bytes] = []
        chunked = False
        lines: list[bytes] = []
        for name, value in self.headers:
            kind = _SPECIAL.get(name.lower())
            if kind is None:
                lines.append(b"%b: %b\r\n" % (name, value))
            elif kind == _HOST:
                host = value
                lines.append(b"%b: %b\r\n" % (name, value))
            elif kind == _CONTENT_LENGTH:
                length = value
                lines.append(b"%b: %b\r\n" % (name, value))
            elif kind == _USER_AGENT:
                user_agent = value
                lines.append(b"%b: %b\r\n" % (name, value))
            elif kind == _REFERER:
                referer = value
                lines.append(b"%b: %b\r\n" % (name, value))
            elif kind == _FORWARDED_FOR:
                forwarded_for.append(value)
            elif kind == _CONNECTION:
                connection.append(value)
            elif kind == _TRANSFER_ENCODING:
                chunked = True  # llhttp accepts no coding it cannot frame
            elif kind == _UPGRADE:
                upgrade_to = value
            # else: hop-by-hop or set by the proxy: dropped
        if connection:
            drop = connection_tokens(connection) - {b"close", b"keep-alive", b"upgrade"}
            if drop:
                lines = [b"%b: %b\r\n" % (n, v) for n, v in self.headers
                         if _SPECIAL.get(n.lower(), _HOST) in _KEPT and n.lower() not in drop]

        if url[:1] == b"/":
            raw_path, _, raw_query = url.partition(b"?")
        elif url == b"*":
            raw_path, raw_query = url, b""
        else:  # absolute-form ("GET http://host/path"): its host wins over the header
            parsed = httptools.parse_url(url)
            host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
            raw_path, raw_query = parsed.path or b"/", parsed.query or b""
        host_text = host.decode("latin-1")
        path = raw_path.decode("latin-1")
        exchange = Exchange(self, method, url, host_text, parser.should_keep_alive(),
                            parser.get_http_version() == "1.0")
        exchange.referer = referer
        exchange.user_agent = user_agent
        upgrade = exchange.upgrade = parser.should_upgrade()
        exchange.has_body = chunked or (length != b"" and length != b"0")

        table = worker.table  # read once: this request sees one configuration throughout
        entry = exchange.entry = table.match(host_text, unquote(path) if "%" in path else path)
        if entry is None or (entry.page is None and not entry.targets):
            exchange.local = table.no_routes
        elif entry.page is not None:
            exchange.local = entry.page
        else:
            target = entry.pick()
            if target is None:
                exchange.local = table.no_healthy
            else:
                exchange.target = target
                exchange.pool = worker.pool(target)
                exchange.request_chunked = chunked
                if entry.fwdpath or not target.plain or url[:1] != b"/":
                    url = entry.upstream_target(target, path, raw_query.decode("latin-1")
                                                ).encode("latin-1")
                if not host:
                    host = target.netloc
                    lines.append(b"Host: %b\r\n" % host)
                peer = self.peer_bytes
                lines.append(
                    b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
                    % (b", ".join(forwarded_for) + b", " + peer if forwarded_for else peer,
                       self.scheme, host))
                if chunked:
                    lines.append(b"Transfer-Encoding: chunked\r\n")
                if upgrade:
                    lines.append(b"Connection: Upgrade\r\nUpgrade: %b\r\n" % upgrade_to)
                head = exchange.head = b"%b %b HTTP/1.1\r\n%b\r\n" % (
                    method, url, b"".join(lines))
                exchange.out.append(head)
                exchange.out_size = len(head)
        self.parsing = exchange
        if self.active is None:
            self.active = exchange
            exchange.start()
        else:
            self.queue.append(exchange)

    def on_body(self, body: bytes) -> None:
        parsing = self.parsing
        if parsing is not None:
            parsing.body(body)

    def on_message_complete(self) -> None:
        parsing, self.parsing = self.parsing, None
        if parsing is not None:
            parsing.request_complete()

    # --- helpers --------------------------------------------------------------------------------

    def _start_tunnel(self, rest: bytes) -> None:
        exchange = self.active
        if exchange is None or not exchange.upgrade or exchange.local is not None or self.queue:
            # Answered locally (no route, a page) or out of turn: nothing to upgrade into.
            self.close()
            return
        self.tunnel = exchange
        if rest:
            exchange.send(rest)
            exchange.flush()

    def queue_write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            self.out = []

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def exchange_done(self, exchange: Exchange) -> None:
        """An exchange has its whole response queued: log it, then next request or close."""
        self.worker.record(exchange, self.peer)
        self.flush()
        if exchange is self.tunnel:
            self.tunnel = None
            self.close()
            return
        if exchange is self.active:
            self.active = None
        if exchange.client_close or (self.eof and not self.queue):
            self.close()
            return
        self.idle_ticks = 0
        if self.queue:
            self.active = self.queue.popleft()
            self.active.start()
            if not self.queue:
                self.resume(PAUSE_BUFFERED)
        elif self.paused:
            self.resume(PAUSE_BUFFERED)

    def close(self) -> None:
        """Close after everything queued is written."""
        if not self.closing and self.transport is not None:
            self.closing = True
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a response cannot be completed)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class _Reject(Exception):
    """Raised from a parser callback: answer with this response and close."""

    def __init__(self, response: bytes) -> None:
        super().__init__("rejected")
        self.response = response
