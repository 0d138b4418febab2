"""Edges of HTTP/1.1 through the proxy: interim answers, HEAD, dead pooled connections,
timeouts, requests in flight across an update."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from portal_es.adapters.proxy import ProxyServer, ProxySettings
from portal_es.domain.models import ErrorPages, Route
from tests.proxy.conftest import ProxyFactory, UpstreamFactory, http_url, raw_exchange


async def test_expect_100_continue_is_relayed(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    assert proxy.http_addr is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_addr[1])
    writer.write(b"POST /_upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    final = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    writer.close()
    assert final.startswith(b"HTTP/1.1 200") and b'"size": 5' in final


async def test_head_through_an_upstream_keeps_the_connection_usable(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    for _ in range(3):
        async with session.head(http_url(proxy, "/_stream/1000?length=1"),
                                headers={"Host": "a.test"}) as r:
            assert r.status == 200 and r.headers["Content-Length"] == "1000"
            assert await r.read() == b""
        async with session.get(http_url(proxy, "/x"), headers={"Host": "a.test"}) as r:
            assert (await r.json())["path"] == "/x"
    assert len(up.connections) == 1


async def test_a_pooled_connection_closed_by_the_upstream_is_retried_once(
        proxies: ProxyFactory, session: aiohttp.ClientSession) -> None:
    """An upstream that drops a kept-alive connection just as the next request arrives."""
    served: list[int] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: dropped unanswered
        writer.close()

    server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await proxies([Route(domain="a.test", targets=(f"http://127.0.0.1:{port}",))])
    for _ in range(3):
        async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
            assert (r.status, await r.text()) == (200, "ok")
    assert len(served) == 3
    server.close()


async def test_idle_client_connections_are_closed(proxies: ProxyFactory) -> None:
    proxy = await proxies([Route(domain="p.test", page="page\n")], idle_timeout=0.5)
    assert proxy.http_addr is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.http_addr[1])
    writer.write(b"GET / HTTP/1.1\r\nHost: p.test\r\n\r\n")
    assert (await reader.readuntil(b"page\n")).startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the proxy
    writer.close()


async def test_requests_in_flight_finish_on_the_old_configuration(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams("old")
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])

    async def slow() -> tuple[int, str]:
        async with session.get(http_url(proxy, "/_slow/0.5"), headers={"Host": "a.test"}) as r:
            return r.status, await r.text()

    in_flight = asyncio.create_task(slow())
    await asyncio.sleep(0.1)
    await proxy.apply([Route(domain="a.test", page="moved\n")], [], ErrorPages())
    assert await in_flight == (200, "slow old")
    async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
        assert await r.text() == "moved\n"


async def test_update_before_start(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    proxy = ProxyServer("127.0.0.1:0", None, tmp_path, ProxySettings(workers=0))
    proxy.update([Route(domain="p.test", page="early\n")], [], ErrorPages())
    await proxy.start()
    try:
        async with session.get(http_url(proxy), headers={"Host": "p.test"}) as r:
            assert await r.text() == "early\n"
    finally:
        await proxy.stop()


async def test_absolute_form_request_target_routes_by_its_host(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    assert proxy.http_addr is not None
    answer = await raw_exchange(proxy.http_addr[1],
                                b"GET http://a.test/abs?x=1 HTTP/1.1\r\nHost: other.test\r\n"
                                b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"path": "/abs?x=1"' in answer


async def test_raw_upstream_heads_split_across_reads_and_interim_answers(
        proxies: ProxyFactory, session: aiohttp.ClientSession) -> None:
    """Heads cut mid-line, a 103 and the final answer in one read, hop-by-hop lines removed."""
    answers = [
        [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 2\r\nX-A: 1\r\n", b"\r\nok"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n"
         b"Connection: keep-alive, X-Hop\r\nX-Hop: no\r\nKeep-Alive: timeout=5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
        [b"HTTP/1.0 200 OK\r\nX-Old: 1\r\n\r\nuntil close"],
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for parts in answers:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await proxies([Route(domain="a.test", targets=(f"http://127.0.0.1:{port}",))],
                          max_connections_per_target=1)
    async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
        assert (r.status, await r.text(), r.headers["X-A"]) == (200, "ok", "1")
    async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
        assert (r.status, await r.text()) == (200, "abc")
        assert "X-Hop" not in r.headers and "Keep-Alive" not in r.headers
    async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
        assert (r.status, await r.text(), r.headers["X-Old"]) == (200, "until close", "1")
        assert r.headers["Transfer-Encoding"] == "chunked"  # re-framed for an HTTP/1.1 client
    server.close()
