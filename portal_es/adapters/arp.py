"""Gratuitous ARP: tell the segment that a vip now lives at this interface's MAC address.

No library on the card sends ARP; it is one 42-byte frame on an AF_PACKET socket.
"""

from __future__ import annotations

import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def gratuitous_arp_frame(mac: bytes, address: str) -> bytes:
    ip = socket.inet_aton(address)
    ethernet = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    # htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request): sender == target == vip
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return ethernet + arp


def announce(ifname: str, mac: str, address: str, count: int = 3) -> None:
    frame = gratuitous_arp_frame(bytes.fromhex(mac.replace(":", "")), address)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, 0))
        for _ in range(count):
            s.send(frame)
