"""IPVS kernel tests. They run inside the VM (tests/test_ipvs_vm.py boots it and runs
`pytest tests/kernel_vm` there, with IPVS_VM=1); elsewhere only the pure ones are collected,
so a plain `pytest` on the host neither fails nor skips them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

IN_VM = os.environ.get("IPVS_VM") == "1"

if not IN_VM:
    collect_ignore_glob = ["test_kernel_*.py"]
else:
    from portal_es.adapters.kernel.ipvs import IpvsDataplane
    from tests.kernel_vm import topology

    @pytest.fixture(scope="session")
    def net() -> Iterator[topology.EchoFleet]:
        """The namespaces and echo servers, built once per guest session."""
        topology.build()
        fleet = topology.EchoFleet().start()
        yield fleet
        fleet.stop()

    @pytest.fixture
    def plane(net: topology.EchoFleet) -> Iterator[IpvsDataplane]:
        """A data plane on lb's IPVS table, new for each test (so its first sync is full),
        and an empty table after it."""
        with IpvsDataplane(netns="lb") as p:
            yield p
            p.flush()
