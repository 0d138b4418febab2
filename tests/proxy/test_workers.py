"""Worker processes: live reconfiguration under load, streamed big bodies in bounded memory,
restart after a crash, metrics and access log handed to the parent, TLS on uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from portal_es.adapters.proxy import ProxyServer
from portal_es.domain.models import ErrorPages, Route
from tests.proxy.conftest import ProxyFactory, UpstreamFactory, bundle, http_url
from tests.proxy.test_tls_ws import _Pinned, names, served_cert

MB = 1024 * 1024


def rss_peak_kb(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_reconfiguration_under_load_fails_no_request(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    ups = [await upstreams(f"u{i}") for i in range(3)]
    page = Route(domain="p.test", page="page\n")

    def config(i: int) -> list[Route]:
        targets = tuple(u.url for u in ups[i % 3:] + ups[: i % 3])[: 1 + i % 3]
        return [page, Route(domain="a.test", targets=targets),
                Route(domain=f"extra{i}.test", targets=(ups[0].url,))]

    proxy = await proxies(config(0), workers=2)
    url = http_url(proxy)
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                for host in ("a.test", "p.test"):
                    async with session.get(url, headers={"Host": host}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1

    clients = [asyncio.create_task(client()) for _ in range(16)]
    for i in range(1, 41):
        await proxy.apply(config(i), [], ErrorPages())
        await asyncio.sleep(0.05)
    await proxy.apply([page, Route(domain="a.test", targets=(ups[2].url,))], [], ErrorPages())
    stop.set()
    await asyncio.gather(*clients)
    assert set(statuses) == {200} and sum(statuses.values()) > 500, statuses
    async with aiohttp.ClientSession() as session:  # the last table holds everywhere
        for _ in range(10):
            async with session.get(url, headers={"Host": "a.test"}) as r:
                assert (await r.json())["name"] == "u2"


async def _blocks(total: int, block: int = 256 * 1024) -> AsyncIterator[bytes]:
    data = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < total:
        yield data[: min(block, total - sent)]
        sent += block


def _expected_sha(total: int, block: int = 256 * 1024) -> str:
    digest, data, sent = hashlib.sha256(), bytes(range(256)) * (block // 256), 0
    while sent < total:
        digest.update(data[: min(block, total - sent)])
        sent += block
    return digest.hexdigest()


async def test_big_bodies_stream_both_ways_in_bounded_memory(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    size = 200 * MB
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))], workers=1)
    (pid,) = proxy.worker_pids()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(http_url(proxy, "/warm"), headers={"Host": "a.test"}) as r:
            assert r.status == 200
        baseline = rss_peak_kb(pid)
        for headers in ({"Host": "a.test"},  # chunked
                        {"Host": "a.test", "Content-Length": str(size)}):
            async with session.post(http_url(proxy, "/_upload"), data=_blocks(size),
                                    headers=headers) as r:
                seen = await r.json()
            assert seen["size"] == size and seen["sha256"] == _expected_sha(size)
            assert seen["chunked"] == ("" if "Content-Length" in headers else "chunked")
        for query in ("", "?length=1"):
            received = 0
            async with session.get(http_url(proxy, f"/_stream/{size}{query}"),
                                   headers={"Host": "a.test"}) as r:
                assert r.status == 200
                assert ("Content-Length" in r.headers) == bool(query)
                async for block in r.content.iter_chunked(MB):
                    received += len(block)
            assert received == size
    grown_mb = (rss_peak_kb(pid) - baseline) / 1024
    assert grown_mb < 40, f"worker peak RSS grew {grown_mb:.0f} MB moving 4 x 200 MB"


async def test_worker_is_restarted_with_the_current_configuration(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))], workers=1)
    (pid,) = proxy.worker_pids()
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(20):
        while proxy.worker_pids() in ([], [pid]):
            await asyncio.sleep(0.1)
        await proxy.wait_applied()
    async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
        assert r.status == 200


async def test_metrics_and_access_log_come_from_workers(
        proxies: ProxyFactory, upstreams: UpstreamFactory, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portal_es.proxy.access")
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", path="/api", targets=(up.url,)),
                           Route(domain="p.test", page="page\n")], workers=2)
    for host, path in (("a.test", "/api/x?q=1"), ("p.test", "/"), ("none.test", "/")):
        async with session.get(http_url(proxy, path), headers={
                "Host": host, "User-Agent": "tester/1", "Referer": "http://r.test/"}) as r:
            await r.read()
    async with asyncio.timeout(5):
        while b'route="a.test/api",status="200"} 1.0' not in proxy.metrics():
            await asyncio.sleep(0.1)
    text = proxy.metrics().decode()
    assert 'portal_proxy_requests_total{route="p.test",status="200"} 1.0' in text
    assert 'portal_proxy_requests_total{route="",status="502"} 1.0' in text
    assert 'portal_proxy_upstream_seconds_count{route="a.test/api"} 1.0' in text
    async with asyncio.timeout(5):
        while "/api/x?q=1" not in caplog.text:
            await asyncio.sleep(0.1)
    line = next(r.getMessage() for r in caplog.records if "/api/x?q=1" in r.getMessage())
    assert '"GET /api/x?q=1 HTTP/1.1" 200 ' in line
    assert '"http://r.test/" "tester/1" host="a.test"' in line
    assert f'route="a.test/api" target="{up.url}"' in line


async def test_tls_and_websockets_on_uvloop_workers(
        proxies: ProxyFactory, upstreams: UpstreamFactory, ca: trustme.CA,
        client_tls: ssl.SSLContext) -> None:
    up = await upstreams("echo")
    proxy: ProxyServer = await proxies([Route(domain="ws.test", targets=(up.url,))],
                                       [bundle(ca, "ws.test"), bundle(ca, "*.w.test")],
                                       workers=1)
    assert proxy.tls_addr is not None
    port = proxy.tls_addr[1]
    assert names(await served_cert(port, "x.w.test")) == ["*.w.test"]
    connector = aiohttp.TCPConnector(ssl=client_tls, resolver=_Pinned(port))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.ws_connect(f"wss://ws.test:{port}/_ws") as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "echo: hi"
