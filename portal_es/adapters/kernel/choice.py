"""Which kernel data plane a node uses (`--balancer auto|ipvs|nftables|none`)."""

from __future__ import annotations

import logging

from portal_es.adapters.kernel import L4Dataplane
from portal_es.adapters.kernel.none import NoDataplane

log = logging.getLogger(__name__)


class BalancerUnavailable(RuntimeError):
    pass


def _nftables() -> L4Dataplane:
    from portal_es.adapters.kernel.nftables import NftablesDataplane, nftables_available

    if not nftables_available():
        raise BalancerUnavailable(
            "nftables is not usable here (no nf_tables netlink access: not root?)"
        )
    return NftablesDataplane()


def _ipvs() -> L4Dataplane:
    from portal_es.adapters.kernel.ipvs import IpvsDataplane, ipvs_available

    if not ipvs_available():
        raise BalancerUnavailable("this kernel has no IPVS (ip_vs module not loaded)")
    return IpvsDataplane()


def choose(balancer: str, just_proxy: bool = False) -> L4Dataplane:
    """The data plane for a setting; `auto` is IPVS where the kernel has it, else nftables,
    else none (with a warning). An explicit choice that is unavailable is an error."""
    if just_proxy or balancer == "none":
        return NoDataplane()
    if balancer == "ipvs":
        return _ipvs()
    if balancer == "nftables":
        return _nftables()
    for make in (_ipvs, _nftables):
        try:
            plane = make()
        except (BalancerUnavailable, ImportError, OSError) as e:
            log.info("balancer auto: %s", e)
            continue
        log.info("balancer auto: using %s", plane.name)
        return plane
    log.warning("balancer auto: neither IPVS nor nftables is usable; services are NOT balanced "
                "by this node's kernel (balancer none)")
    return NoDataplane()
