"""A node's position in the log, recorded in one statement on PostgreSQL.

The library's tracking recorder takes two transactions (a check, then an update) and waits
for the commit to reach the disk: tens of milliseconds on a busy machine, on every apply,
before the node may acknowledge. Here: one upsert, without waiting for the WAL flush
(synchronous_commit off). Should PostgreSQL crash, the last few positions may be lost: the
node then re-applies a few events from the log, which changes nothing (applying is a diff).
Same table (portal_tracking) and meaning as the library's.
"""

from __future__ import annotations

import logging
import threading

import psycopg

log = logging.getLogger(__name__)


class PositionRecorder:
    def __init__(self, dsn: str, table: str = "portal_tracking") -> None:
        self.dsn = dsn
        self.table = table
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                               application_name="portal-es tracking")
            self._connection.execute("SET synchronous_commit = off")
        return self._connection

    def record(self, name: str, position: int) -> None:
        with self._lock:
            try:
                self._connect().execute(
                    f"INSERT INTO {self.table} (application_name, notification_id) "
                    f"VALUES (%s, %s) ON CONFLICT (application_name) "
                    f"DO UPDATE SET notification_id = EXCLUDED.notification_id",
                    (name, position))
            except psycopg.Error as e:  # a hint, not the truth: the next apply records again
                log.warning("recording position %d of %s: %s", position, name, e)
                self.close()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
