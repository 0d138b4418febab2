"""tables.py on its own: odd answers still give a readable table (in-process, fast)."""

from __future__ import annotations

from portal_es.entrypoints import tables
from tests.unit.certs import BUNDLES


def test_empty_lists_and_unknown_answers() -> None:
    assert tables.render("services", []) == "(no services)"
    assert tables.render("routes", None) == "(no routes)"
    assert tables.render("msg", {"msg": "Success"}) == "Success"
    assert tables.render("msg", {"other": 1}) == '{"other": 1}'


def test_a_cert_without_common_name_and_a_broken_one() -> None:
    lines = tables.render("certs", [{"cert": BUNDLES[1].cert, "key": "k"},
                                    {"cert": "not a pem", "key": "k"}]).splitlines()
    assert lines[1].split()[:2] == ["-", "b.test,*.b.test"]
    assert lines[2].startswith("(not a PEM certificate)")


def test_event_data_is_summarised() -> None:
    event = {"position": 7, "time": "t", "type": "RouteAdded", "actor": "a",
             "data": {"page": "x" * 500}}
    row = tables.render("events", [event]).splitlines()[1]
    assert row.endswith("...") and len(row) < 200
