"""HTTP/1.1 wire details shared by the client and upstream sides."""

from __future__ import annotations

from http import HTTPStatus

# Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy ones Go's ReverseProxy, Portal's proxy,
# removed): they describe one connection, so they are never forwarded. Framing
# (Transfer-Encoding, Content-Length) is re-added by the proxy as it re-frames bodies.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

# Request headers the proxy sets itself.
REPLACED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int, phrase: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase or reason(status))


def simple_response(status: int, body: bytes = b"", close: bool = True) -> bytes:
    """A complete small response the proxy writes itself (errors outside any route)."""
    return (
        status_line(status)
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
        + (b"Connection: close\r\n" if close else b"")
        + CRLF + body
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """Header names listed in Connection headers (they are hop-by-hop too)."""
    return {t.strip().lower() for v in values for t in v.split(b",") if t.strip()}
