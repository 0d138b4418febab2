"""Events written by an older version load in a newer one.

fixtures/log-v1.jsonl is a log recorded by portal-es 0.1 (event schema v1) with
`portal-es replay --export`, after a history that uses every kind of event then (services,
servers, routes with a reorder, certs with an encrypted key, vips, error pages, a restore and
a compensation). fixtures/log-v1.states.json is the configuration recorded after each of its
changes. Never regenerate them: they are what old stores hold. A change to an event class that
breaks them needs a class_version and an upcaster (see portal_es/domain/events.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from eventsourcing.utils import _topic_cache, register_topic

from portal_es.adapters import logfile
from portal_es.domain import events as ev
from portal_es.domain.models import Service
from portal_es.domain.state import BalancerState, insert_at
from projections import history
from projections.audit import EventFilter, list_events
from tests.history.scenario import open_app, sqlite_url

FIXTURES = Path(__file__).parent / "fixtures"
LOG = FIXTURES / "log-v1.jsonl"
STATES: dict[str, Any] = json.loads((FIXTURES / "log-v1.states.json").read_text())


def test_a_v1_log_loads_and_folds_to_the_states_recorded_then(tmp_path: Path) -> None:
    app = open_app(sqlite_url(tmp_path), interval=5)
    with open(LOG, encoding="utf-8") as lines:
        summary = logfile.import_log(app, lines)
    assert summary.events == 32
    for position, state in STATES.items():
        assert history.state_at(app, int(position)).state.portal_json() == state, position
    types = {e["type"] for e in list_events(app, EventFilter(limit=1000))[0]}
    assert {"Restored", "Reordered", "CertAdded", "ErrorPagesSet"} <= types


class ServiceAddedV2(ev.BalancerEvent):
    """What a v2 of ServiceAdded could look like: `position` renamed `index`, a new field
    with a default for the events written before it existed."""

    class_version = 2
    service: Service
    index: int
    origin: str
    seen: ClassVar[int] = 0

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["index"] = state.pop("position")
        state["origin"] = "api"
        ServiceAddedV2.seen += 1

    def evolve(self, state: BalancerState) -> None:
        insert_at(state.services, self.service.id, self.service, self.index)


@pytest.fixture
def v2() -> Iterator[type[ServiceAddedV2]]:
    """The old topic resolves to the new class (as a rename would be registered)."""
    topic = "portal_es.domain.events:ServiceAdded"
    saved = _topic_cache.pop(topic, None)
    ServiceAddedV2.seen = 0
    register_topic(topic, ServiceAddedV2)
    yield ServiceAddedV2
    _topic_cache.pop(topic, None)
    if saved is not None:
        _topic_cache[topic] = saved


def test_a_newer_event_class_version_upcasts_the_v1_log(
    tmp_path: Path, v2: type[ServiceAddedV2]
) -> None:
    app = open_app(sqlite_url(tmp_path))
    with open(LOG, encoding="utf-8") as lines:
        logfile.import_log(app, lines)
    assert v2.seen == 4  # every ServiceAdded of the fixture went through the upcaster
    last = max(STATES, key=int)
    assert history.state_at(app).state.portal_json() == STATES[last]
    added = [e for e in list_events(app, EventFilter(type="ServiceAddedV2", limit=100))[0]]
    assert added and all(e["data"]["origin"] == "api" and "index" in e["data"] for e in added)
