"""Fixtures of the history tests: a store on each real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from portal_es.adapters import store
from tests.history.scenario import sqlite_url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "sqlite")
    else:
        url = store.database_url(request.getfixturevalue("pg_url"), tmp_path)
        store.migrate(url)
        yield url
