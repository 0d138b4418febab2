"""Proxy metrics: counted cheaply in each worker, exposed by prometheus-client in the parent.

A worker adds to plain dicts on the hot path (no locks, no label lookups) and hands over the
deltas once a second; the parent keeps the totals and a custom collector turns them into
Prometheus families at scrape time. That keeps prometheus-client's multiprocess mode (mmap
files, an environment variable to set before import) out of the picture.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Seconds; the proxy's own overhead is ~0.1 ms, so the low end is finer than the default.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, math.inf)

Requests = dict[tuple[str, int], int]
Latency = dict[str, list[float]]  # route label -> per-bucket counts (not cumulative) + [sum]


class WorkerStats:
    """What one worker counted since the last `take()`."""

    __slots__ = ("latency", "requests")

    def __init__(self) -> None:
        self.requests: Requests = {}
        self.latency: Latency = {}

    def observe(self, route: str, status: int, upstream_seconds: float | None) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if upstream_seconds is not None:
            counts = self.latency.get(route)
            if counts is None:
                counts = self.latency[route] = [0.0] * (len(BUCKETS) + 1)
            counts[bisect.bisect_left(BUCKETS, upstream_seconds)] += 1
            counts[-1] += upstream_seconds

    def take(self) -> tuple[Requests, Latency]:
        taken = (self.requests, self.latency)
        self.requests, self.latency = {}, {}
        return taken


class Totals:
    """Sums of every worker's deltas (lives in the parent)."""

    def __init__(self) -> None:
        self.requests: Requests = {}
        self.latency: Latency = {}

    def add(self, delta: tuple[Requests, Latency]) -> None:
        requests, latency = delta
        for key, n in requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        for route, counts in latency.items():
            total = self.latency.get(route)
            if total is None:
                self.latency[route] = list(counts)
            else:
                for i, count in enumerate(counts):
                    total[i] += count


HealthRows = Callable[[], Iterable[tuple[str, str, bool]]]  # (route label, target, healthy)


class ProxyCollector(Collector):
    def __init__(self, totals: Totals, health: HealthRows,
                 before_collect: Callable[[], Any] | None = None) -> None:
        self.totals = totals
        self.health = health
        self.before_collect = before_collect

    def collect(self) -> Iterator[Metric]:
        if self.before_collect is not None:
            self.before_collect()
        requests = CounterMetricFamily(
            "portal_proxy_requests", "Requests answered by the HTTP/HTTPS proxy",
            labels=["route", "status"])
        for (route, status), total in sorted(self.totals.requests.items()):
            requests.add_metric([route, str(status)], total)
        yield requests
        latency = HistogramMetricFamily(
            "portal_proxy_upstream_seconds",
            "Time from sending a request upstream to the end of its response",
            labels=["route"])
        for route, counts in sorted(self.totals.latency.items()):
            cumulative, running = [], 0.0
            for bound, count in zip(BUCKETS, counts, strict=False):
                running += count
                cumulative.append(("+Inf" if math.isinf(bound) else repr(bound), running))
            latency.add_metric([route], cumulative, sum_value=counts[-1])
        yield latency
        healthy = GaugeMetricFamily(
            "portal_proxy_target_healthy", "1 when the target passes its health check",
            labels=["route", "target"])
        for route, target, ok in self.health():
            healthy.add_metric([route, target], 1.0 if ok else 0.0)
        yield healthy


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def aiohttp_view(render_text: Callable[[], bytes]) -> Callable[[web.Request],
                                                            Awaitable[web.Response]]:
    """An aiohttp handler for GET /metrics: `app.router.add_get("/metrics",
    aiohttp_view(proxy.metrics))`. (aiohttp refuses a charset in `content_type=`, hence the
    header.)"""

    async def view(_request: web.Request) -> web.Response:
        return web.Response(body=render_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return view
