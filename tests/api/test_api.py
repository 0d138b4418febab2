"""The REST API over real HTTP against a real server process: Portal's shapes and errors."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PortalServer
from tests.http import Answer, call
from tests.unit.certs import BUNDLES

SERVICE = {"host": "127.0.0.3", "port": 1234, "type": "tcp", "scheduler": "rr",
           "persistence": 0, "netmask": ""}
SERVER = {"host": "192.168.0.1", "port": 8080, "forwarder": "m", "weight": 5,
          "upper_threshold": 10, "lower_threshold": 1}
SID = "tcp-127_0_0_3-1234"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    s = PortalServer(tmp_path_factory.mktemp("api") / "node").start()
    yield s
    s.stop()


@pytest.fixture
def api(server: PortalServer) -> Iterator[PortalServer]:
    """The shared server, emptied before each test (through the API itself)."""
    for path in ("/services", "/routes", "/certs", "/vips"):
        assert call("PUT", server.url + path, []).status == 200
    call("PUT", server.url + "/errors", {"no-routes": "NoRoutes", "no-healthy": "NoHealthy"})
    yield server


def positions(s: PortalServer) -> list[int]:
    """Every position in the log, paging through GET /events."""
    out: list[int] = []
    since = 0
    while True:
        page = call("GET", f"{s.url}/events?limit=1000&since={since}").json
        out += [e["position"] for e in page["events"]]
        if page["next"] is None:
            return out
        since = page["next"]


def events_head(s: PortalServer) -> int:
    return max(positions(s), default=0)


def log_size(s: PortalServer) -> int:
    return len(positions(s))


# --- the documented curl session, byte for byte ---------------------------------------------


def test_portal_curl_session(api: PortalServer) -> None:
    u = api.url
    a = call("POST", u + "/services", SERVICE)
    assert a.status == 200 and a.headers["Content-Type"].startswith("application/json")
    assert a.text == ('{"id":"tcp-127_0_0_3-1234","host":"127.0.0.3","port":1234,"type":"tcp",'
                      '"scheduler":"rr","persistence":0,"netmask":""}')
    a = call("POST", f"{u}/services/{SID}/servers", SERVER)
    assert a.text == ('{"id":"192_168_0_1-8080","host":"192.168.0.1","port":8080,"forwarder":"m",'
                      '"weight":5,"upper_threshold":10,"lower_threshold":1}')
    a = call("DELETE", f"{u}/services/{SID}/servers/192_168_0_1-8080")
    assert a.text == '{"msg":"Success"}'
    servers = [dict(SERVER, host="192.168.0.3"), dict(SERVER, host="192.168.0.4", weight=4)]
    a = call("PUT", u + "/services", [dict(SERVICE, servers=servers)])
    assert a.status == 200
    assert [s["id"] for s in a.json[0]["servers"]] == ["192_168_0_3-8080", "192_168_0_4-8080"]
    assert list(a.json[0]) == ["id", "host", "port", "type", "scheduler", "persistence",
                               "netmask", "servers"]
    a = call("POST", u + "/routes", {"domain": "portal.test", "page": "portal works\n"})
    assert a.text == ('{"subdomain":"","domain":"portal.test","path":"","targets":null,'
                      '"fwdpath":"","page":"portal works\\n","endpoint":"","expected_code":200,'
                      '"expected_body":"","expected_header":"","host":"","timeout":3000,'
                      '"attempts":3}')
    assert call("DELETE", u + "/routes?domain=portal.test").text == '{"msg":"Success"}'
    assert call("GET", u + "/routes").json == []
    cert = {"key": BUNDLES[0].key, "cert": BUNDLES[0].cert}
    a = call("POST", u + "/certs", cert)
    assert a.status == 200 and a.json == {"cert": cert["cert"], "key": cert["key"]}


# --- services and servers ---------------------------------------------------------------------


def test_services_crud(api: PortalServer) -> None:
    u = api.url
    assert call("GET", u + "/services").text == "[]"
    created = call("POST", u + "/services", {"host": "10.0.0.1", "port": 80}).json
    assert created == {"id": "tcp-10_0_0_1-80", "host": "10.0.0.1", "port": 80, "type": "tcp",
                       "scheduler": "wlc", "persistence": 0, "netmask": ""}
    before = log_size(api)
    again = call("POST", u + "/services", {"host": "10.0.0.1", "port": 80, "scheduler": "rr"})
    assert again.status == 200 and again.json == created  # existing id: nothing changes
    assert log_size(api) == before
    assert call("GET", u + "/services/tcp-10_0_0_1-80").json == created
    put = call("PUT", u + "/services/tcp-10_0_0_1-80", {"host": "10.0.0.2", "port": 81,
                                                         "type": "udp"})
    assert put.json["id"] == "udp-10_0_0_2-81"
    assert call("GET", u + "/services/tcp-10_0_0_1-80").json == {"error": "No Service Found"}
    assert [s["id"] for s in call("GET", u + "/services").json] == ["udp-10_0_0_2-81"]
    assert call("PUT", u + "/services/nope", {"host": "10.0.0.2", "port": 81}).status == 404
    assert call("DELETE", u + "/services/udp-10_0_0_2-81").json == {"msg": "Success"}
    assert call("DELETE", u + "/services/udp-10_0_0_2-81").json == {"msg": "Success"}
    assert call("GET", u + "/services").json == []


def test_put_services_dedups_and_diffs(api: PortalServer) -> None:
    u = api.url
    call("PUT", u + "/services", [{"host": f"10.0.0.{n}", "port": 80} for n in (1, 2)])
    before = events_head(api)
    answer = call("PUT", u + "/services", [
        {"host": "10.0.0.2", "port": 80},
        {"host": "10.0.0.3", "port": 80, "scheduler": "rr"},
        {"host": "10.0.0.3", "port": 80, "scheduler": "sh"},  # same id: the last wins
    ]).json
    assert [(s["id"], s["scheduler"]) for s in answer] == [
        ("tcp-10_0_0_2-80", "wlc"), ("tcp-10_0_0_3-80", "sh")]
    types = [e["type"] for e in call("GET", f"{u}/events?since={before}").json["events"]]
    assert sorted(types) == ["ServiceAdded", "ServiceRemoved"]  # 10.0.0.2 untouched
    assert call("PUT", u + "/services", raw=b"null").json == []  # null clears


def test_servers_crud(api: PortalServer) -> None:
    u = api.url
    call("POST", u + "/services", SERVICE)
    base = f"{u}/services/{SID}/servers"
    assert call("GET", base).json == []
    assert call("POST", base, SERVER).json["id"] == "192_168_0_1-8080"
    assert call("POST", base, dict(SERVER, weight=1)).json["weight"] == 5  # existing: unchanged
    assert call("GET", base + "/192_168_0_1-8080").json["weight"] == 5
    assert call("GET", base + "/10_0_0_9-1").json == {"error": "No Server Found"}
    order = [dict(SERVER, host=h) for h in ("192.168.0.4", "192.168.0.1", "192.168.0.3")]
    assert [s["host"] for s in call("PUT", base, order).json] == [
        "192.168.0.4", "192.168.0.1", "192.168.0.3"]
    assert call("DELETE", base + "/10_0_0_9-1").json == {"msg": "Success"}
    assert call("GET", f"{u}/services/nope/servers").json == {"error": "No Service Found"}
    assert call("POST", f"{u}/services/nope/servers", SERVER).status == 404
    defaults = call("POST", base, {"host": "10.0.0.9", "port": 9}).json
    assert (defaults["forwarder"], defaults["weight"]) == ("g", 1)


def test_socket_in_use(api: PortalServer) -> None:
    answer = call("POST", api.url + "/services", {"host": "127.0.0.1", "port": api.port})
    assert answer.status == 400
    assert answer.json == {"error": f"Socket in use: '127.0.0.1:{api.port}'"}


def test_keys_are_case_insensitive_and_unknown_keys_ignored(api: PortalServer) -> None:
    answer = call("POST", api.url + "/services",
                  {"HOST": "10.0.0.5", "Port": 80, "Scheduler": "rr", "whatever": [1]})
    assert answer.status == 200 and answer.json["scheduler"] == "rr"


# --- routes, certs, vips, errors -------------------------------------------------------------


def test_routes(api: PortalServer) -> None:
    u = api.url
    route = {"subdomain": "api", "domain": "example.test", "path": "/v1",
             "targets": ["http://127.0.0.1:9000"], "endpoint": "/health", "expected_code": 204,
             "timeout": 500, "attempts": 2, "host": "api.example.test"}
    posted = call("POST", u + "/routes", route).json
    # Portal dropped the health fields on POST; they are kept.
    assert posted["endpoint"] == "/health" and posted["expected_code"] == 204
    assert call("GET", u + "/routes").json == [posted]
    call("PUT", u + "/routes", [route, {"domain": "b.test", "page": "x"}])
    assert len(call("GET", u + "/routes").json) == 2
    body = json.dumps({"subdomain": "api", "domain": "example.test", "path": "/v1"}).encode()
    assert call("DELETE", u + "/routes", raw=body).json == {"msg": "Success"}
    assert [r["domain"] for r in call("GET", u + "/routes").json] == ["b.test"]


def test_certs(api: PortalServer) -> None:
    u = api.url
    a, b = ({"cert": x.cert, "key": x.key} for x in BUNDLES[:2])
    call("POST", u + "/certs", a)
    before = log_size(api)
    call("POST", u + "/certs", a)  # the same bundle again: no duplicate (Portal appended one)
    assert log_size(api) == before
    assert call("PUT", u + "/certs", [b, a]).json == [b, a]
    assert call("DELETE", u + "/certs", a).json == {"msg": "Success"}
    assert call("GET", u + "/certs").json == [b]
    bad = call("POST", u + "/certs", {"cert": "-----BEGIN CERTIFICATE-----\nnope", "key": b["key"]})
    assert bad.status == 400 and "cert" in bad.json["error"]
    mismatch = call("POST", u + "/certs", {"cert": a["cert"], "key": b["key"]})
    assert mismatch.status == 400 and "does not match" in mismatch.json["error"]


def test_vips(api: PortalServer) -> None:
    u = api.url
    vip = {"ip": "192.168.0.100/24", "interface": "eth0", "alias": "eth0:1"}
    assert call("POST", u + "/vips", vip).json == vip
    assert call("POST", u + "/vips", vip).status == 200  # the same: no change
    other = {"ip": "192.168.0.101", "interface": "eth0", "alias": "eth0:1"}
    taken = call("POST", u + "/vips", other)
    assert taken.status == 409 and taken.json == {"error": "Ip or alias already in use"}
    assert call("DELETE", u + "/vips", vip).json == {"msg": "Success"}
    assert call("GET", u + "/vips").json == []


def test_error_pages_persist(api: PortalServer) -> None:
    pages = {"no-routes": "nothing here", "no-healthy": "all down"}
    assert call("PUT", api.url + "/errors", pages).json == pages
    assert call("GET", api.url + "/errors").json == pages


# --- bad input: a clear 4xx, nothing written, server still serving ------------------------------


BAD_SERVICE_BODIES = [
    (b'{"host":"10.0.0.1","port":"80"}', "Bad JSON syntax received in body"),
    (b'["not", "an", "object"]', "Bad JSON syntax received in body"),
    (b'{"host":"10.0.0.1",', "Bad JSON syntax received in body"),
    (b'"just a string"', "Bad JSON syntax received in body"),
    (b'{"host":"10.0.0.1","port":80.5}', "Bad JSON syntax received in body"),
    (b'{"host":"10.0.0.1","port":0}', "port"),
    (b'{"host":"10.0.0.1","port":65536}', "port"),
    (b'{"host":"10.0.0.300","port":80}', "not an IP address"),
    (b'{"host":"10.0.0.1 ","port":80}', "not an IP address"),
    (b'{"host":"a host","port":80}', "not an IP address"),
    (b'{"host":"10.0.0.1","port":80,"type":"sctp"}', "Unsupported Protocol - 'sctp'"),
    (b'{"host":"10.0.0.1","port":80,"scheduler":"fast"}', "Unsupported Scheduler - 'fast'"),
    (b'{"host":"10.0.0.1","port":80,"servers":[{"host":"10.0.0.2","port":1,"forwarder":"x"}]}',
     "Unsupported Forwarder - 'x'"),
    (b'{"host":"10.0.0.1","port":80,"persistence":-1}', "persistence"),
    (b'{"host":"\xff\xfe","port":80}', "Bad JSON syntax received in body"),
    (b'{"port":80}', "host"),
]


@pytest.mark.parametrize(("body", "message"), BAD_SERVICE_BODIES)
def test_bad_service_input(api: PortalServer, body: bytes, message: str) -> None:
    before = log_size(api)
    answer = call("POST", api.url + "/services", raw=body)
    assert answer.status == 400, answer.text
    assert message in answer.json["error"]
    assert log_size(api) == before
    assert call("GET", api.url + "/services").status == 200


@pytest.mark.parametrize(("path", "body"), [
    ("/routes", {"domain": "bad domain"}),
    ("/routes", {"domain": "a.test", "targets": ["ftp://x"]}),
    ("/routes", {"domain": "a.test", "path": "no-slash"}),
    ("/vips", {"ip": "999.1.1.1"}),
    ("/vips", {"ip": "10.0.0.1", "interface": "eth0", "alias": "wlan0:1"}),
    ("/certs", {"cert": "x", "key": "y"}),
    ("/errors", {"no-routes": 5}),
])
def test_bad_input_elsewhere(api: PortalServer, path: str, body: object) -> None:
    before = log_size(api)
    method = "PUT" if path == "/errors" else "POST"
    answer = call(method, api.url + path, body)
    assert answer.status == 400 and answer.json["error"], answer.text
    assert log_size(api) == before


def test_put_list_with_one_bad_item_writes_nothing(api: PortalServer) -> None:
    call("POST", api.url + "/services", {"host": "10.0.0.1", "port": 80})
    before = log_size(api)
    answer = call("PUT", api.url + "/services", [{"host": "10.0.0.2", "port": 80},
                                                  {"host": "10.0.0.3", "port": 0}])
    assert answer.status == 400 and "item 1" in answer.json["error"]
    assert log_size(api) == before
    assert [s["id"] for s in call("GET", api.url + "/services").json] == ["tcp-10_0_0_1-80"]


def test_huge_body_is_refused(api: PortalServer) -> None:
    body = b'{"host":"10.0.0.1","port":80,"netmask":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    answer = call("POST", api.url + "/services", raw=body)
    assert answer.status == 413 and "too large" in answer.json["error"]
    assert call("GET", api.url + "/services").status == 200


def test_unknown_path_is_404(api: PortalServer) -> None:
    answer = call("GET", api.url + "/nothing/here")
    assert answer.status == 404 and "error" in answer.json


# --- versions, audit --------------------------------------------------------------------------


def test_etag_and_if_match(api: PortalServer) -> None:
    u = api.url
    etag = call("GET", u + "/services").headers["ETag"]
    created = call("POST", u + "/services", {"host": "10.0.0.1", "port": 80},
                   headers={"If-Match": etag})
    assert created.status == 200 and created.headers["ETag"] != etag
    stale = call("POST", u + "/services", {"host": "10.0.0.2", "port": 80},
                 headers={"If-Match": etag})
    assert stale.status == 412 and "Stale version" in stale.json["error"]
    assert call("GET", u + "/services").headers["ETag"] == created.headers["ETag"]


def test_events_audit_trail(api: PortalServer) -> None:
    u = api.url
    start = events_head(api)
    call("POST", u + "/services", {"host": "10.0.0.7", "port": 80},
         headers={"X-Request-Id": "req-42"})
    call("DELETE", u + "/services/tcp-10_0_0_7-80")
    page = call("GET", f"{u}/events?since={start}&entity=tcp-10_0_0_7-80").json
    kinds = [(e["type"], e["actor"]) for e in page["events"]]
    assert kinds == [("ServiceAdded", "anonymous"), ("ServiceRemoved", "anonymous")]
    assert page["events"][0]["request_id"] == "req-42"
    removed = page["events"][1]["data"]
    assert removed["previous"]["id"] == "tcp-10_0_0_7-80"  # enough to undo it
    typed = call("GET", f"{u}/events?since={start}&type=ServiceRemoved").json["events"]
    assert [e["type"] for e in typed] == ["ServiceRemoved"]
    paged = call("GET", f"{u}/events?since={start}&limit=1").json
    assert len(paged["events"]) == 1 and paged["next"] == paged["events"][0]["position"]
    assert call("GET", f"{u}/events?limit=x").status == 400
    assert call("GET", f"{u}/events?since_time=yesterday").status == 400


# --- auth, TLS, restart ------------------------------------------------------------------------


def test_token_auth(portal_factory: type[PortalServer], tmp_path: Path) -> None:
    s = portal_factory(tmp_path / "auth", token="s3cret").start()
    assert call("GET", s.url + "/services").status == 401
    assert call("GET", s.url + "/nothing").status == 401  # 401 before anything else
    assert call("POST", s.url + "/services", {"host": "10.0.0.1", "port": 80},
                headers={"X-AUTH-TOKEN": "wrong"}).status == 401
    ok = call("POST", s.url + "/services", {"host": "10.0.0.1", "port": 80},
              headers={"X-AUTH-TOKEN": "s3cret"})
    assert ok.status == 200
    assert call("GET", s.url + "/services?X-AUTH-TOKEN=s3cret").status == 200
    event = call("GET", s.url + "/events", headers={"X-AUTH-TOKEN": "s3cret"}).json["events"][-1]
    assert event["actor"].startswith("token:") and "s3cret" not in event["actor"]


def test_https_with_a_self_signed_cert_kept_across_restarts(
    portal_factory: type[PortalServer], tmp_path: Path
) -> None:
    s = portal_factory(tmp_path / "tls", tls=True).start()
    assert call("GET", s.url + "/services").status == 200
    cert = (tmp_path / "tls" / "api-cert.pem").read_text()
    strict = ssl.create_default_context(cafile=str(tmp_path / "tls" / "api-cert.pem"))
    assert call("GET", s.url + "/services", context=strict).status == 200  # verifiable
    s.stop()
    s.start()
    assert (tmp_path / "tls" / "api-cert.pem").read_text() == cert


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_restart_restores_state(
    portal_factory: type[PortalServer], tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db = request.getfixturevalue("pg_url") if backend == "postgres" else ""
    s = portal_factory(tmp_path / "node", db_connection=db).start()
    call("PUT", s.url + "/services", [dict(SERVICE, servers=[SERVER])])
    call("POST", s.url + "/routes", {"domain": "a.test", "targets": ["http://127.0.0.1:1"]})
    call("POST", s.url + "/certs", {"cert": BUNDLES[2].cert, "key": BUNDLES[2].key})
    call("PUT", s.url + "/errors", {"no-routes": "x", "no-healthy": "y"})
    snapshot = {p: call("GET", s.url + p) for p in ("/services", "/routes", "/certs", "/errors")}
    s.stop()
    s.start()
    for path, before in snapshot.items():
        after: Answer = call("GET", s.url + path)
        assert (after.text, after.headers["ETag"]) == (before.text, before.headers["ETag"]), path


def test_service_by_interface_takes_its_address(api: PortalServer) -> None:
    answer = call("POST", api.url + "/services", {"interface": "lo", "port": 5555})
    assert answer.status == 200
    assert answer.json["host"] == "127.0.0.1" and answer.json["interface"] == "lo"
    assert list(answer.json)[:3] == ["id", "host", "interface"]
    missing = call("POST", api.url + "/services", {"interface": "nope0", "port": 5555})
    assert missing.status == 400 and "nope0" in missing.json["error"]
    bad = call("POST", api.url + "/services", {"interface": "a b/c" * 10, "port": 5555})
    assert bad.status == 400 and "interface" in bad.json["error"]


def test_status_names_the_node_and_its_position(api: PortalServer) -> None:
    call("POST", api.url + "/services", {"host": "10.0.0.8", "port": 80})
    status = call("GET", api.url + "/status").json
    assert status["balancer"] == "none" and status["node"]
    assert status["applied"] == status["head"] > 0 and status["lag"] == 0
    assert status["errors"] == {}
    assert status["drift"] == {"services": {"missing": [], "unexpected": [], "different": []},
                               "vips": {"missing": []}}


def test_errors_carry_the_request_id_too(api: PortalServer) -> None:
    answer = call("POST", api.url + "/services", {"host": "10.0.0.1", "port": 0},
                  headers={"X-Request-Id": "trace-7"})
    assert answer.status == 400 and answer.headers["X-Request-Id"] == "trace-7"
    assert call("GET", api.url + "/nope").headers["X-Request-Id"]


def test_kernel_fields_must_fit_32_bits(api: PortalServer) -> None:
    answer = call("POST", api.url + "/services", {"host": "10.0.0.1", "port": 80,
                                                  "persistence": 10**40})
    assert answer.status == 400 and "persistence" in answer.json["error"]
