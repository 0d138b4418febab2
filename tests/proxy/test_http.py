"""The proxy's HTTP behaviour, Portal's: pages, 502s, round robin, headers, fwdpath, framing."""

from __future__ import annotations

import asyncio

import aiohttp

from portal_es.domain.models import ErrorPages, Route
from tests.proxy.conftest import ProxyFactory, UpstreamFactory, http_url, raw_exchange


async def get(session: aiohttp.ClientSession, url: str, host: str,
              **kwargs: object) -> tuple[int, str, dict[str, str]]:
    async with session.get(url, headers={"Host": host}, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, await r.text(), dict(r.headers)


async def test_page_answers_200_and_beats_targets(
        proxies: ProxyFactory, session: aiohttp.ClientSession) -> None:
    proxy = await proxies([Route(domain="portal.test", page="portal works\n",
                                 targets=("http://127.0.0.1:9",))])
    status, text, headers = await get(session, http_url(proxy, "/any/path"), "portal.test")
    assert (status, text) == (200, "portal works\n")
    assert headers["Content-Type"].startswith("text/plain")
    async with session.head(http_url(proxy), headers={"Host": "portal.test"}) as r:
        assert r.status == 200 and await r.read() == b""
        assert r.headers["Content-Length"] == str(len("portal works\n"))


async def test_no_route_and_no_targets_answer_502_no_routes_with_custom_pages(
        proxies: ProxyFactory, session: aiohttp.ClientSession) -> None:
    proxy = await proxies([Route(domain="empty.test")])
    assert (await get(session, http_url(proxy), "nothing.test"))[:2] == (502, "NoRoutes")
    assert (await get(session, http_url(proxy), "empty.test"))[:2] == (502, "NoRoutes")
    await proxy.apply([Route(domain="empty.test")], [],
                      ErrorPages(**{"no-routes": "<h1>none here</h1>", "no-healthy": "sick"}))
    status, text, headers = await get(session, http_url(proxy), "nothing.test")
    assert (status, text) == (502, "<h1>none here</h1>")
    assert headers["Content-Type"].startswith("text/html")


async def test_unreachable_target_answers_502(
        proxies: ProxyFactory, session: aiohttp.ClientSession) -> None:
    proxy = await proxies([Route(domain="a.test", targets=("http://127.0.0.1:9",))])
    status, text, _ = await get(session, http_url(proxy), "a.test")
    assert status == 502 and "Bad Gateway" in text


async def test_round_robin_over_targets(proxies: ProxyFactory, upstreams: UpstreamFactory,
                                        session: aiohttp.ClientSession) -> None:
    ups = [await upstreams(f"u{i}") for i in range(3)]
    proxy = await proxies([Route(domain="a.test", targets=tuple(u.url for u in ups))])
    names = []
    for _ in range(9):
        async with session.get(http_url(proxy), headers={"Host": "a.test"}) as r:
            names.append((await r.json())["name"])
    assert sorted(names) == ["u0"] * 3 + ["u1"] * 3 + ["u2"] * 3
    assert len(set(names[:3])) == 3  # each turn goes to the next target


async def test_forwarded_headers_and_host_kept(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    async with session.get(http_url(proxy, "/x"), headers={
            "Host": "www.a.test:8080", "X-Forwarded-For": "10.1.1.1", "X-Forwarded-Proto": "ftp",
            "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "300"}) as r:
        seen = await r.json()
    headers = seen["headers"]
    assert headers["Host"] == "www.a.test:8080"
    assert headers["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "www.a.test:8080"
    assert "X-Secret" not in headers and "Keep-Alive" not in headers
    assert seen["version"] == "1.1"


async def test_fwdpath_replaces_the_route_path_under_the_target_path_and_merges_queries(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([
        Route(domain="a.test", path="/admin", fwdpath="/goadmin", targets=(f"{up.url}/app?k=v",)),
        Route(domain="a.test", path="/plain", targets=(f"{up.url}/base",)),
        Route(domain="a.test", path="/star*", fwdpath="/s/", targets=(up.url,)),
    ])
    cases = {
        "/admin/users?page=2": "/app/goadmin/users?k=v&page=2",
        "/admin": "/app/goadmin?k=v",
        "/plain/x?q=1": "/base/plain/x?q=1",
        "/starry/night": "/s/ry/night",
    }
    for path, expected in cases.items():
        async with session.get(http_url(proxy, path), headers={"Host": "a.test"}) as r:
            assert (await r.json())["path"] == expected, path


async def test_keep_alive_connections_to_upstreams_are_reused(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    for _ in range(20):
        assert (await get(session, http_url(proxy), "a.test"))[0] == 200
    assert up.requests == 20 and len(up.connections) == 1


async def test_chunked_response_and_request_bodies(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    async with session.get(http_url(proxy, "/_chunked"), headers={"Host": "a.test"}) as r:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.text() == "one two three"

    async def parts():  # type: ignore[no-untyped-def]
        for i in range(5):
            yield f"part{i};".encode()

    async with session.post(http_url(proxy, "/_upload"), data=parts(),
                            headers={"Host": "a.test"}) as r:
        seen = await r.json()
    assert seen["size"] == len("part0;") * 5 and seen["chunked"] == "chunked"


async def test_http10_client_gets_a_close_delimited_body(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))])
    assert proxy.http_addr is not None
    answer = await raw_exchange(proxy.http_addr[1],
                                b"GET /_chunked HTTP/1.0\r\nHost: a.test\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"one two three"


async def test_pipelined_requests_are_answered_in_order(
        proxies: ProxyFactory, upstreams: UpstreamFactory) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,)),
                           Route(domain="p.test", page="page\n")])
    assert proxy.http_addr is not None
    requests = (b"GET /_slow/0.2 HTTP/1.1\r\nHost: a.test\r\n\r\n"
                b"GET /second HTTP/1.1\r\nHost: p.test\r\n\r\n"
                b"POST /third HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n"
                b"Connection: close\r\n\r\nabc")
    answer = await raw_exchange(proxy.http_addr[1], requests)
    first = answer.find(b"slow up")
    second = answer.find(b"page\n")
    third = answer.find(b'"path": "/third"')
    assert 0 < first < second < third, answer


async def test_bad_requests_and_oversized_headers(proxies: ProxyFactory) -> None:
    proxy = await proxies([Route(domain="p.test", page="page\n")],
                          max_header_bytes=1024)
    assert proxy.http_addr is not None
    port = proxy.http_addr[1]
    assert (await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nHost: p.test\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n"
    assert (await raw_exchange(port, big)).startswith(b"HTTP/1.1 431")
    endless = b"GET / HTTP/1.1\r\nHost: p.test\r\nX-Big: " + b"x" * 5000
    assert (await raw_exchange(port, endless)).startswith(b"HTTP/1.1 431")


async def test_slow_upstream_does_not_block_others(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    slow, fast = await upstreams("slow"), await upstreams("fast")
    proxy = await proxies([Route(domain="slow.test", targets=(slow.url,)),
                           Route(domain="fast.test", targets=(fast.url,))])
    slow_requests = [asyncio.create_task(get(session, http_url(proxy, "/_slow/2"), "slow.test"))
                     for _ in range(20)]
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        assert (await get(session, http_url(proxy), "fast.test"))[0] == 200
    assert loop.time() - started < 1.0
    assert all(r[0] == 200 for r in await asyncio.gather(*slow_requests))


async def test_read_timeout_answers_504(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))], read_timeout=0.5)
    status, _, _ = await get(session, http_url(proxy, "/_slow/3"), "a.test")
    assert status == 504


async def test_connection_limit_per_target_queues_requests(
        proxies: ProxyFactory, upstreams: UpstreamFactory,
        session: aiohttp.ClientSession) -> None:
    up = await upstreams()
    proxy = await proxies([Route(domain="a.test", targets=(up.url,))],
                          max_connections_per_target=2)
    results = await asyncio.gather(*(get(session, http_url(proxy, "/_slow/0.2"), "a.test")
                                     for _ in range(6)))
    assert all(r[0] == 200 for r in results)
    assert len(up.connections) <= 2
