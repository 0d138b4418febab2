"""Portal's route matching: subdomain prefix, exact domain, path rules, scores, label retry."""

from __future__ import annotations

import pytest

from portal_es.domain.models import Route
from projections.router import Router, path_matches, score, split_host


def r(subdomain: str = "", domain: str = "", path: str = "") -> Route:
    return Route(subdomain=subdomain, domain=domain, path=path, page=f"{subdomain}|{domain}|{path}")


def best(routes: list[Route], host: str, path: str = "/") -> str | None:
    found = Router.of(routes).match(host, path)
    return None if found is None else found.page


@pytest.mark.parametrize(("rule", "path", "ok"), [
    ("", "/anything", True),
    ("", "/", True),
    ("/c/", "/c/", True),
    ("/c/", "/c/at", True),
    ("/c/", "/cat", False),          # a trailing slash is a directory prefix, not a string prefix
    ("/c/", "/c", False),
    ("/cat", "/cat", True),
    ("/cat", "/cat/", True),
    ("/cat", "/cat/dog", True),
    ("/cat", "/catalog", False),     # exact or under "/cat/" only
    ("/c", "/cat", False),
    ("/admin*", "/admin", True),
    ("/admin*", "/administrator", True),
    ("/admin*", "/admin/x", True),
    ("/admin*", "/adm", False),
    ("/*", "/x", True),
])
def test_path_rules(rule: str, path: str, ok: bool) -> None:
    assert path_matches(rule, path) is ok


def test_scores() -> None:
    assert score(r()) == 0
    assert score(r(domain="a.com")) == 1000 + 5
    assert score(r(subdomain="www", domain="a.com")) == 1500 + 1000 + 3 + 5
    assert score(r(path="/api")) == 500 + 4


@pytest.mark.parametrize(("host", "labels"), [
    ("Example.COM", ["example", "com"]),
    ("www.example.com:8080", ["www", "example", "com"]),
    ("example.com.", ["example", "com"]),
    ("[::1]:80", ["::1"]),
    ("localhost", ["localhost"]),
])
def test_split_host(host: str, labels: list[str]) -> None:
    assert split_host(host) == labels


def test_domain_is_exact_subdomain_is_prefix() -> None:
    routes = [r(domain="example.com"), r(subdomain="ap", domain="example.com")]
    assert best(routes, "example.com") == "|example.com|"
    assert best(routes, "api.example.com") == "ap|example.com|"     # prefix of "api"
    assert best(routes, "web.example.com") == "|example.com|"       # subdomain "" matches any
    assert best(routes, "example.org") is None
    assert best(routes, "badexample.com") is None


def test_precedence_subdomain_over_domain_over_path() -> None:
    routes = [r(path="/very/long/path/indeed"), r(domain="example.com"),
              r(subdomain="www", domain="example.com"), r(domain="example.com", path="/api")]
    assert best(routes, "www.example.com", "/api/x") == "www|example.com|"
    assert best(routes, "example.com", "/api/x") == "|example.com|/api"
    assert best(routes, "example.com", "/other") == "|example.com|"
    assert best(routes, "other.org", "/very/long/path/indeed/x") == "||/very/long/path/indeed"
    assert best(routes, "other.org", "/nope") is None


def test_longer_path_wins_and_ties_go_to_the_first_listed() -> None:
    routes = [r(domain="a.com", path="/"), r(domain="a.com", path="/api/"),
              r(domain="a.com", path="/api*")]
    assert best(routes, "a.com", "/api/v1") == "|a.com|/api/"       # "/api/" listed before "/api*"
    assert best(routes, "a.com", "/apiary") == "|a.com|/api*"
    assert best(routes, "a.com", "/x") == "|a.com|/"


def test_cat_does_not_match_c_directory() -> None:
    routes = [r(domain="a.com", path="/c/"), r(domain="a.com")]
    assert best(routes, "a.com", "/cat") == "|a.com|"
    assert best(routes, "a.com", "/c/at") == "|a.com|/c/"


def test_trailing_star() -> None:
    routes = [r(domain="a.com", path="/static*")]
    assert best(routes, "a.com", "/static") == "|a.com|/static*"
    assert best(routes, "a.com", "/statics/x.css") == "|a.com|/static*"
    assert best(routes, "a.com", "/stat") is None


def test_no_routes() -> None:
    assert best([], "a.com") is None
    assert len(Router.of([])) == 0


def test_leftmost_label_is_dropped_until_two_remain() -> None:
    routes = [r(subdomain="b", domain="example.com")]
    # "a.b" does not start with "b": retry with "b.example.com"
    assert best(routes, "a.b.example.com") == "b|example.com|"
    # "x.y.b" -> "y.b" -> "b": one label at a time
    assert best(routes, "x.y.b.example.com") == "b|example.com|"
    assert best(routes, "x.y.example.com") is None      # down to "example.com", then stop


def test_retry_finds_the_more_specific_route_first() -> None:
    routes = [r(domain="example.com"), r(subdomain="b", domain="example.com")]
    assert best(routes, "a.b.example.com") == "|example.com|"       # matches on the first try


def test_any_domain_route_competes_by_score() -> None:
    routes = [r(path="/api/v1/very/long"), r(domain="a.com")]
    # path-only: 500 + 16 = 516 < domain-only: 1000 + 5
    assert best(routes, "a.com", "/api/v1/very/long") == "|a.com|"
    assert best(routes, "b.com", "/api/v1/very/long") == "||/api/v1/very/long"


def test_port_in_host_is_ignored() -> None:
    assert best([r(domain="a.com")], "A.com:8080") == "|a.com|"
