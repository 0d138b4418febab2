"""Portal's HTTP route matching and scoring, as a pure function of the route list.

A request's host (port stripped) splits into subdomain = every label but the last two and
domain = the last two. A route matches when its subdomain is a prefix of the request's
subdomain, its domain equals the request's domain (an empty one matches any), and its path
matches the request path:

- ""                          every path
- ends with "/" or "*"        prefix match ("*" itself is not part of the prefix)
- anything else               the exact path, or any path under `path + "/"`
                              (so "/cat" does not match "/c" and "/c/" does not match "/cat")

Among the matching routes the highest score wins: len(path) + len(subdomain) + len(domain),
+1500 when the route sets a subdomain, +1000 a domain, +500 a path; on a tie the route listed
first wins. When nothing matches and the host has more than two labels, the leftmost label is
dropped and matching starts over ("a.b.example.com" -> "b.example.com").

Compiled once per configuration (the proxy swaps whole `Router`s), so `match` does no
allocation beyond splitting the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from portal_es.domain.models import Route

T = TypeVar("T")

SUBDOMAIN_BONUS = 1500
DOMAIN_BONUS = 1000
PATH_BONUS = 500

# Path rule kinds.
_ANY, _PREFIX, _EXACT_OR_DIR = 0, 1, 2


def score(route: Route) -> int:
    """Portal's specificity score of a route."""
    total = len(route.path) + len(route.subdomain) + len(route.domain)
    if route.subdomain:
        total += SUBDOMAIN_BONUS
    if route.domain:
        total += DOMAIN_BONUS
    if route.path:
        total += PATH_BONUS
    return total


def path_matches(rule_path: str, path: str) -> bool:
    """Portal's path rule (see the module doc), for one route path."""
    kind, prefix, directory = _path_rule(rule_path)
    return _path_ok(kind, prefix, directory, path)


def _path_rule(rule_path: str) -> tuple[int, str, str]:
    if not rule_path:
        return _ANY, "", ""
    if rule_path.endswith("*"):
        return _PREFIX, rule_path[:-1], ""
    if rule_path.endswith("/"):
        return _PREFIX, rule_path, ""
    return _EXACT_OR_DIR, rule_path, rule_path + "/"


def _path_ok(kind: int, prefix: str, directory: str, path: str) -> bool:
    if kind == _ANY:
        return True
    if kind == _PREFIX:
        return path.startswith(prefix)
    return path == prefix or path.startswith(directory)


def split_host(host: str) -> list[str]:
    """The labels of a Host header value: port and trailing dot removed, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: "[::1]:8080"
        return [host[1 : host.find("]")]] if "]" in host else [host]
    colon = host.rfind(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".").split(".")


@dataclass(frozen=True, slots=True)
class _Rule(Generic[T]):
    subdomain: str
    domain: str
    kind: int
    prefix: str
    directory: str
    score: int
    order: int
    value: T


CACHE_SIZE = 4096  # (host, path) answers kept per Router; the whole cache is dropped when full


class Router(Generic[T]):
    """Routes compiled for matching; `value` is what `match` returns for a route.

    Answers are cached per (host, path): a Router never changes (a new configuration is a new
    Router), so a cached answer cannot go stale, and most traffic repeats a few hosts and paths.
    """

    __slots__ = ("_any_domain", "_by_domain", "_cache")

    def __init__(self, entries: Iterable[tuple[Route, T]]) -> None:
        by_domain: dict[str, list[_Rule[T]]] = {}
        any_domain: list[_Rule[T]] = []
        for order, (route, value) in enumerate(entries):
            kind, prefix, directory = _path_rule(route.path)
            rule = _Rule(route.subdomain, route.domain, kind, prefix, directory, score(route),
                         order, value)
            (by_domain.setdefault(route.domain, []) if route.domain else any_domain).append(rule)
        # Best first, then list order: the first rule that matches is the answer.
        def rank(r: _Rule[T]) -> tuple[int, int]:
            return (-r.score, r.order)

        self._by_domain = {d: tuple(sorted(rules, key=rank)) for d, rules in by_domain.items()}
        self._any_domain = tuple(sorted(any_domain, key=rank))
        self._cache: dict[tuple[str, str], T | None] = {}

    @classmethod
    def of(cls, routes: Sequence[Route]) -> Router[Route]:
        return Router((r, r) for r in routes)

    def __len__(self) -> int:
        return len(self._any_domain) + sum(len(r) for r in self._by_domain.values())

    def match(self, host: str, path: str) -> T | None:
        """The best route's value for a Host header value and a request path, else None."""
        key = (host, path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._match(host, path)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _match(self, host: str, path: str) -> T | None:
        labels = split_host(host)
        while True:
            domain = ".".join(labels[-2:])
            subdomain = ".".join(labels[:-2])
            found = _first(self._by_domain.get(domain, ()), subdomain, path)
            other = _first(self._any_domain, subdomain, path)
            if other is not None and (found is None or (other.score, -other.order)
                                      > (found.score, -found.order)):
                found = other
            if found is not None:
                return found.value
            if len(labels) <= 2:
                return None
            labels = labels[1:]


def _first(rules: Sequence[_Rule[T]], subdomain: str, path: str) -> _Rule[T] | None:
    for rule in rules:
        if subdomain.startswith(rule.subdomain) and _path_ok(
            rule.kind, rule.prefix, rule.directory, path
        ):
            return rule
    return None
