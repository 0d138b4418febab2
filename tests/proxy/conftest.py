"""Real upstream HTTP servers and a real proxy, on 127.0.0.1 ports chosen by the kernel."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from portal_es.adapters.proxy import ProxyServer, ProxySettings
from portal_es.domain.models import CertBundle, ErrorPages, Route

CHUNK = 256 * 1024


@dataclass
class Upstream:
    """An aiohttp app answering what it saw (JSON), plus streaming, slow, ws, health paths."""

    name: str
    tls: ssl.SSLContext | None = None
    port: int = 0
    connections: set[int] = field(default_factory=set)
    requests: int = 0
    health_status: int = 200
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=2**40)
        app.router.add_route("*", "/_stream/{size}", self.stream)
        app.router.add_route("*", "/_upload", self.upload)
        app.router.add_get("/_slow/{seconds}", self.slow)
        app.router.add_get("/_ws", self.websocket)
        app.router.add_get("/_health", self.health)
        app.router.add_get("/_chunked", self.chunked)
        app.router.add_route("*", "/{tail:.*}", self.info)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _seen(self, request: web.Request) -> None:
        self.requests += 1
        if request.transport is not None:
            self.connections.add(id(request.transport))

    async def info(self, request: web.Request) -> web.Response:
        self._seen(request)
        body = await request.read()
        return web.json_response({
            "name": self.name, "method": request.method, "path": request.raw_path,
            "headers": {k: ", ".join(request.headers.getall(k)) for k in request.headers},
            "body": body.decode(errors="replace"), "version": f"{request.version.major}."
            f"{request.version.minor}",
        })

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """`size` bytes, chunked (no Content-Length), without holding them."""
        self._seen(request)
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        if request.query.get("length"):
            response.content_length = size
        await response.prepare(request)
        block = b"x" * CHUNK
        while size > 0:
            await response.write(block[: min(size, CHUNK)])
            size -= CHUNK
        await response.write_eof()
        return response

    async def upload(self, request: web.Request) -> web.Response:
        """Reads the body as it comes; answers its size and sha256."""
        self._seen(request)
        digest, size = hashlib.sha256(), 0
        async for block in request.content.iter_chunked(CHUNK):
            digest.update(block)
            size += len(block)
        return web.json_response({"size": size, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding", "")})

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text=f"slow {self.name}")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.health_status, text=f"status {self.health_status}",
                            headers={"X-Health": "ok" if self.health_status == 200 else "bad"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        self._seen(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}: {message.data}")
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def bundle(ca: trustme.CA, *names: str) -> CertBundle:
    leaf = ca.issue_cert(*names)
    return CertBundle(cert="".join(b.bytes().decode() for b in leaf.cert_chain_pems),
                      key=leaf.private_key_pem.bytes().decode())


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def upstreams(ca: trustme.CA) -> AsyncIterator[UpstreamFactory]:
    started: list[Upstream] = []

    async def start(name: str = "up", tls: bool = False) -> Upstream:
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        upstream = Upstream(name, context)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()


ProxyFactory = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def proxies(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    """Start proxies (in process unless `workers` is given); all stopped at the end."""
    started: list[ProxyServer] = []

    async def start(routes: list[Route] | None = None, certs: list[CertBundle] | None = None,
                    pages: ErrorPages | None = None, **settings: Any) -> ProxyServer:
        settings.setdefault("workers", 0)
        proxy = ProxyServer("127.0.0.1:0", "127.0.0.1:0", tmp_path / f"certs{len(started)}",
                            ProxySettings(**settings))
        await proxy.start()
        started.append(proxy)
        if routes is not None or certs is not None or pages is not None:
            await proxy.apply(routes or [], certs or [], pages or ErrorPages())
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


def http_url(proxy: ProxyServer, path: str = "/") -> str:
    assert proxy.http_addr is not None
    return f"http://127.0.0.1:{proxy.http_addr[1]}{path}"


def https_url(proxy: ProxyServer, path: str = "/") -> str:
    assert proxy.tls_addr is not None
    return f"https://127.0.0.1:{proxy.tls_addr[1]}{path}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def raw_exchange(port: int, data: bytes, until: bytes | None = None,
                       timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until `until` appears or the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = b""
        async with asyncio.timeout(timeout):
            while until is None or until not in received:
                block = await reader.read(65536)
                if not block:
                    break
                received += block
        return received
    finally:
        writer.close()
