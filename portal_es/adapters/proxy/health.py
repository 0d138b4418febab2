"""Health checks of route targets (routes with an `endpoint`), run once per node.

Every `interval` seconds each checked target gets up to `attempts` GETs of target + endpoint,
each within `timeout` ms, with the route's `host` as Host header when set. The first answer
that passes makes the target healthy: status == expected_code, or body == expected_body, or
header "Field:value" matches. All attempts failing makes it unhealthy. Changes are logged and
handed to `on_change` (the set of unhealthy targets), which the proxy fans out to workers.
New targets start healthy, as in Portal, so adding a route never waits for a first check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp

from portal_es.adapters.proxy.table import HealthKey, route_label
from portal_es.domain.models import Route

log = logging.getLogger("portal_es.proxy.health")

MAX_BODY = 64 * 1024
PARALLEL = 64  # checks in flight at once


@dataclass
class TargetHealth:
    healthy: bool = True
    checks: int = 0
    last_check: float | None = None  # wall-clock seconds
    last_error: str = ""


def endpoint_url(target: str, endpoint: str) -> str:
    return target.rstrip("/") + "/" + endpoint.lstrip("/")


async def check_once(session: aiohttp.ClientSession, route: Route, target: str) -> str:
    """'' when the target passes, else why not."""
    headers = {"Host": route.host} if route.host else {}
    timeout = aiohttp.ClientTimeout(total=route.timeout / 1000)
    try:
        async with session.get(endpoint_url(target, route.endpoint), headers=headers,
                               timeout=timeout, allow_redirects=False) as response:
            if response.status == route.expected_code:
                return ""
            if route.expected_header:
                field, _, value = route.expected_header.partition(":")
                if response.headers.get(field.strip(), "").strip() == value.strip():
                    return ""
            if route.expected_body:
                body = await response.content.read(MAX_BODY)
                if body.decode(errors="replace") == route.expected_body:
                    return ""
            return f"status {response.status}, expected {route.expected_code}"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class HealthChecker:
    def __init__(self, interval: float,
                 on_change: Callable[[frozenset[HealthKey]], None]) -> None:
        self.interval = interval
        self.on_change = on_change
        self.routes: dict[HealthKey, Route] = {}      # what to check
        self.labels: dict[HealthKey, str] = {}
        self.state: dict[HealthKey, TargetHealth] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def update(self, routes: Sequence[Route]) -> None:
        """A new configuration: keep what is known about targets that stay."""
        checked: dict[HealthKey, Route] = {}
        labels: dict[HealthKey, str] = {}
        for route in routes:
            for target in route.targets:
                key = (route.key, target)
                labels[key] = route_label(route)
                if route.endpoint and not route.page:
                    checked[key] = route
        before = self.unhealthy()
        self.state = {k: self.state.get(k) or TargetHealth() for k in labels}
        for key in labels.keys() - checked.keys():
            self.state[key] = TargetHealth()  # not checked (any more): healthy
        changed = any(self.routes.get(k) != r for k, r in checked.items())
        self.routes, self.labels = checked, labels
        if self.unhealthy() != before:
            self.on_change(self.unhealthy())
        if changed:
            self._wake.set()

    def unhealthy(self) -> frozenset[HealthKey]:
        return frozenset(k for k, s in self.state.items() if not s.healthy)

    def rows(self) -> Iterator[tuple[str, str, bool]]:
        for key, state in self.state.items():
            yield self.labels.get(key, ""), key[1], state.healthy

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, force_close=True, limit=PARALLEL))
        self._task = asyncio.create_task(self._loop(), name="proxy-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.check_all()
            except Exception:  # keep checking whatever one round did
                log.exception("proxy: health-check round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def check_all(self) -> None:
        if not self.routes:
            return
        assert self._session is not None
        session = self._session
        limit = asyncio.Semaphore(PARALLEL)

        async def one(key: HealthKey, route: Route) -> tuple[HealthKey, str]:
            async with limit:
                error = "no attempts"
                for _ in range(route.attempts):
                    error = await check_once(session, route, key[1])
                    if not error:
                        break
                return key, error

        results = await asyncio.gather(*(one(k, r) for k, r in self.routes.items()))
        before = self.unhealthy()
        for key, error in results:
            state = self.state.get(key)
            if state is None:
                continue  # removed while being checked
            healthy = not error
            state.checks += 1
            state.last_check = time.time()
            state.last_error = error
            if healthy != state.healthy:
                state.healthy = healthy
                label = self.labels.get(key, "")
                if healthy:
                    log.info("proxy: target %s of route %s is healthy again", key[1], label)
                else:
                    log.warning("proxy: target %s of route %s is unhealthy: %s", key[1],
                                label, error)
        after = self.unhealthy()
        if after != before:
            self.on_change(after)
