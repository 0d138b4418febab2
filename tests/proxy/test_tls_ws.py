"""HTTPS: SNI cert choice (exact, wildcard, default), cert swaps; WebSocket over ws and wss."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from portal_es.adapters.proxy.certs import DEFAULT_NAME
from portal_es.domain.models import ErrorPages, Route
from tests.proxy.conftest import ProxyFactory, UpstreamFactory, bundle, http_url


async def served_cert(port: int, server_name: str | None) -> x509.Certificate:
    """The certificate the proxy presents for an SNI name (None: no SNI)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name or "")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


async def test_sni_picks_exact_then_wildcard_then_default(
        proxies: ProxyFactory, ca: trustme.CA) -> None:
    certs = [bundle(ca, "a.test"), bundle(ca, "*.b.test"), bundle(ca, "www.b.test", "c.test")]
    proxy = await proxies([], certs)
    assert proxy.tls_addr is not None
    port = proxy.tls_addr[1]
    assert names(await served_cert(port, "a.test")) == ["a.test"]
    assert names(await served_cert(port, "A.Test")) == ["a.test"]
    assert names(await served_cert(port, "x.b.test")) == ["*.b.test"]
    assert names(await served_cert(port, "www.b.test")) == ["www.b.test", "c.test"]  # exact wins
    assert names(await served_cert(port, "c.test")) == ["www.b.test", "c.test"]
    assert names(await served_cert(port, "deep.x.b.test")) == [DEFAULT_NAME]  # one label only
    assert names(await served_cert(port, "other.test")) == [DEFAULT_NAME]
    assert names(await served_cert(port, None)) == [DEFAULT_NAME]


async def test_https_request_is_proxied_with_forwarded_proto(
        proxies: ProxyFactory, upstreams: UpstreamFactory, ca: trustme.CA,
        client_tls: ssl.SSLContext) -> None:
    up = await upstreams()
    secure_up = await upstreams("secure", tls=True)
    proxy = await proxies([Route(domain="a.test", targets=(up.url,)),
                           Route(domain="s.test", targets=(secure_up.url,))],
                          [bundle(ca, "a.test"), bundle(ca, "s.test")])
    assert proxy.tls_addr is not None
    port = proxy.tls_addr[1]
    for host, name in (("a.test", "up"), ("s.test", "secure")):
        # Connect to 127.0.0.1 but ask for the name: SNI and Host both say `host`.
        connector = aiohttp.TCPConnector(ssl=client_tls, resolver=_Pinned(port))
        async with aiohttp.ClientSession(connector=connector) as s, \
                s.get(f"https://{host}:{port}/x") as r:
            seen = await r.json()
        assert seen["name"] == name
        assert seen["headers"]["X-Forwarded-Proto"] == "https"
        assert seen["headers"]["Host"] == f"{host}:{port}"


async def test_changing_certs_keeps_open_tls_connections(
        proxies: ProxyFactory, upstreams: UpstreamFactory, ca: trustme.CA,
        client_tls: ssl.SSLContext) -> None:
    up = await upstreams()
    routes = [Route(domain="a.test", targets=(up.url,))]
    proxy = await proxies(routes, [bundle(ca, "a.test")])
    assert proxy.tls_addr is not None
    port = proxy.tls_addr[1]
    connector = aiohttp.TCPConnector(ssl=client_tls, resolver=_Pinned(port), limit=1)
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get(f"https://a.test:{port}/1") as r:
            assert r.status == 200
        await proxy.apply(routes, [bundle(ca, "a.test"), bundle(ca, "new.test")], ErrorPages())
        async with s.get(f"https://a.test:{port}/2") as r:
            assert r.status == 200
        await proxy.apply(routes, [], ErrorPages())  # even with its cert gone
        async with s.get(f"https://a.test:{port}/3") as r:
            assert r.status == 200
    assert len(up.connections) == 1  # and one upstream connection throughout
    assert names(await served_cert(port, "a.test")) == [DEFAULT_NAME]  # new handshakes: default


async def test_websocket_echo_over_ws_and_wss(
        proxies: ProxyFactory, upstreams: UpstreamFactory, ca: trustme.CA,
        client_tls: ssl.SSLContext) -> None:
    up = await upstreams("echo")
    secure_up = await upstreams("secure-echo", tls=True)
    proxy = await proxies([Route(domain="ws.test", targets=(up.url,)),
                           Route(domain="wss.test", targets=(secure_up.url,))],
                          [bundle(ca, "ws.test"), bundle(ca, "wss.test")])
    assert proxy.tls_addr is not None
    tls_port = proxy.tls_addr[1]
    async with aiohttp.ClientSession() as plain, \
            plain.ws_connect(http_url(proxy, "/_ws"), headers={"Host": "ws.test"}) as ws:
        for i in range(3):
            await ws.send_str(f"hello {i}")
            assert (await ws.receive_str()) == f"echo: hello {i}"
        await ws.send_bytes(b"\x00" * 300_000)  # several frames' worth, both ways
        assert (await ws.receive_bytes()) == b"\x00" * 300_000
    connector = aiohttp.TCPConnector(ssl=client_tls, resolver=_Pinned(tls_port))
    async with aiohttp.ClientSession(connector=connector) as secure:
        for host, name in (("ws.test", "echo"), ("wss.test", "secure-echo")):
            async with secure.ws_connect(f"wss://{host}:{tls_port}/_ws") as ws:
                await ws.send_str("over tls")
                assert (await ws.receive_str()) == f"{name}: over tls"


class _Pinned(aiohttp.abc.AbstractResolver):
    """Resolves every name to 127.0.0.1 (SNI and Host keep the name, traffic stays local)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(self, host: str, port: int = 0,
                      family: int = 0) -> list[aiohttp.abc.ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": self.port,
                 "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None
