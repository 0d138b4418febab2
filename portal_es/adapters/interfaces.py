"""Addresses of this node's network interfaces (for services given by interface)."""

from __future__ import annotations

import socket

from pyroute2 import AsyncIPRoute


class NoSuchInterface(LookupError):
    pass


async def first_address(ifname: str) -> str:
    """The interface's first IPv4 address, else its first IPv6 one."""
    async with AsyncIPRoute() as ipr:
        links = await ipr.link_lookup(ifname=ifname)
        if not links:
            raise NoSuchInterface(f"no interface '{ifname}' on this node")
        for family in (socket.AF_INET, socket.AF_INET6):
            async for msg in await ipr.get_addr(index=links[0], family=family):
                address = msg.get("IFA_ADDRESS")
                if address:
                    return str(address)
    raise NoSuchInterface(f"interface '{ifname}' has no address")
