"""Addresses of this node's network interfaces (for services given by interface)."""

from __future__ import annotations

import socket

from pyroute2 import IPRoute


class NoSuchInterface(LookupError):
    pass


def first_address(ifname: str) -> str:
    """The interface's first IPv4 address, else its first IPv6 one."""
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            raise NoSuchInterface(f"no interface '{ifname}' on this node")
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_addr(index=links[0], family=family):
                address = msg.get_attr("IFA_ADDRESS")
                if address:
                    return str(address)
    raise NoSuchInterface(f"interface '{ifname}' has no address")
