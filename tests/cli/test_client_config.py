"""Where the client connects and with which token (flags > env > file), and how it fails."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli, portal_es, portal_es_many
from tests.conftest import PortalServer, free_port
from tests.http import call

UNAUTHORIZED = ("Could not contact portal - 401 Unauthorized. "
                "Please specify api token (-t 'token')\n")


def test_token_and_tls(portal_factory: type[PortalServer], tmp_path: Path) -> None:
    """A TLS server (self-signed) with a token: HTTPS is the default, the token is required."""
    server = portal_factory(tmp_path / "node", token="s3cret", tls=True).start()
    port = str(server.port)
    none, before, after, plain = portal_es_many(
        ["show-services", "-P", port],
        ["-t", "s3cret", "-P", port, "show-services"],
        ["show-services", "-P", port, "-t", "s3cret"],
        ["show-services", "-P", port, "-t", "s3cret", "-i"],
    )
    assert (none.code, none.out, none.err) == (1, "", UNAUTHORIZED)
    assert (before.code, before.out) == (0, "[]\n")
    assert (after.code, after.out) == (0, "[]\n")
    assert plain.code == 1 and f"http://127.0.0.1:{port}/services" in plain.err
    # flag > env > file, each level with a different token.
    conf = tmp_path / "client.yaml"
    conf.write_text(f"api-port: {port}\napi-token: s3cret\nlog-level: DEBUG\n")
    from_file, flag_over_file = portal_es_many(
        ["show-services", "-c", str(conf)],
        ["show-services", "-c", str(conf), "--api-token", "wrong"],
    )
    assert (from_file.code, from_file.out) == (0, "[]\n")
    assert (flag_over_file.code, flag_over_file.err) == (1, UNAUTHORIZED)
    env_over_file, flag_over_env, conf_by_env = portal_es_many(
        ["show-services", "-c", str(conf)],
        ["-c", str(conf), "show-services", "-t", "s3cret"],
        ["show-services", "-t", "s3cret"],
        env={"PORTAL_ES_API_TOKEN": "wrong", "PORTAL_ES_CONF": str(conf)},
    )
    assert (env_over_file.code, env_over_file.err) == (1, UNAUTHORIZED)
    assert (flag_over_env.code, flag_over_env.out) == (0, "[]\n")
    assert (conf_by_env.code, conf_by_env.out) == (0, "[]\n")


def test_config_file_sets_port_and_insecure(server: PortalServer, tmp_path: Path) -> None:
    conf = tmp_path / "client.json"
    conf.write_text(json.dumps({"api-port": server.port, "insecure": True}))
    elsewhere = str(free_port())
    from_file, = portal_es_many(["show-vips", "-c", str(conf)])
    env_over_file, flag_over_env = portal_es_many(
        ["show-vips", "-c", str(conf)],
        ["show-vips", "-c", str(conf), "--api-port", str(server.port)],
        env={"PORTAL_ES_API_PORT": elsewhere},
    )
    assert from_file.code == 0 and from_file.out.startswith("[")
    assert env_over_file.code == 1 and f"http://127.0.0.1:{elsewhere}/vips" in env_over_file.err
    assert flag_over_env.code == 0 and flag_over_env.out == from_file.out


def test_connection_refused_names_the_url() -> None:
    port = free_port()
    run = portal_es("show-services", "-i", "-P", str(port))
    assert run.code == 1 and run.out == ""
    assert run.err == (f"Could not contact portal at http://127.0.0.1:{port}/services - "
                       "connection refused (is portal-es running there?)\n")


def test_api_errors_exit_1_with_the_api_message(cli: Cli, server: PortalServer) -> None:
    in_use = cli("add-service", "-O", "127.0.0.1", "-R", str(server.port))
    assert (in_use.code, in_use.out, in_use.err) == (
        1, "", f"Socket in use: '127.0.0.1:{server.port}'\n")
    protocol = cli("add-service", "-O", "10.8.0.1", "-R", "80", "-T", "sctp")
    assert (protocol.code, protocol.err) == (1, "Unsupported Protocol - 'sctp'\n")


def _head(server: PortalServer) -> object:
    return call("GET", f"{server.url}/events?limit=1000").json


def test_bad_input_exits_2_and_sends_nothing(server: PortalServer, tmp_path: Path) -> None:
    before = _head(server)
    port = str(server.port)
    runs = portal_es_many(
        ["set-services", "-j", "{not json", "-i", "-P", port],
        ["set-services", "-j", '{"a": 1}', "-i", "-P", port],
        ["set-services", "-i", "-P", port],
        ["add-service", "-O", "10.8.0.2", "-R", "eighty", "-i", "-P", port],
        ["add-service", "-O", "10.8.0.2", "-R", "80", "-j", "[1]", "-i", "-P", port],
        ["remove-service", "-O", "10.8.0.2", "-i", "-P", port],
        ["add-cert", "-C", f"@{tmp_path / 'missing.pem'}", "-i", "-P", port],
        ["events", "--since-time", "yesterday", "-i", "-P", port],
        ["add-service", "-O", "10.8.0.2", "-R", "80", "--output", "xml", "-i", "-P", port],
    )
    assert [r.code for r in runs] == [2] * len(runs), [r.err for r in runs]
    messages = [r.err.splitlines()[-1] for r in runs]
    assert messages[0].startswith("Error: Invalid value for '-j': not valid JSON")
    assert messages[1] == "Error: Invalid value for '-j': must be a JSON array"
    assert messages[2] == ("Error: Invalid value for '-j': required: the JSON array of the "
                           "whole new list")
    assert "'--service-port' / '-R'" in messages[3]
    assert messages[4] == "Error: Invalid value for '-j': must be a JSON object"
    assert messages[5] == ("Error: Invalid value for '-I' or '-O'/'-R': Must enter host and "
                           "port combo or id of service")
    assert "missing.pem" in messages[6] and "No such file" in messages[6]
    assert "'--since-time'" in messages[7]
    assert "'--output'" in messages[8]
    bad_env = portal_es("show-services", env={"PORTAL_ES_API_PORT": "many"})
    assert bad_env.code == 2 and "api-port" in bad_env.err
    assert _head(server) == before
