"""Property tests of the pure domain (no I/O).

1. Folding the events of any command sequence gives the state that a plain in-memory model
   of Portal's semantics (written independently below) reaches with the same commands.
2. Any change followed by its compensation (the inverse events) restores the state exactly.
3. Events survive the store's encoding (transcoder) and fold to the same state.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from eventsourcing.cryptography import AESCipher
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal_es.adapters import transcodings
from portal_es.domain import commands as c
from portal_es.domain.balancer import Balancer, Meta
from portal_es.domain.errors import DomainError
from portal_es.domain.events import BalancerEvent
from portal_es.domain.models import CertBundle, ErrorPages, Route, Server, Service, Vip
from portal_es.domain.state import BalancerState
from portal_es.service.handlers import HANDLERS
from tests.unit.certs import BUNDLES

META = Meta("tester", "r1")

servers = st.builds(
    Server,
    host=st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
    port=st.sampled_from([80, 8080]),
    forwarder=st.sampled_from(["g", "m"]),
    weight=st.integers(0, 3),
)
services = st.builds(
    Service,
    host=st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    port=st.sampled_from([80, 443]),
    type=st.sampled_from(["tcp", "udp"]),
    scheduler=st.sampled_from(["rr", "wlc"]),
    servers=st.lists(servers, max_size=3).map(tuple),
)
routes = st.builds(
    Route,
    domain=st.sampled_from(["a.test", "b.test"]),
    path=st.sampled_from(["", "/x"]),
    page=st.sampled_from(["", "hi"]),
)
vips = st.builds(
    Vip,
    ip=st.sampled_from(["10.9.0.1", "10.9.0.2", "10.9.0.3"]),
    interface=st.just("eth0"),
    alias=st.sampled_from(["", "eth0:1", "eth0:2"]),
)
certs = st.sampled_from(BUNDLES)
pages = st.builds(ErrorPages, no_routes=st.sampled_from(["NoRoutes", "none"]))
service_ids = st.sampled_from(["tcp-10_0_0_1-80", "udp-10_0_0_2-443", "tcp-10_0_0_9-80"])
server_ids = st.sampled_from(["10_1_0_1-80", "10_1_0_2-8080"])

commands = st.one_of(
    st.builds(c.AddService, services),
    st.builds(c.UpdateService, service_ids, services),
    st.builds(c.ReplaceServices, st.lists(services, max_size=4).map(tuple)),
    st.builds(c.RemoveService, service_ids),
    st.builds(c.AddServer, service_ids, servers),
    st.builds(c.ReplaceServers, service_ids, st.lists(servers, max_size=4).map(tuple)),
    st.builds(c.RemoveServer, service_ids, server_ids),
    st.builds(c.AddRoute, routes),
    st.builds(c.ReplaceRoutes, st.lists(routes, max_size=4).map(tuple)),
    st.builds(c.RemoveRoute, routes.map(lambda r: r.key)),
    st.builds(c.AddCert, certs),
    st.builds(c.ReplaceCerts, st.lists(certs, max_size=3).map(tuple)),
    st.builds(c.RemoveCert, certs.map(lambda b: b.id)),
    st.builds(c.AddVip, vips),
    st.builds(c.ReplaceVips, st.lists(vips, max_size=3).map(tuple)),
    st.builds(c.RemoveVip, vips.map(lambda v: v.address)),
    st.builds(c.SetErrorPages, pages),
)


class Rejected(Exception):
    pass


def _dedup(items: Any, key: Any) -> dict[Any, Any]:
    """First position, last value: a PUT's list with repeated ids."""
    out: dict[Any, Any] = {}
    for item in items:
        out[key(item)] = item
    return out


class PlainModel:
    """Portal's semantics written directly on dicts: the reference the log must agree with."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}  # id -> {"svc": Service, "servers": {}}
        self.routes: dict[Any, Route] = {}
        self.certs: dict[str, CertBundle] = {}
        self.vips: list[Vip] = []
        self.pages = ErrorPages()

    def run(self, cmd: c.Command) -> None:
        match cmd:
            case c.AddService(service=s):
                if s.id not in self.services:
                    self.services[s.id] = {"svc": s, "servers": {x.id: x for x in s.servers}}
            case c.UpdateService(service_id=sid, service=s):
                if sid not in self.services:
                    raise Rejected
                if s.id != sid and s.id in self.services:
                    raise Rejected
                entry = {"svc": s, "servers": {x.id: x for x in s.servers}}
                self.services = {
                    (s.id if k == sid else k): (entry if k == sid else v)
                    for k, v in self.services.items()
                }
            case c.ReplaceServices(services=ss):
                self.services = {
                    k: {"svc": s, "servers": {x.id: x for x in s.servers}}
                    for k, s in _dedup(ss, lambda s: s.id).items()
                }
            case c.RemoveService(service_id=sid):
                self.services.pop(sid, None)
            case c.AddServer(service_id=sid, server=x):
                if sid not in self.services:
                    raise Rejected
                self.services[sid]["servers"].setdefault(x.id, x)
            case c.ReplaceServers(service_id=sid, servers=xs):
                if sid not in self.services:
                    raise Rejected
                self.services[sid]["servers"] = _dedup(xs, lambda x: x.id)
            case c.RemoveServer(service_id=sid, server_id=xid):
                if sid in self.services:
                    self.services[sid]["servers"].pop(xid, None)
            case c.AddRoute(route=r):
                self.routes[r.key] = r
            case c.ReplaceRoutes(routes=rs):
                self.routes = _dedup(rs, lambda r: r.key)
            case c.RemoveRoute(key=k):
                self.routes.pop(k, None)
            case c.AddCert(cert=b):
                self.certs[b.id] = b
            case c.ReplaceCerts(certs=bs):
                self.certs = _dedup(bs, lambda b: b.id)
            case c.RemoveCert(cert_id=i):
                self.certs.pop(i, None)
            case c.AddVip(vip=v):
                if v in self.vips:
                    return
                if any(o.address == v.address or (v.alias and o.alias == v.alias)
                       for o in self.vips):
                    raise Rejected
                self.vips.append(v)
            case c.ReplaceVips(vips=vs):
                addresses = [v.address for v in vs]
                aliases = [v.alias for v in vs if v.alias]
                if len(set(addresses)) < len(addresses) or len(set(aliases)) < len(aliases):
                    raise Rejected
                self.vips = list(vs)
            case c.RemoveVip(address=a):
                self.vips = [v for v in self.vips if v.address != a]
            case c.SetErrorPages(pages=p):
                self.pages = p

    def portal_json(self) -> dict[str, Any]:
        return {
            "services": [
                e["svc"].model_copy(update={"servers": tuple(e["servers"].values())}).portal_json()
                for e in self.services.values()
            ],
            "routes": [r.portal_json() for r in self.routes.values()],
            "certs": [b.portal_json() for b in self.certs.values()],
            "vips": [v.portal_json() for v in self.vips],
            "errors": self.pages.portal_json(),
        }


def run_command(balancer: Balancer, cmd: c.Command) -> list[BalancerEvent]:
    """Execute a command; a refused one must trigger nothing."""
    before = len(balancer.pending_events)
    try:
        HANDLERS[type(cmd)](balancer, cmd, META, ())
    except DomainError:
        assert len(balancer.pending_events) == before, "a refused command triggered events"
        raise
    return [e for e in balancer.pending_events[before:] if isinstance(e, BalancerEvent)]


def fold(events: list[BalancerEvent]) -> BalancerState:
    state = BalancerState()
    for event in events:
        event.evolve(state)
    return state


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(commands, max_size=25))
def test_fold_of_events_equals_plain_model(cmds: list[c.Command]) -> None:
    balancer, model = Balancer(), PlainModel()
    events: list[BalancerEvent] = []
    for cmd in cmds:
        try:
            model.run(cmd)
            expected_ok = True
        except Rejected:
            expected_ok = False
        try:
            events += run_command(balancer, cmd)
            assert expected_ok, f"domain accepted what the model refuses: {cmd}"
        except DomainError:
            assert not expected_ok, f"domain refused what the model accepts: {cmd}"
        assert balancer.state.portal_json() == model.portal_json()
    assert fold(events).portal_json() == model.portal_json()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(commands, max_size=15), commands)
def test_compensation_restores_state(setup: list[c.Command], change: c.Command) -> None:
    balancer = Balancer()
    for cmd in setup:
        with contextlib.suppress(DomainError):
            run_command(balancer, cmd)
    before = copy.deepcopy(balancer.state.portal_json())
    try:
        applied = run_command(balancer, change)
    except DomainError:
        return
    balancer.compensate(Meta("compensator", "r2"), applied)
    assert balancer.state.portal_json() == before


def _mapper() -> Mapper[Any]:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    key = AESCipher.create_key(32)
    transcodings.register(transcoder, AESCipher(Environment(env={"CIPHER_KEY": key})))
    return Mapper(transcoder=transcoder)


MAPPER = _mapper()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(commands, max_size=20))
def test_events_survive_the_store_encoding(cmds: list[c.Command]) -> None:
    balancer = Balancer()
    for cmd in cmds:
        with contextlib.suppress(DomainError):
            run_command(balancer, cmd)
    stored = [MAPPER.to_stored_event(e) for e in balancer.pending_events]
    for s in stored:  # a private key never reaches the store in clear
        assert b"PRIVATE KEY" not in s.state
    replayed = None
    for s in stored:
        replayed = MAPPER.to_domain_event(s).mutate(replayed)  # type: ignore[attr-defined]
    assert replayed is not None
    assert replayed.state.portal_json() == balancer.state.portal_json()
