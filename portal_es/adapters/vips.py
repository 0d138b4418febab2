"""Vips on this node's interfaces: add and remove addresses (with their label) via netlink,
announce IPv4 ones by gratuitous ARP. Idempotent, and an address portal-es did not add is
never removed: what portal-es added is remembered in the work dir.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from portal_es.adapters import arp
from portal_es.domain.models import Vip

log = logging.getLogger(__name__)

OWNED_FILE = "vips-owned.json"
DEFAULT_PREFIX = {4: 32, 6: 128}


@dataclass
class VipReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # vip ip -> why it failed


def _network(vip: Vip) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    iface = ipaddress.ip_interface(vip.ip)
    if "/" not in vip.ip:
        iface = ipaddress.ip_interface(f"{vip.ip}/{DEFAULT_PREFIX[iface.version]}")
    return iface


class VipManager:
    def __init__(self, work_dir: Path) -> None:
        self._owned_path = work_dir / OWNED_FILE

    def _owned(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._owned_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_owned(self, owned: dict[str, dict[str, str]]) -> None:
        tmp = self._owned_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(owned, indent=1, sort_keys=True))
        tmp.replace(self._owned_path)

    def _addresses(self, ipr: IPRoute, index: int) -> set[str]:
        return {
            f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in ipr.get_addr(index=index)
        }

    def sync(self, desired: Sequence[Vip]) -> VipReport:
        report = VipReport()
        owned = self._owned()
        with IPRoute() as ipr:
            wanted = {}
            for vip in desired:
                try:
                    wanted[str(_network(vip))] = vip
                    self._add(ipr, vip, owned, report)
                except (NetlinkError, OSError, LookupError) as e:
                    report.errors[vip.ip] = f"vip {vip.ip} on '{vip.interface}': {e}"
            for address, where in list(owned.items()):
                if address not in wanted:
                    self._remove(ipr, address, where, owned, report)
        self._save_owned(owned)
        return report

    def _index(self, ipr: IPRoute, ifname: str) -> int:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            raise LookupError(f"no interface '{ifname}' on this node")
        return int(links[0])

    def _add(
        self, ipr: IPRoute, vip: Vip, owned: dict[str, dict[str, str]], report: VipReport
    ) -> None:
        if not vip.interface:
            raise LookupError("a vip needs an interface")
        net = _network(vip)
        index = self._index(ipr, vip.interface)
        if str(net) in self._addresses(ipr, index):
            return  # already there (ours from before, or someone else's: then not ours)
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        extra = {"label": vip.alias} if vip.alias and family == socket.AF_INET else {}
        ipr.addr("add", index=index, address=str(net.ip), prefixlen=net.network.prefixlen,
                 family=family, **extra)
        owned[str(net)] = {"interface": vip.interface}
        report.added.append(str(net))
        log.info("vip %s added on %s%s", net, vip.interface,
                 f" as {vip.alias}" if vip.alias else "")
        if net.version == 4:
            link = ipr.get_links(index)[0]
            mac = link.get_attr("IFLA_ADDRESS")
            if mac and mac != "00:00:00:00:00:00":
                arp.announce(vip.interface, mac, str(net.ip))

    def _remove(self, ipr: IPRoute, address: str, where: dict[str, str],
                owned: dict[str, dict[str, str]], report: VipReport) -> None:
        net = ipaddress.ip_interface(address)
        try:
            index = self._index(ipr, where["interface"])
            if address in self._addresses(ipr, index):
                family = socket.AF_INET if net.version == 4 else socket.AF_INET6
                ipr.addr("del", index=index, address=str(net.ip),
                         prefixlen=net.network.prefixlen, family=family)
                log.info("vip %s removed from %s", address, where["interface"])
            report.removed.append(address)
            del owned[address]
        except (NetlinkError, OSError, LookupError) as e:
            report.errors[str(net.ip)] = f"removing vip {address}: {e}"

    def drift(self, desired: Sequence[Vip]) -> list[str]:
        """Desired vips that are not on their interface."""
        missing = []
        with IPRoute() as ipr:
            for vip in desired:
                try:
                    live = self._addresses(ipr, self._index(ipr, vip.interface))
                    present = str(_network(vip)) in live
                except LookupError:
                    present = False
                if not present:
                    missing.append(vip.ip)
        return missing

    def flush(self) -> VipReport:
        return self.sync([])
