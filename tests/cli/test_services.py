"""Service and server commands with Portal's flags, and the spec's curl session as commands."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli, Clis, one_line
from tests.conftest import PortalServer
from tests.http import call
from tests.unit.certs import BUNDLES

SID = "tcp-127_0_0_3-1234"
SERVER_JSON = ('{"id":"192_168_0_1-8080","host":"192.168.0.1","port":8080,"forwarder":"m",'
               '"weight":5,"upper_threshold":10,"lower_threshold":1}')


def test_the_curl_session_of_the_spec_with_the_cli(cli: Cli, empty: PortalServer) -> None:
    run = cli("add-service", "-O", "127.0.0.3", "-R", "1234", "-T", "tcp", "-s", "rr",
              "-e", "0", "-n", "")
    assert run.out == ('{"id":"tcp-127_0_0_3-1234","host":"127.0.0.3","port":1234,"type":"tcp",'
                       '"scheduler":"rr","persistence":0,"netmask":""}\n')
    run = cli("add-server", "-I", SID, "-o", "192.168.0.1", "-p", "8080", "-f", "m", "-w", "5",
              "-u", "10", "-l", "1")
    assert run.out == SERVER_JSON + "\n"
    assert cli("remove-server", "-I", SID, "-S", "192_168_0_1-8080").out == '{"msg":"Success"}\n'
    servers = [{"host": f"192.168.0.{i}", "port": 8080, "forwarder": "m", "weight": w,
                "upper_threshold": 10, "lower_threshold": 1} for i, w in ((3, 5), (4, 4))]
    services = [{"host": "127.0.0.3", "port": 1234, "type": "tcp", "scheduler": "rr",
                 "persistence": 0, "netmask": "", "servers": servers}]
    answer = one_line(cli("set-services", "-j", json.dumps(services)))
    assert [s["id"] for s in answer[0]["servers"]] == ["192_168_0_3-8080", "192_168_0_4-8080"]
    run = cli("add-route", "-j", '{"domain":"portal.test", "page":"portal works\\n"}')
    assert run.out == ('{"subdomain":"","domain":"portal.test","path":"","targets":null,'
                       '"fwdpath":"","page":"portal works\\n","endpoint":"","expected_code":200,'
                       '"expected_body":"","expected_header":"","host":"","timeout":3000,'
                       '"attempts":3}\n')
    assert cli("remove-route", "-d", "portal.test").out == '{"msg":"Success"}\n'
    assert cli("show-routes").out == "[]\n"
    bundle = BUNDLES[0]
    cert = {"key": bundle.key, "cert": bundle.cert}
    assert one_line(cli("add-cert", "-j", json.dumps(cert))) == {"cert": bundle.cert,
                                                                 "key": bundle.key}


def test_service_commands(cli: Cli, clis: Clis, empty: PortalServer) -> None:
    added = one_line(cli("add-service", "-O", "10.1.0.1", "-R", "80"))
    assert added == {"id": "tcp-10_1_0_1-80", "host": "10.1.0.1", "port": 80, "type": "tcp",
                     "scheduler": "wlc", "persistence": 0, "netmask": ""}
    # The id is given (-I) or computed from -O/-R/-T, as Portal's client did.
    by_id, by_flags = clis(["show-service", "-I", "tcp-10_1_0_1-80"],
                           ["show-service", "-O", "10.1.0.1", "-R", "80", "-T", "tcp"])
    assert one_line(by_id) == one_line(by_flags) == added
    changed = one_line(cli("set-service", "-O", "10.1.0.1", "-R", "80", "-s", "sh", "-e", "30",
                           "-n", "255.255.255.0"))
    assert (changed["scheduler"], changed["persistence"], changed["netmask"]) == (
        "sh", 30, "255.255.255.0")
    assert one_line(cli("show-services")) == [changed]
    assert cli("remove-service", "-I", "tcp-10_1_0_1-80").out == '{"msg":"Success"}\n'
    gone = cli("show-service", "-I", "tcp-10_1_0_1-80")
    assert (gone.code, gone.out, gone.err) == (1, "", "No Service Found\n")


def test_json_is_merged_over_the_flags(cli: Cli, empty: PortalServer) -> None:
    run = cli("add-service", "-O", "10.2.0.1", "-R", "80", "-s", "rr", "-e", "5",
              "-j", '{"Scheduler": "sh", "port": 81, "persistence": null}')
    # Keys match case-insensitively; null leaves the flag's value (Go's decoder did both).
    assert one_line(run) == {"id": "tcp-10_2_0_1-81", "host": "10.2.0.1", "port": 81,
                             "type": "tcp", "scheduler": "sh", "persistence": 5, "netmask": ""}


def test_set_service_finds_it_by_the_flags_and_takes_the_json(
    cli: Cli, empty: PortalServer
) -> None:
    one_line(cli("add-service", "-O", "10.3.0.1", "-R", "80"))
    moved = one_line(cli("set-service", "-O", "10.3.0.1", "-R", "80", "-j", '{"host":"10.3.0.2"}'))
    assert moved["id"] == "tcp-10_3_0_2-80"
    assert [s["id"] for s in one_line(cli("show-services"))] == ["tcp-10_3_0_2-80"]


def test_server_commands_with_computed_ids(cli: Cli, clis: Clis, empty: PortalServer) -> None:
    one_line(cli("add-service", "-O", "10.4.0.1", "-R", "53", "-T", "udp"))
    service = ("-O", "10.4.0.1", "-R", "53", "-T", "udp")  # -> udp-10_4_0_1-53
    added = one_line(cli("add-server", *service, "-o", "10.9.0.1", "-p", "5353"))
    assert added == {"id": "10_9_0_1-5353", "host": "10.9.0.1", "port": 5353, "forwarder": "g",
                     "weight": 1, "upper_threshold": 0, "lower_threshold": 0}
    by_id, by_flags, listed = clis(
        ["show-server", *service, "-S", "10_9_0_1-5353"],
        ["show-server", "-I", "udp-10_4_0_1-53", "-o", "10.9.0.1", "-p", "5353"],
        ["show-servers", *service],
    )
    assert one_line(by_id) == one_line(by_flags) == added
    assert one_line(listed) == [added]
    servers = [{"host": "10.9.0.2", "port": 53, "weight": 3}, {"host": "10.9.0.3", "port": 53}]
    replaced = one_line(cli("set-servers", *service, "-j", json.dumps(servers)))
    assert [(s["id"], s["weight"]) for s in replaced] == [("10_9_0_2-53", 3), ("10_9_0_3-53", 1)]
    assert cli("remove-server", *service, "-o", "10.9.0.2", "-p", "53").out == '{"msg":"Success"}\n'
    assert [s["id"] for s in one_line(cli("show-servers", *service))] == ["10_9_0_3-53"]
    assert call("GET", empty.url + "/services/udp-10_4_0_1-53/servers/10_9_0_3-53").status == 200


def test_add_server_json_over_flags(cli: Cli, empty: PortalServer) -> None:
    one_line(cli("add-service", "-O", "10.5.0.1", "-R", "80"))
    run = cli("add-server", "-I", "tcp-10_5_0_1-80", "-o", "10.9.1.1", "-p", "80", "-w", "2",
              "-j", '{"weight": 7, "forwarder": "m"}')
    assert (one_line(run)["weight"], run.json["forwarder"]) == (7, "m")
