"""Health checks: a failing target leaves the rotation and comes back; all failing -> NoHealthy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import pytest

from portal_es.domain.models import ErrorPages, Route
from tests.proxy.conftest import ProxyFactory, UpstreamFactory, http_url


async def names_seen(session: aiohttp.ClientSession, url: str, n: int) -> list[str]:
    seen = []
    for _ in range(n):
        async with session.get(url, headers={"Host": "a.test"}) as r:
            seen.append((await r.json())["name"] if r.status == 200 else str(r.status))
    return seen


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers", [0, 1])
async def test_target_flips_out_and_back_in(
        proxies: ProxyFactory, upstreams: UpstreamFactory, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture, workers: int) -> None:
    caplog.set_level(logging.INFO, logger="portal_es.proxy.health")
    good, flaky = await upstreams("good"), await upstreams("flaky")
    route = Route(domain="a.test", targets=(good.url, flaky.url), endpoint="/_health",
                  timeout=500, attempts=2)
    proxy = await proxies([route], pages=ErrorPages(**{"no-healthy": "all sick"}),
                          health_interval=0.2, workers=workers)
    url = http_url(proxy)
    assert set(await names_seen(session, url, 4)) == {"good", "flaky"}

    flaky.health_status = 500
    await eventually(lambda: not proxy.health()["routes"][0]["targets"][1]["healthy"])
    await asyncio.sleep(0.2)  # the workers hear about it
    assert set(await names_seen(session, url, 6)) == {"good"}
    assert "is unhealthy: status 500, expected 200" in caplog.text
    target = proxy.health()["routes"][0]["targets"][1]
    assert target["target"] == flaky.url and target["checked"] and target["checks"] >= 1

    good.health_status = 503
    await eventually(lambda: not proxy.health()["routes"][0]["targets"][0]["healthy"])
    await asyncio.sleep(0.2)
    async with session.get(url, headers={"Host": "a.test"}) as r:
        assert (r.status, await r.text()) == (502, "all sick")

    flaky.health_status = good.health_status = 200
    await eventually(lambda: all(t["healthy"] for t in proxy.health()["routes"][0]["targets"]))
    await asyncio.sleep(0.2)
    assert set(await names_seen(session, url, 4)) == {"good", "flaky"}
    assert "is healthy again" in caplog.text
    await eventually(lambda: b'portal_proxy_target_healthy{route="a.test"' in proxy.metrics())


async def test_expected_body_header_and_host(proxies: ProxyFactory,
                                             upstreams: UpstreamFactory) -> None:
    up = await upstreams()
    up.health_status = 500
    routes = [
        Route(domain="a.test", targets=(up.url,), endpoint="/_health", expected_code=201,
              expected_body="status 500"),
        Route(domain="b.test", targets=(up.url,), endpoint="/_health", expected_code=201,
              expected_header="X-Health: bad"),
        Route(domain="c.test", targets=(up.url,), endpoint="/", expected_code=201,
              expected_body="nope", host="health.c.test"),
    ]
    proxy = await proxies(routes, health_interval=0.2)
    await eventually(lambda: all(r["targets"][0]["checks"] for r in proxy.health()["routes"]))
    healthy = [r["targets"][0]["healthy"] for r in proxy.health()["routes"]]
    assert healthy == [True, True, False]
    assert up.requests >= 3  # the "/" checks reached the info handler (with its Host)


async def test_metrics_view_for_the_api(proxies: ProxyFactory,
                                        session: aiohttp.ClientSession) -> None:
    from aiohttp import web

    from portal_es.adapters.proxy import aiohttp_view

    proxy = await proxies([Route(domain="p.test", page="page\n")])
    async with session.get(http_url(proxy), headers={"Host": "p.test"}) as r:
        await r.read()
    app = web.Application()
    app.router.add_get("/metrics", aiohttp_view(proxy.metrics))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            assert 'portal_proxy_requests_total{route="p.test",status="200"} 1.0' in await r.text()
    finally:
        await runner.cleanup()
