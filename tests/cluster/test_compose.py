"""docker-compose.yml parses, runs what the README says, and each node's settings are ones
portal-es accepts (the ${...} secrets given values)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from portal_es.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def substituted(value: str) -> str:
    """${VAR:?message} -> a value, as `docker compose` would with VAR set."""
    return re.sub(r"\$\{([A-Z_]+)(:\?[^}]*)?\}", lambda m: f"value-of-{m.group(1).lower()}",
                  value)


def test_compose_runs_rabbitmq_postgresql_and_three_nodes() -> None:
    services = compose()["services"]
    assert set(services) == {"rabbitmq", "postgres", *NODES}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("rabbitmq", "postgres"):
        assert services[name]["healthcheck"]["test"]
    for name in NODES:
        node = services[name]
        assert node["build"] == "." and (ROOT / "Dockerfile").exists()
        assert {"NET_ADMIN", "NET_RAW"} <= set(node["cap_add"])  # nftables, vips, ARP
        assert node["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                      "rabbitmq": {"condition": "service_healthy"}}
        env = {k: substituted(str(v)) for k, v in node["environment"].items()}
        assert env["PORTAL_ES_NODE_NAME"] == name
        assert env["PORTAL_ES_CLUSTER_CONNECTION"].startswith("amqp://")
        assert "@rabbitmq:5672" in env["PORTAL_ES_CLUSTER_CONNECTION"]
        assert env["PORTAL_ES_DB_CONNECTION"].startswith("postgresql://")
        assert "@postgres:5432" in env["PORTAL_ES_DB_CONNECTION"]
        # The settings a node starts with: accepted (cluster mode's refusals do not fire).
        settings = load_settings({}, environ=env)
        assert settings.cluster_token and settings.balancer == "nftables"
        assert settings.api_host == "0.0.0.0" and settings.api_token
    ports = [p for n in NODES for p in services[n]["ports"]]
    assert len(ports) == len(set(ports))  # the three nodes can run on one host


def test_the_readme_names_what_compose_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Cluster", 1)[1].split("\n## ", 1)[0]
    assert "docker-compose.yml" in section and "docker compose up" in section
    for name in ("rabbitmq", "postgres", *NODES, "NET_ADMIN", "NET_RAW"):
        assert f"`{name}`" in section, name
    services = compose()["services"]
    host_ports = sorted(p.split(":")[0] for n in NODES for p in services[n]["ports"]
                        if p.endswith(":8443"))
    assert host_ports == ["8441", "8442", "8443"] and "8441-8443" in section
    for variable in ("PORTAL_ES_CLUSTER_TOKEN", "PORTAL_ES_API_TOKEN",
                     "PORTAL_ES_CERT_KEY_CIPHER"):
        assert variable in section
        assert variable in (ROOT / "docker-compose.yml").read_text()
