"""--output table, and the global flags before, after and on both sides of the subcommand."""

from __future__ import annotations

from tests.cli.conftest import Cli, portal_es, portal_es_many
from tests.conftest import PortalServer, free_port
from tests.http import call

SERVICE = {"host": "10.6.0.1", "port": 80, "scheduler": "rr", "servers": [
    {"host": "10.6.1.1", "port": 8080, "weight": 5},
    {"host": "10.6.1.2", "port": 8080, "forwarder": "m"},
]}


def test_services_table_shows_each_service_with_its_servers(
    cli: Cli, empty: PortalServer
) -> None:
    assert call("PUT", empty.url + "/services", [SERVICE, {"host": "10.6.0.2", "port": 443}]
                ).status == 200
    lines = cli("show-services", "--output", "table").out.splitlines()
    assert lines == [
        "SERVICE           TYPE  HOST      PORT  SCHEDULER  PERSISTENCE  NETMASK  INTERFACE",
        "tcp-10_6_0_1-80   tcp   10.6.0.1  80    rr         0            -        -",
        "    SERVER         HOST      PORT  FORWARDER  WEIGHT  UPPER  LOWER",
        "    10_6_1_1-8080  10.6.1.1  8080  g          5       0      0",
        "    10_6_1_2-8080  10.6.1.2  8080  m          1       0      0",
        "tcp-10_6_0_2-443  tcp   10.6.0.2  443   wlc        0            -        -",
    ]


def test_tables_of_routes_vips_and_single_objects(
    server: PortalServer, empty: PortalServer
) -> None:
    call("POST", server.url + "/routes", {"domain": "t.test", "path": "/a",
                                          "targets": ["http://10.0.0.9"], "endpoint": "/up"})
    call("POST", server.url + "/services", {"host": "10.6.0.3", "port": 80})
    port = str(server.port)
    routes, vips, one, removed = portal_es_many(
        # --output is a global flag too: before the subcommand, it belongs to the root.
        ["--output", "table", "-i", "-P", port, "show-routes"],
        ["show-vips", "--output", "table", "-i", "-P", port],
        ["show-service", "-I", "tcp-10_6_0_3-80", "--output", "table", "-i", "-P", port],
        ["remove-service", "-I", "nothing", "--output", "table", "-i", "-P", port],
    )
    assert routes.out.splitlines() == [
        "SUBDOMAIN  DOMAIN  PATH  TARGETS          FWDPATH  PAGE  HEALTH CHECK",
        "-          t.test  /a    http://10.0.0.9  -        -     /up expect 200",
    ]
    assert vips.out == "(no vips)\n"
    assert one.out.splitlines()[1].split()[:4] == ["tcp-10_6_0_3-80", "tcp", "10.6.0.3", "80"]
    assert removed.out == "Success\n"


def test_global_flags_before_after_and_both(server: PortalServer, empty: PortalServer) -> None:
    call("POST", server.url + "/services", {"host": "10.6.0.4", "port": 80})
    port, wrong = str(server.port), str(free_port())
    before, after, split, both = portal_es_many(
        ["-i", "-P", port, "-H", "127.0.0.1", "show-services"],
        ["show-services", "-i", "-P", port, "-H", "127.0.0.1"],
        ["-i", "show-services", "--api-port", port],
        # The command's own flag wins over the root's.
        ["-P", wrong, "--insecure", "show-services", "-P", port],
    )
    expected = '[{"id":"tcp-10_6_0_4-80","host":"10.6.0.4","port":80,"type":"tcp",' \
               '"scheduler":"wlc","persistence":0,"netmask":""}]\n'
    assert [r.out for r in (before, after, split, both)] == [expected] * 4


def test_root_short_flags_do_not_leak_into_commands(cli: Cli, empty: PortalServer) -> None:
    # -s after the subcommand is add-service's scheduler, not the root's --server.
    added = cli("add-service", "-O", "10.6.0.5", "-R", "80", "-s", "rr")
    assert added.code == 0 and '"scheduler":"rr"' in added.out
    server_flag = portal_es("-s", "show-services")
    assert server_flag.code == 2 and "takes no command" in server_flag.err
    work_dir = portal_es("--work-dir", "/tmp/x", "show-services")
    assert work_dir.code == 2 and "'--work-dir'" in work_dir.err and "server only" in work_dir.err
