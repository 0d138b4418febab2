"""Route, cert, vip and error page commands with their flags."""

from __future__ import annotations

import json
from pathlib import Path

import trustme

from tests.cli.conftest import Cli, one_line
from tests.conftest import PortalServer

SUCCESS = '{"msg":"Success"}\n'


def test_route_commands(cli: Cli, empty: PortalServer) -> None:
    route = one_line(cli(
        "add-route", "-s", "api", "-d", "example.test", "-p", "/v1",
        "--targets", "http://10.0.0.1:8080", "--targets", "http://10.0.0.2:8080",
        "--fwdpath", "/x", "--endpoint", "/health", "--expected-code", "204",
        "--expected-body", "ok", "--expected-header", "X-Up:1", "--host", "h.test",
        "--timeout", "500", "--attempts", "2",
    ))
    assert route == {
        "subdomain": "api", "domain": "example.test", "path": "/v1",
        "targets": ["http://10.0.0.1:8080", "http://10.0.0.2:8080"], "fwdpath": "/x", "page": "",
        "endpoint": "/health", "expected_code": 204, "expected_body": "ok",
        "expected_header": "X-Up:1", "host": "h.test", "timeout": 500, "attempts": 2,
    }
    paged = one_line(cli("add-route", "-d", "a.test", "-p", "/p",
                         "-j", '{"Page": "hi", "path": "/q"}'))
    assert (paged["domain"], paged["path"], paged["page"]) == ("a.test", "/q", "hi")
    assert one_line(cli("show-routes")) == [route, paged]
    assert cli("remove-route", "-s", "api", "-d", "example.test", "-p", "/v1").out == SUCCESS
    replaced = one_line(cli("set-routes", "-j", '[{"domain": "b.test"}, {"domain": "c.test"}]'))
    assert [r["domain"] for r in replaced] == ["b.test", "c.test"]
    assert cli("remove-route", "-j", '{"domain": "b.test"}').out == SUCCESS
    assert [r["domain"] for r in one_line(cli("show-routes"))] == ["c.test"]


def _bundle(tmp_path: Path, name: str) -> tuple[str, str, Path, Path]:
    leaf = trustme.CA().issue_cert(name, f"*.{name}", common_name=name)
    cert = "".join(b.bytes().decode() for b in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes().decode()
    (tmp_path / f"{name}.crt").write_text(cert)
    (tmp_path / f"{name}.key").write_text(key)
    return cert, key, tmp_path / f"{name}.crt", tmp_path / f"{name}.key"


def test_cert_commands(cli: Cli, empty: PortalServer, tmp_path: Path) -> None:
    cert, key, cert_file, key_file = _bundle(tmp_path, "c.test")
    cert2, key2, _, _ = _bundle(tmp_path, "d.test")
    assert one_line(cli("add-cert", "-k", f"@{key_file}", "-C", f"@{cert_file}")) == {
        "cert": cert, "key": key}
    assert one_line(cli("add-cert", "-k", key2, "-C", cert2)) == {"cert": cert2, "key": key2}
    table = cli("show-certs", "--output", "table")
    lines = table.out.splitlines()
    assert lines[0].split() == ["CN", "SANS", "NOT", "AFTER", "FINGERPRINT"]
    assert lines[1].split()[:2] == ["c.test", "c.test,*.c.test"]
    assert lines[2].split()[:2] == ["d.test", "d.test,*.d.test"]
    assert "BEGIN" not in table.out
    assert cli("remove-cert", "-C", f"@{cert_file}").out == SUCCESS
    assert one_line(cli("show-certs")) == [{"cert": cert2, "key": key2}]
    assert one_line(cli("set-certs", "-j", json.dumps([{"cert": cert, "key": key}]))) == [
        {"cert": cert, "key": key}]


def test_vip_commands(cli: Cli, empty: PortalServer) -> None:
    # The server runs with --no-vips: vips are recorded, no interface is touched.
    vip = one_line(cli("add-vip", "-I", "10.254.0.1/32", "-F", "lo", "-A", "lo:cli"))
    assert vip == {"ip": "10.254.0.1/32", "interface": "lo", "alias": "lo:cli"}
    assert one_line(cli("show-vips")) == [vip]
    replaced = one_line(cli("set-vips", "-j", '[{"ip": "10.254.0.2", "interface": "lo"}]'))
    assert replaced == [{"ip": "10.254.0.2", "interface": "lo", "alias": ""}]
    assert cli("remove-vip", "-I", "10.254.0.2", "-F", "lo").out == SUCCESS
    assert cli("show-vips").out == "[]\n"


def test_error_page_commands(cli: Cli, server: PortalServer) -> None:
    pages = {"no-routes": "nothing here", "no-healthy": "all down"}
    assert one_line(cli("set-errors", "-j", json.dumps(pages))) == pages
    assert one_line(cli("show-errors")) == pages
    assert cli("show-errors", "--output", "table").out.splitlines() == [
        "PAGE        BODY", 'no-routes   "nothing here"', 'no-healthy  "all down"']
