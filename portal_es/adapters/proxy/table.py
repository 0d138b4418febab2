"""The proxy's compiled configuration: one immutable `RouteTable` per update.

A worker holds exactly one table reference and replaces it in a single assignment; a request
reads the reference once when its headers are complete and uses that table to the end, so it
sees the old or the new configuration, never a mix. Only target health is mutable in place
(`set_health`): it is per target and has no cross-target consistency to keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from portal_es.domain.models import ErrorPages, Route, RouteKey
from projections.router import Router

HealthKey = tuple[RouteKey, str]  # (route identity, target URL)


@dataclass(frozen=True, slots=True)
class Target:
    """One target URL of a route, split once for the hot path."""

    url: str
    tls: bool
    host: str
    port: int
    base_path: str  # the target URL's own path ("" when none or "/")
    query: str      # the target URL's own query string
    netloc: bytes   # Host header when the client sent none
    plain: bool     # no path or query of its own: request targets pass unchanged
    pool_key: tuple[bool, str, int]

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        base = parts.path if parts.path not in ("", "/") else ""
        return cls(url, tls, host, port, base, parts.query, parts.netloc.encode(),
                   not base and not parts.query, (tls, host, port))


def join_path(a: str, b: str) -> str:
    """Join two URL paths with exactly one slash between them (Go's singleJoiningSlash)."""
    if not a:
        return b or "/"
    if not b:
        return a
    a_slash, b_slash = a.endswith("/"), b.startswith("/")
    if a_slash and b_slash:
        return a + b[1:]
    if not a_slash and not b_slash:
        return a + "/" + b
    return a + b


def merge_query(a: str, b: str) -> str:
    return a + "&" + b if a and b else a or b


def route_label(route: Route) -> str:
    """A route as one metrics label: "www.example.com/api", "*" for any host."""
    host = ".".join(p for p in (route.subdomain, route.domain) if p) or "*"
    return host + route.path


def _content_type(body: str) -> bytes:
    # Go's http.DetectContentType made Portal's pages text/html when they looked like markup.
    if body.lstrip()[:1] == "<":
        return b"text/html; charset=utf-8"
    return b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Page:
    """A response the proxy answers itself: status line and headers up to, not incl., CRLF."""

    status: int
    head: bytes
    body: bytes

    @classmethod
    def make(cls, status: int, reason: str, body: str) -> Page:
        data = body.encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(data)}\r\n".encode()
            + b"Content-Type: " + _content_type(body) + b"\r\n"
        )
        return cls(status, head, data)


class RouteEntry:
    """A route as the data plane uses it: targets, health and round-robin position."""

    __slots__ = ("fwdpath", "healthy", "label", "page", "route", "rr", "strip", "targets")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.label = route_label(route)
        self.page = Page.make(200, "OK", route.page) if route.page else None
        self.targets = tuple(Target.parse(t) for t in route.targets)
        self.healthy = self.targets
        self.rr = 0
        self.fwdpath = route.fwdpath
        self.strip = route.path[:-1] if route.path.endswith("*") else route.path

    def pick(self) -> Target | None:
        """The next healthy target in round-robin order, None when all are unhealthy."""
        healthy = self.healthy
        if not healthy:
            return None
        self.rr += 1
        return healthy[self.rr % len(healthy)]

    def upstream_target(self, target: Target, path: str, query: str) -> str:
        """The request-target sent upstream: fwdpath rewriting, target path, merged query."""
        if self.fwdpath:
            rest = path[len(self.strip):] if path.startswith(self.strip) else path
            path = join_path(self.fwdpath, rest) if rest else self.fwdpath
        if target.base_path:
            path = join_path(target.base_path, path)
        query = merge_query(target.query, query)
        return path + "?" + query if query else path

    def apply_health(self, health: Mapping[HealthKey, bool]) -> None:
        key = self.route.key
        self.healthy = tuple(t for t in self.targets if health.get((key, t.url), True))


class RouteTable:
    """Routes, error pages and the router over them, for one configuration generation."""

    __slots__ = ("entries", "generation", "no_healthy", "no_routes", "router")

    def __init__(self, routes: Sequence[Route], pages: ErrorPages, generation: int = 0,
                 health: Mapping[HealthKey, bool] | None = None) -> None:
        self.generation = generation
        self.entries = tuple(RouteEntry(r) for r in routes)
        if health:
            for entry in self.entries:
                entry.apply_health(health)
        self.router: Router[RouteEntry] = Router((e.route, e) for e in self.entries)
        self.no_routes = Page.make(502, "Bad Gateway", pages.no_routes)
        self.no_healthy = Page.make(502, "Bad Gateway", pages.no_healthy)

    def match(self, host: str, path: str) -> RouteEntry | None:
        return self.router.match(host, path)

    def set_health(self, health: Mapping[HealthKey, bool]) -> None:
        for entry in self.entries:
            entry.apply_health(health)

    def pool_keys(self) -> set[tuple[bool, str, int]]:
        return {t.pool_key for e in self.entries for t in e.targets}
