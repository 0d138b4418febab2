"""The live server against its own OpenAPI document (schemathesis).

For every operation, generated requests (valid ones, and invalid ones: negative testing) must
get no 5xx, and every answer must conform to the document: a documented status, its content
type, its schema, its headers. Invalid input must be refused with a 4xx.

The operations are collected from `document()` (schemathesis' fixture-based lazy loader does
not work with pytest 9.2: it sets `Function._nodeid`, which pytest no longer has); the first
test checks that the server serves exactly that document.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from portal_es.entrypoints.openapi import EXAMPLES, document
from tests.conftest import PortalServer
from tests.http import call

# Per operation; raise it for a deeper search: PORTAL_ES_FUZZ_EXAMPLES=500 pytest tests/api.
MAX_EXAMPLES = int(os.environ.get("PORTAL_ES_FUZZ_EXAMPLES", "20"))
# Valid data can still be refused (no PEM pair can be generated, a generated interface does
# not exist, 1.0 is a JSON Schema integer but not a Go one): "valid input is accepted" is not
# checked. Every other check is: no 5xx, conformance, invalid input refused, 405 with Allow.
EXCLUDED = [positive_data_acceptance]

# The documented example service (with its example server), restored before each request
# that names it, so that the examples reach the servers' 200 paths.
SERVICE_ID = "tcp-127_0_0_3-1234"
SEED = [{**EXAMPLES["ServiceInput"], "servers": [EXAMPLES["ServerInput"]]}]

schema = schemathesis.openapi.from_dict(document())
# Unknown query parameters and headers are ignored, as by Portal: not a negative case.
schema.config.generation.update(allow_extra_parameters=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    s = PortalServer(tmp_path_factory.mktemp("openapi") / "node").start()
    yield s
    s.stop()
    assert "Traceback" not in s.log, s.log


def test_the_server_serves_the_document(server: PortalServer) -> None:
    answer = call("GET", server.url + "/openapi.json")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json == document()
    assert answer.json["info"]["version"] != "0+unknown"


def test_the_document_is_valid_openapi_31() -> None:
    doc = document()
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert errors == []
    # Every schema compiles, and every example is valid by its schema.
    def validator(name: str) -> jsonschema_rs.Validator:
        return jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{name}", "components": doc["components"]},
            validate_formats=True,
        )

    for name in doc["components"]["schemas"]:
        validator(name)
    for name, example in EXAMPLES.items():
        assert validator(name).is_valid(example), name


def test_every_route_is_documented(server: PortalServer) -> None:
    """Every method the server routes is in the document, and nothing else is."""
    documented = {(m.upper(), p) for p, item in document()["paths"].items() for m in item}
    samples = {"{service_id}": "x", "{server_id}": "y"}
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        for path in document()["paths"]:
            url = path
            for k, v in samples.items():
                url = url.replace(k, v)
            status = call(method, server.url + url).status
            assert (status != 405) == ((method, path) in documented), (method, path, status)


def _validator(schema_: dict[str, Any]) -> jsonschema_rs.Validator:
    return jsonschema_rs.Draft202012Validator(
        {**schema_, "components": document()["components"]}, validate_formats=True
    )


# Invalid input the generator rarely produces: the document refuses it, and so must the server
# (each was once accepted, or answered 500). (method, path, JSON body, query, If-Match).
EDGE_CASES = [
    ("POST", "/routes", {"domain": "d.test\n"}, "", None),  # Python's "$" takes a final "\n"
    ("POST", "/vips", {"ip": "10.9.9.9", "interface": "eth0\n"}, "", None),
    ("POST", "/routes", {"domain": "e.test", "targets": [" http://x"]}, "", None),
    ("POST", "/routes", {"domain": "e.test", "targets": ["http://x\ty"]}, "", None),
    ("GET", "/events", None, "since=%C2%B2", None),  # a digit to str.isdigit, not to int()
    ("GET", "/events", None, "until=" + "9" * 20, None),  # beyond SQLite's integers
    ("GET", "/events", None, "since=" + "9" * 5000, None),  # beyond int()'s digit limit
    ("GET", "/events", None, "limit=0", None),
    ("PUT", "/errors", {}, "", "1"),  # an ETag is quoted
    ("PUT", "/errors", {}, "", ""),
    ("PUT", "/errors", {}, "", '"1"x'),
    ("DELETE", "/routes", {"domain": "a.test"}, "domain=b.test", None),  # which one?
]


@pytest.mark.parametrize(("method", "path", "body", "query", "if_match"), EDGE_CASES)
def test_refused_edge_cases(
    server: PortalServer, method: str, path: str, body: Any, query: str, if_match: str | None
) -> None:
    operation = document()["paths"][path][method.lower()]
    params = {p["name"]: p for p in operation.get("parameters", []) if "name" in p}
    doc_refuses = False
    if body is not None:
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        doc_refuses |= not _validator(body_schema).is_valid(body)
    for pair in filter(None, query.split("&")):
        name, value = pair.split("=")
        value = urllib.parse.unquote(value)
        number = value.isascii() and value.isdigit() and len(value) < 1000
        doc_refuses |= not _validator(params[name]["schema"]).is_valid(
            int(value) if number else value
        )
    if if_match is not None:
        if_match_schema = document()["components"]["parameters"]["IfMatch"]["schema"]
        doc_refuses |= not _validator(if_match_schema).is_valid(if_match)
    assert doc_refuses or (query and body is not None)  # DELETE /routes: body and query
    headers = {} if if_match is None else {"If-Match": if_match}
    answer = call(method, f"{server.url}{path}?{query}", body, headers=headers)
    assert answer.status == 400, answer.text
    assert set(answer.json) == {"error"}


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,  # json.loads: RecursionError
    b'{"a":' * 900 + b"1" + b"}" * 900,  # parsed, but too deep to fold keys recursively
    b'{"domain": "s.test", "page": "\\ud800"}',  # a lone surrogate: UTF-8 cannot store it
])
def test_unstorable_json_is_bad_json(server: PortalServer, raw: bytes) -> None:
    answer = call("POST", server.url + "/routes", raw=raw)
    assert (answer.status, answer.json) == (400, {"error": "Bad JSON syntax received in body"})


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_conforms(case: schemathesis.Case, server: PortalServer) -> None:
    if (case.path_parameters or {}).get("service_id") == SERVICE_ID:
        assert call("PUT", server.url + "/services", SEED).status == 200
    case.call_and_validate(base_url=server.url, excluded_checks=EXCLUDED)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortalServer]:
    s = PortalServer(tmp_path_factory.mktemp("openapi-token") / "node", token="secret").start()
    yield s
    s.stop()


def _cases() -> Iterator[Any]:
    params = {"service_id": SERVICE_ID, "server_id": "192_168_0_1-8080"}
    for result in schema.get_all_operations():
        operation = result.ok()
        needed = {p.name for p in operation.path_parameters}
        yield operation.Case(path_parameters={k: params[k] for k in needed} or None)


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_token_server_answers_401_as_documented(guarded: PortalServer, token: str | None) -> None:
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    for case in _cases():
        headers = {} if token is None else {"X-AUTH-TOKEN": token}
        response = case.call(base_url=guarded.url, headers=headers)
        expected = 200 if case.operation.path == "/openapi.json" else 401
        assert response.status_code == expected, case.operation.label
        case.validate_response(response, checks=checks)
    # The right token, as the header or as the query value.
    assert call("GET", guarded.url + "/services", headers={"X-AUTH-TOKEN": "secret"}).status == 200
    assert call("GET", guarded.url + "/services?X-AUTH-TOKEN=secret").status == 200
