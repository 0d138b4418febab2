"""The application: commands in, events saved; the one place that writes the log.

The eventsourcing library is synchronous; the API calls `execute` from a thread. Commands in
one process are serialised by a lock (they all touch the one Balancer aggregate, so running
them in parallel would only produce conflicts); writers in other processes are serialised by
the store's optimistic concurrency: a conflicting save is retried on fresh state, and only
after repeated conflicts answered as ConcurrentWrites (409), never dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.cryptography import AESCipher
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, JSONTranscoder
from eventsourcing.utils import Environment

from portal_es.adapters import transcodings
from portal_es.domain.balancer import BALANCER_ID, Balancer, Meta, Socket
from portal_es.domain.commands import Command
from portal_es.domain.errors import DomainError
from portal_es.domain.events import (
    BalancerEvent,
    ServerAdded,
    ServerUpdated,
    ServiceAdded,
    ServiceUpdated,
)
from portal_es.domain.models import Service
from portal_es.service.handlers import HANDLERS
from portal_es.service.snapshots import SnapshottingApplication

log = logging.getLogger(__name__)

# Env key of the AES key for cert private keys. Not the library's CIPHER_KEY, which would
# encrypt whole events and make the audit log unreadable to the database's own tools.
CERT_KEY_CIPHER = "CERT_KEY_CIPHER"
CONFLICT_DEADLINE_S = 10.0  # keep retrying conflicting writes this long, then answer 409


class ConcurrentWrites(DomainError):
    status = 409

    def __init__(self) -> None:
        super().__init__("Too many concurrent writes, try again")


class Unsupported(DomainError):
    """This node's data plane cannot express the change (e.g. ip-in-ip under nftables)."""


# What a node's data plane says of a service: None when it can program it, else why not.
ServicePolicy = Callable[[Service], str | None]
# Other aggregates to save in the same transaction as a command's events (the cluster's
# Change saga): given the Balancer (with its pending events) and those events.
Attach = Callable[[Balancer, Sequence[BalancerEvent]], Sequence[Aggregate]]


@dataclass(frozen=True)
class Outcome:
    """What a command returned, the state version after it, the events it appended and the
    log position of the last one (0 when it appended nothing)."""

    result: Any
    version: int
    events: Sequence[BalancerEvent]
    position: int = 0


class PortalApplication(SnapshottingApplication):
    name = "portal"  # table names: portal_events, portal_snapshots, portal_tracking

    def __init__(
        self, env: dict[str, str], reserved: Iterable[Socket] = (),
        policy: ServicePolicy | None = None,
    ) -> None:
        self.reserved = tuple(reserved)
        self.policy = policy
        self._lock = threading.Lock()
        super().__init__(env)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        cipher = AESCipher(Environment(env={"CIPHER_KEY": self.env[CERT_KEY_CIPHER]}))
        transcodings.register(transcoder, cipher)

    def _balancer(self) -> Balancer:
        # The cached aggregate itself, not the library's deep copy of it (which costs ~6 ms
        # per hundred services on every write): a write that changes it and does not save
        # it drops it from the cache (_forget).
        try:
            balancer: Balancer = self.repository.get(BALANCER_ID, deepcopy_from_cache=False)
        except AggregateNotFoundError:
            balancer = Balancer()
        return balancer

    def _forget(self) -> None:
        """The cached Balancer may hold events that were not saved: reload it next time."""
        if self.repository.cache is not None:
            with contextlib.suppress(KeyError):
                self.repository.cache.get(BALANCER_ID, evict=True)

    def execute(
        self, command: Command, meta: Meta, expected_version: int | None = None,
        attach: Attach | None = None,
    ) -> Outcome:
        handler = HANDLERS[type(command)]
        deadline = time.monotonic() + CONFLICT_DEADLINE_S
        with self._lock:
            for attempt in itertools.count():
                balancer = self._balancer()
                try:
                    balancer.check_version(expected_version)
                    result = handler(balancer, command, meta, self.reserved)
                    events = [e for e in balancer.pending_events
                              if isinstance(e, BalancerEvent)]
                    if not balancer.pending_events:
                        return Outcome(result, balancer.version, [])
                    self._check_policy(balancer, events)
                    attached = attach(balancer, events) if attach else ()
                    recordings = self.save(*attached, balancer)
                except IntegrityError:
                    self._forget()
                    if time.monotonic() > deadline:
                        raise ConcurrentWrites from None
                    # Another writer won this version: back off (jittered, so that
                    # contenders spread out) and redo the command on the new state.
                    log.info("write conflict on %s, retrying", type(command).__name__)
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                    continue
                except BaseException:
                    self._forget()
                    raise
                position = recordings[-1].notification.id
                return Outcome(result, balancer.version, events, position)
        raise AssertionError("unreachable")

    def _check_policy(self, balancer: Balancer, events: Sequence[BalancerEvent]) -> None:
        """Refuse services this node cannot program, before anything is saved."""
        if self.policy is None:
            return
        touched = {e.service.id for e in events if isinstance(e, (ServiceAdded, ServiceUpdated))}
        touched |= {e.service_id for e in events if isinstance(e, (ServerAdded, ServerUpdated))}
        for service_id in touched:
            service = balancer.state.services.get(service_id)
            why = self.policy(service) if service is not None else None
            if why:
                raise Unsupported(why)

    def compensate(
        self, events: Sequence[BalancerEvent], meta: Meta, expected_version: int,
        attach: Attach | None = None,
    ) -> Outcome:
        """Append the inverse of `events` (one change), if nothing was written since."""
        with self._lock:
            balancer = self._balancer()
            try:
                balancer.check_version(expected_version)
                balancer.compensate(meta, events)
                inverses = [e for e in balancer.pending_events if isinstance(e, BalancerEvent)]
                attached = attach(balancer, inverses) if attach else ()
                recordings = self.save(*attached, balancer)
            except BaseException:
                self._forget()
                raise
            return Outcome(None, balancer.version, inverses, recordings[-1].notification.id)

    def version(self) -> int:
        """The current version of the configuration (0 before the first write)."""
        return self._balancer().version
