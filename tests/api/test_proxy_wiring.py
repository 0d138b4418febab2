"""The proxy inside a running server follows the log: routes, pages, certs, health, metrics."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import PortalServer, free_port
from tests.http import Answer, call
from tests.unit.certs import _CA, BUNDLES


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"upstream saw {self.path} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()


def via_proxy(s: PortalServer, host: str, path: str = "/") -> Answer:
    return call("GET", f"http://127.0.0.1:{s.proxy_port}{path}", headers={"Host": host})


def eventually(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_routes_from_the_api_are_served(portal: PortalServer, upstream: int) -> None:
    assert via_proxy(portal, "app.portal.test").status == 502  # no route yet
    route = {"subdomain": "app", "domain": "portal.test",
             "targets": [f"http://127.0.0.1:{upstream}"]}
    assert call("POST", portal.url + "/routes", route).status == 200
    answer = via_proxy(portal, "app.portal.test", "/x?y=1")
    assert answer.status == 200 and answer.text == "upstream saw /x?y=1 host=app.portal.test"
    call("POST", portal.url + "/routes", {"domain": "portal.test", "page": "portal works\n"})
    assert via_proxy(portal, "www.portal.test").text == "portal works\n"
    call("PUT", portal.url + "/errors", {"no-routes": "nothing here", "no-healthy": "down"})
    missing = via_proxy(portal, "other.test")
    assert (missing.status, missing.text) == (502, "nothing here")
    health = call("GET", portal.url + "/routes/health").json
    assert "routes" in health
    metrics = call("GET", portal.url + "/metrics")
    assert metrics.status == 200 and "portal" in metrics.text


def test_certs_from_the_api_are_served_by_sni(portal: PortalServer) -> None:
    bundle = BUNDLES[1]  # b.test and *.b.test
    posted = call("POST", portal.url + "/certs", {"cert": bundle.cert, "key": bundle.key})
    assert posted.status == 200
    context = ssl.create_default_context()
    _CA.configure_trust(context)

    def served_names() -> str:
        with socket.create_connection(("127.0.0.1", portal.proxy_tls_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="x.b.test") as tls:
            cert = tls.getpeercert()
            return str(cert.get("subjectAltName"))

    assert "*.b.test" in served_names()  # verified against the test CA: the API's cert
