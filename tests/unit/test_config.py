"""Settings: flags > environment > file > defaults, and clear refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portal_es.config import ConfigError, load_settings


def test_defaults_are_portals() -> None:
    s = load_settings({}, environ={})
    assert (s.api_host, s.api_port, s.proxy_http, s.proxy_tls, s.log_level) == (
        "127.0.0.1", 8443, "0.0.0.0:80", "0.0.0.0:443", "INFO")
    assert s.insecure is False and s.api_token == ""


@pytest.mark.parametrize(("name", "text"), [
    ("c.json", '{"api-port": 9000, "api-token": "file", "insecure": true}'),
    ("c.yaml", "api-port: 9000\napi-token: file\ninsecure: true\n"),
    ("c.toml", 'api-port = 9000\napi-token = "file"\ninsecure = true\n'),
    ("c.conf", '{"api-port": 9000, "api-token": "file", "insecure": true}'),
])
def test_config_file_formats(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    s = load_settings({"conf": str(tmp_path / name)}, environ={})
    assert (s.api_port, s.api_token, s.insecure) == (9000, "file", True)


def test_precedence_flags_then_env_then_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.json"
    conf.write_text('{"api-port": 9000, "api-token": "file", "log-level": "debug"}')
    env = {"PORTAL_ES_API_PORT": "9100", "PORTAL_ES_API_TOKEN": "env", "PORTAL_ES_CONF": str(conf)}
    s = load_settings({"api-token": "flag", "api-port": None}, environ=env)
    assert (s.api_token, s.api_port, s.log_level) == ("flag", 9100, "DEBUG")


def test_env_booleans() -> None:
    assert load_settings({}, environ={"PORTAL_ES_INSECURE": "yes"}).insecure is True
    assert load_settings({}, environ={"PORTAL_ES_INSECURE": "0"}).insecure is False


@pytest.mark.parametrize(("flags", "message"), [
    ({"api-port": 0}, "api-port"),
    ({"api-port": "x"}, "api-port"),
    ({"proxy-http": "0.0.0.0:80", "proxy-tls": "0.0.0.0:80"}, "must differ"),
    ({"proxy-tls": "0.0.0.0:8443"}, "proxy-tls uses the API's port"),
    ({"proxy-http": "nonsense"}, "host:port"),
    ({"log-level": "loud"}, "log-level"),
    ({"balancer": "magic"}, "balancer"),
    ({"no-such-flag": 1}, "unknown setting(s): no-such-flag"),
])
def test_bad_settings_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(flags, environ={})


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings({"conf": str(tmp_path / "bad.json")}, environ={})
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings({"conf": str(tmp_path / "list.yaml")}, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"conf": str(tmp_path / "missing.toml")}, environ={})
