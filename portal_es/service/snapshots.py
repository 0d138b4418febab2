"""Snapshots of the Balancer: taken by the writer every SNAPSHOT_INTERVAL events, read by the
repository, the read model and every node's projector so that none folds the whole log.

The writer takes them because it alone knows, at save time, both the state and the log
position of its last event. A snapshot is a cache: unreadable ones (corrupted, unknown
format, a key that no longer decrypts) are skipped with a warning, falling back to an older
snapshot and finally to the log itself. Old snapshots are thinned out, never all dropped:
the newest few stay, plus one every ten intervals (so a point in the past is at most ten
intervals of folding away), plus the one at the log's base after an archive.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from itertools import chain
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, Repository
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import EventStore, IntegrityError, Recording

from portal_es.adapters import log_tables
from portal_es.domain.balancer import BALANCER_ID, Balancer
from portal_es.domain.snapshot import BalancerSnapshot
from portal_es.domain.state import BalancerState

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = "SNAPSHOT_INTERVAL"  # env (PORTAL_SNAPSHOT_INTERVAL works too); 0 = never
DEFAULT_INTERVAL = 1000  # events: folding 1000 events costs ~0.1 s
KEEP_NEWEST = 3
KEEP_EVERY = 10  # intervals, for older snapshots
PAGE = 4  # snapshots decoded at a time (each holds the whole state)


def readable_snapshots(
    store: EventStore[UUID], originator_id: UUID, lte: int | None = None
) -> Iterator[BalancerSnapshot]:
    """Snapshots of `originator_id`, newest first, skipping (and logging) unreadable ones."""
    while True:
        stored = store.recorder.select_events(originator_id, lte=lte, desc=True, limit=PAGE)
        for record in stored:
            try:
                snapshot = store.mapper.to_domain_event(record)
                if not isinstance(snapshot, BalancerSnapshot):
                    raise ValueError(f"not a Balancer snapshot: {record.topic}")
                snapshot.balancer_state  # noqa: B018 - checks the format
            except Exception as e:  # any decoding failure: the log is the truth
                log.warning("snapshot v%d is unreadable, skipped: %s",
                            record.originator_version, e)
                continue
            yield snapshot
        if len(stored) < PAGE:
            return
        lte = stored[-1].originator_version - 1


class SnapshotRepository(Repository[UUID]):
    """The library's repository, except that an unreadable snapshot is skipped (an older one
    or the log is used) instead of failing every command."""

    def _reconstruct_aggregate(
        self, aggregate_id: UUID, version: int | None, projector_func: Any
    ) -> Any:
        snapshots: list[BalancerSnapshot] = []
        if self.snapshot_store is not None and aggregate_id == BALANCER_ID:
            snapshots = list(_first(readable_snapshots(self.snapshot_store, aggregate_id,
                                                       version)))
        gt = snapshots[0].originator_version if snapshots else None
        events = self.event_store.get(originator_id=aggregate_id, gt=gt, lte=version)
        aggregate = projector_func(None, chain(snapshots, events))
        if aggregate is None:
            raise AggregateNotFoundError(f"Aggregate {aggregate_id!r} version {version!r}")
        return aggregate


def _first(items: Iterator[BalancerSnapshot]) -> Iterator[BalancerSnapshot]:
    for item in items:
        yield item
        return


class SnapshottingApplication(Application[UUID]):
    """Base of PortalApplication: snapshot-aware loading, and snapshots taken on save."""

    is_snapshotting_enabled = True

    @property
    def snapshot_interval(self) -> int:
        return int(self.env.get(SNAPSHOT_INTERVAL) or DEFAULT_INTERVAL)

    def construct_repository(self) -> Repository[UUID]:
        plain = super().construct_repository()
        return SnapshotRepository(
            event_store=plain.event_store, snapshot_store=plain.snapshot_store,
            cache_maxsize=getattr(plain.cache, "maxsize", None),
            fastforward=plain.fastforward, fastforward_skipping=plain.fastforward_skipping,
            deepcopy_from_cache=plain.deepcopy_from_cache,
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        recordings = super().save(*objs, **kwargs)
        balancer = next((o for o in objs if isinstance(o, Balancer)), None)
        mine = [r for r in recordings if r.domain_event.originator_id == BALANCER_ID]
        interval = self.snapshot_interval
        if balancer is not None and mine and interval > 0:
            first = mine[0].domain_event.originator_version
            last = mine[-1].domain_event.originator_version
            if last // interval > (first - 1) // interval:  # crossed a multiple
                event = cast(DomainEvent, mine[-1].domain_event)
                self.put_snapshot(balancer.state, last, mine[-1].notification.id,
                                  event.timestamp)
        return recordings

    def put_snapshot(
        self, state: BalancerState, version: int, position: int, time: datetime | None
    ) -> bool:
        """Record the state at (version, position); False when one was there already."""
        if self.snapshots is None or version <= 0:
            return False
        snapshot = BalancerSnapshot.of(state, version, position, time)
        try:
            self.snapshots.put([snapshot])
        except IntegrityError:  # another writer (or node) snapshotted this version
            return False
        with contextlib.suppress(Exception):  # thinning is housekeeping: never fail a write
            self.thin_snapshots()
        return True

    def thin_snapshots(self) -> None:
        """Keep the newest few, the first of every KEEP_EVERY intervals and the log's base;
        drop the rest and any below the base (the events they would need are archived)."""
        versions = log_tables.snapshot_versions(self)  # newest first
        if len(versions) <= KEEP_NEWEST:
            return
        base = log_tables.log_base_version(self)
        every = max(self.snapshot_interval, 1) * KEEP_EVERY
        keep = {*versions[:KEEP_NEWEST], base}
        windows: set[int] = set()
        for v in sorted(versions):
            if v >= base and v // every not in windows:
                windows.add(v // every)
                keep.add(v)
        log_tables.delete_snapshots(self, [v for v in versions if v not in keep])

    def latest_snapshot(self, lte_version: int | None = None) -> BalancerSnapshot | None:
        if self.snapshots is None:
            return None
        return next(readable_snapshots(self.snapshots, BALANCER_ID, lte_version), None)

    def snapshots_newest_first(self) -> Iterator[BalancerSnapshot]:
        if self.snapshots is None:
            return iter(())
        return readable_snapshots(self.snapshots, BALANCER_ID)
