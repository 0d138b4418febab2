"""nf_tables netlink messages: encoded and decoded by pure functions (no I/O).

Why not libnftables: nft 1.0.6 spends 9-17 us of CPU per set element in user space (parsing,
evaluation, its cache), so 10,000 services x 10 servers (100,000 map elements) cost 1-2 s to
write and 3 s to list, whatever the syntax (text or JSON). The kernel itself needs ~2 us per
element. This module writes the few message and expression shapes portal-es uses directly.

Encodings follow the kernel's dump format exactly (attribute order, default attributes, no
NLA_F_NESTED flag: nf_tables parses nests leniently and dumps them without it), so "what is
live equals what we want" is byte equality of expressions and elements. The tests check it
against the kernel's dumps and, for the shapes nft's text syntax can express, against what
nft itself encodes (so `nft list` shows what this module means).

Constants: include/uapi/linux/netfilter/nf_tables.h, nfnetlink.h, linux/netlink.h.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from typing import ClassVar, NamedTuple

# --- netlink framing ----------------------------------------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NFPROTO_IPV4 = 2
AF_UNSPEC = 0

# nf_tables message types
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET, DELSET = 9, 10, 11
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")
_BE64 = struct.Struct(">Q")
_HOST32 = struct.Struct("=I")
# An element list attribute's length is 16 bits: elements go in messages of at most this size.
_ELEMENTS_PER_MESSAGE_BYTES = 60_000


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind, b"".join(parts))


def be32(kind: int, value: int) -> bytes:
    return attr(kind, _BE32.pack(value & 0xFFFFFFFF))


def be64(kind: int, value: int) -> bytes:
    return attr(kind, _BE64.pack(value))


@lru_cache(maxsize=256)
def strz(kind: int, value: str) -> bytes:
    """A NUL-terminated string attribute (names repeat: table, maps, shared chains)."""
    return attr(kind, value.encode() + b"\0")


class Message(NamedTuple):
    """One nf_tables request: type, flags, body (attributes), and what it does (for errors).
    A tuple, not a dataclass: a full sync builds 20,000 of them."""

    kind: int
    flags: int
    body: bytes
    what: str = ""
    family: int = NFPROTO_IPV4

    def encode(self, seq: int) -> bytes:
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | self.kind
        return _HDR.pack(20 + len(self.body), msg_type, self.flags, seq, 0) + \
            _NFGEN.pack(self.family, 0, 0) + self.body


def _batch_marker(kind: int, seq: int) -> bytes:
    payload = _NFGEN.pack(AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    return _HDR.pack(16 + len(payload), kind, NLM_F_REQUEST, seq, 0) + payload


def batch(messages: list[Message], first_seq: int = 1) -> bytes:
    """One transaction: BEGIN, the messages (seq first_seq+1...), END. Only the last message
    asks for an acknowledgement: errors are always reported, and its answer ends the reply."""
    parts = [_batch_marker(NFNL_MSG_BATCH_BEGIN, first_seq)]
    last = len(messages) - 1
    for i, m in enumerate(messages):
        msg = m if i != last else m._replace(flags=m.flags | NLM_F_ACK)
        parts.append(msg.encode(first_seq + 1 + i))
    parts.append(_batch_marker(NFNL_MSG_BATCH_END, first_seq + 1 + len(messages)))
    return b"".join(parts)


def dump_request(kind: int, body: bytes, seq: int) -> bytes:
    return Message(kind, NLM_F_REQUEST | NLM_F_DUMP, body).encode(seq)


# --- decoding -----------------------------------------------------------------------------------


def attributes(buf: bytes) -> dict[int, bytes]:
    """The attributes of one level (type -> payload), nest flags dropped."""
    out = {}
    off, end = 0, len(buf)
    while off + 4 <= end:
        size, kind = _NLA.unpack_from(buf, off)
        if size < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + size]
        off += (size + 3) & ~3
    return out


def attribute_list(buf: bytes) -> Iterator[bytes]:
    """The payloads of a list nest (NFTA_LIST_ELEM ...), in order."""
    off, end = 0, len(buf)
    while off + 4 <= end:
        size = _NLA.unpack_from(buf, off)[0]
        if size < 4:
            break
        yield buf[off + 4:off + size]
        off += (size + 3) & ~3


class Reply(NamedTuple):
    """One message of the kernel's answer: type, sequence number, payload after nlmsghdr.
    (A tuple: a full sync reads ~25,000 of them.)"""

    kind: int
    seq: int
    payload: bytes

    @property
    def error(self) -> int:
        """NLMSG_ERROR: 0 = acknowledgement, else a negative errno."""
        return int(struct.unpack_from("=i", self.payload)[0])

    def extack_message(self) -> str:
        """The kernel's extended-ack text, if any (NLMSGERR_ATTR_MSG after the echoed header)."""
        if len(self.payload) < 20:
            return ""
        echoed = struct.unpack_from("=I", self.payload, 4)[0]
        flags = struct.unpack_from("=H", self.payload, 10)[0]
        # NLM_F_CAPPED (0x100): only the header was echoed; NLM_F_ACK_TLVS (0x200): TLVs follow.
        if not flags & 0x200:
            return ""
        start = 4 + (16 if flags & 0x100 else echoed)
        msg = attributes(self.payload[start:]).get(1, b"")
        return msg.rstrip(b"\0").decode(errors="replace")


def replies(buf: bytes) -> Iterator[Reply]:
    off = 0
    while off + 16 <= len(buf):
        size, kind, _flags, seq, _pid = _HDR.unpack_from(buf, off)
        if size < 16:
            break
        yield Reply(kind, seq, buf[off + 16:off + size])
        off += (size + 3) & ~3


def object_attributes(reply: Reply) -> dict[int, bytes]:
    """A dump message's attributes (after its nfgenmsg)."""
    return attributes(reply.payload[4:])


def text(value: bytes) -> str:
    return value.rstrip(b"\0").decode()


def u32(value: bytes) -> int:
    return int(_BE32.unpack(value)[0])


def s32(value: bytes) -> int:
    return int(_BE32S.unpack(value)[0])


# --- registers, verdicts, data ------------------------------------------------------------------

NFT_REG_VERDICT = 0


def reg32(index: int) -> int:
    """The register holding 32-bit word `index` of the register file, numbered as the kernel
    dumps it: words on a 128-bit boundary as NFT_REG_1..4, the others as NFT_REG32_xx."""
    return index // 4 + 1 if index % 4 == 0 else 8 + index


NF_DROP, NF_ACCEPT = 0, 1
NFT_JUMP, NFT_GOTO, NFT_RETURN = -3, -4, -5


@dataclass(frozen=True)
class Verdict:
    code: int
    chain: str | None = None

    def encode(self) -> bytes:
        return verdict_data(self.code, self.chain)


def verdict_data(code: int, chain: str | None = None) -> bytes:
    """NFTA_DATA_VERDICT { CODE, CHAIN }: one per service in the dispatch map, so built
    with two packs rather than nested attr() calls."""
    code_attr = _NLA.pack(8, 1) + _BE32S.pack(code)
    if chain is None:
        return _NLA.pack(4 + 8, 2) + code_attr
    name = chain.encode() + b"\0"
    padded = name + b"\0" * (-len(name) % 4)
    return _NLA.pack(4 + 8 + 4 + len(padded), 2) + code_attr + \
        _NLA.pack(4 + len(name), 2) + padded


def goto(chain: str) -> Verdict:
    return Verdict(NFT_GOTO, chain)


def jump(chain: str) -> Verdict:
    return Verdict(NFT_JUMP, chain)


DROP = Verdict(NF_DROP)


def value(data: bytes) -> bytes:
    return attr(1, data)  # NFTA_DATA_VALUE


def ipv4(address: str) -> bytes:
    return socket.inet_aton(address)


def port(number: int) -> bytes:
    """An inet_service in a register or key: big endian, padded to 32 bits."""
    return struct.pack(">HH", number, 0)


_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTOCOL_NAMES = {v: k for k, v in _PROTOCOLS.items()}


def protocol(name: str) -> bytes:
    """An inet_proto in a key: one byte, padded to 32 bits."""
    return bytes((_PROTOCOLS[name], 0, 0, 0))


def protocol_name(data: bytes) -> str:
    return _PROTOCOL_NAMES.get(data[0], str(data[0]))


def host32(number: int) -> bytes:
    """A host-endian 32-bit value (meta mark, meta priority, ct mark)."""
    return _HOST32.pack(number)


# --- expressions --------------------------------------------------------------------------------

NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFT_META_PRIORITY, NFT_META_MARK, NFT_META_L4PROTO = 2, 3, 16
NFT_CT_MARK = 3
NFT_CMP_EQ = 0
NFT_NG_INCREMENTAL, NFT_NG_RANDOM = 0, 1
NFT_DYNSET_OP_UPDATE = 1
NFT_CONNLIMIT_F_INV = 1
NFT_NAT_DNAT = 1
# NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED (the kernel sets both for "dnat to a:p")
NAT_FLAGS_ADDR_PORT = 0x3


class Expr:
    """One nf_tables expression: its name and its NFTA_EXPR_DATA attributes."""

    name: ClassVar[str]

    def data(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        return nest(1, strz(1, self.name), nest(2, self.data()))  # NFTA_LIST_ELEM


@dataclass(frozen=True)
class Payload(Expr):
    base: int
    offset: int
    length: int
    dreg: int
    name: ClassVar[str] = "payload"

    def data(self) -> bytes:
        return be32(1, self.dreg) + be32(2, self.base) + be32(3, self.offset) + \
            be32(4, self.length)


@dataclass(frozen=True)
class MetaLoad(Expr):
    key: int
    dreg: int
    name: ClassVar[str] = "meta"

    def data(self) -> bytes:
        return be32(2, self.key) + be32(1, self.dreg)


@dataclass(frozen=True)
class MetaSet(Expr):
    key: int
    sreg: int
    name: ClassVar[str] = "meta"

    def data(self) -> bytes:
        return be32(2, self.key) + be32(3, self.sreg)


@dataclass(frozen=True)
class CtLoad(Expr):
    key: int
    dreg: int
    name: ClassVar[str] = "ct"

    def data(self) -> bytes:
        return be32(1, self.dreg) + be32(2, self.key)


@dataclass(frozen=True)
class CtSet(Expr):
    """Set a conntrack field. Unlike `meta set` and `immediate`, ct has no validate hook: a
    rule made of ct set, numgen, hash, payload and bitwise does not make the kernel re-check
    the whole table on commit."""

    key: int
    sreg: int
    name: ClassVar[str] = "ct"

    def data(self) -> bytes:
        return be32(4, self.sreg) + be32(2, self.key)


@dataclass(frozen=True)
class Bitwise(Expr):
    """dreg = (sreg & mask) ^ xor"""

    sreg: int
    dreg: int
    mask: bytes
    xor: bytes
    name: ClassVar[str] = "bitwise"

    def data(self) -> bytes:
        return be32(1, self.sreg) + be32(2, self.dreg) + be32(3, len(self.mask)) + \
            be32(6, 0) + nest(4, value(self.mask)) + nest(5, value(self.xor))


@dataclass(frozen=True)
class Cmp(Expr):
    sreg: int
    data_: bytes
    op: int = NFT_CMP_EQ
    name: ClassVar[str] = "cmp"

    def data(self) -> bytes:
        return be32(1, self.sreg) + be32(2, self.op) + nest(3, value(self.data_))


@dataclass(frozen=True)
class Immediate(Expr):
    dreg: int
    data_: bytes | Verdict
    name: ClassVar[str] = "immediate"

    def data(self) -> bytes:
        inner = self.data_.encode() if isinstance(self.data_, Verdict) else value(self.data_)
        return be32(1, self.dreg) + nest(2, inner)


@dataclass(frozen=True)
class Numgen(Expr):
    dreg: int
    modulus: int
    kind: int
    offset: int = 0
    name: ClassVar[str] = "numgen"

    def data(self) -> bytes:
        return be32(1, self.dreg) + be32(2, self.modulus) + be32(3, self.kind) + \
            be32(4, self.offset)


@dataclass(frozen=True)
class Jhash(Expr):
    sreg: int
    dreg: int
    length: int
    modulus: int
    seed: int
    offset: int = 0
    name: ClassVar[str] = "hash"

    def data(self) -> bytes:
        offset = be32(6, self.offset) if self.offset else b""  # dumped only when set
        return be32(1, self.sreg) + be32(2, self.dreg) + be32(3, self.length) + \
            be32(4, self.modulus) + be32(5, self.seed) + offset + be32(7, 0)  # jenkins


@dataclass(frozen=True)
class Lookup(Expr):
    set: str
    sreg: int
    dreg: int | None = None  # None: membership test; NFT_REG_VERDICT: verdict map
    name: ClassVar[str] = "lookup"

    def data(self) -> bytes:
        dreg = be32(3, self.dreg) if self.dreg is not None else b""
        return strz(1, self.set) + be32(2, self.sreg) + dreg + be32(5, 0)


@dataclass(frozen=True)
class Dynset(Expr):
    """Add the key (and data) to a dynamic set from the packet path, or refresh its timeout."""

    set: str
    sreg_key: int
    timeout_ms: int
    sreg_data: int | None = None
    op: int = NFT_DYNSET_OP_UPDATE
    name: ClassVar[str] = "dynset"

    def data(self) -> bytes:
        data = be32(5, self.sreg_data) if self.sreg_data is not None else b""
        return be32(4, self.sreg_key) + data + be32(3, self.op) + strz(1, self.set) + \
            be64(6, self.timeout_ms) + be32(9, 0)


@dataclass(frozen=True)
class Connlimit(Expr):
    count: int
    flags: int = 0
    name: ClassVar[str] = "connlimit"

    def data(self) -> bytes:
        return be32(1, self.count) + be32(2, self.flags)


@dataclass(frozen=True)
class Dnat(Expr):
    """DNAT to the address in reg_addr and the port in reg_proto (IPv4)."""

    reg_addr: int
    reg_proto: int
    name: ClassVar[str] = "nat"

    def data(self) -> bytes:
        return be32(1, NFT_NAT_DNAT) + be32(2, NFPROTO_IPV4) + be32(3, self.reg_addr) + \
            be32(4, self.reg_addr) + be32(5, self.reg_proto) + be32(6, self.reg_proto) + \
            be32(7, NAT_FLAGS_ADDR_PORT)


@dataclass(frozen=True)
class Masquerade(Expr):
    name: ClassVar[str] = "masq"

    def data(self) -> bytes:
        return b""


Rule = tuple[Expr, ...]


def encode_rule(rule: Rule) -> bytes:
    """The NFTA_RULE_EXPRESSIONS payload of a rule (what a dump shows for it)."""
    return b"".join(e.encode() for e in rule)


# --- objects ------------------------------------------------------------------------------------

NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 3, 4
NFT_SET_MAP, NFT_SET_TIMEOUT, NFT_SET_EVAL = 0x8, 0x10, 0x20
NFT_DATA_VERDICT = 0xFFFFFF00


@dataclass(frozen=True)
class Hook:
    """A base chain's hook: chain type "nat", policy accept."""

    hook: int
    priority: int

    def encode(self) -> bytes:
        return nest(4, be32(1, self.hook), attr(2, _BE32S.pack(self.priority))) + \
            be32(5, NF_ACCEPT) + strz(7, "nat")


@dataclass(frozen=True)
class SetSpec:
    """A named set or map: key/data types as nft's datatype ids (concatenations: 6 bits per
    field), lengths in bytes (each concatenated field padded to 32 bits)."""

    name: str
    flags: int
    key_type: int
    key_len: int
    data_type: int = 0
    data_len: int = 0
    size: int = 0  # maximum element count (dynamic sets), 0 = the kernel's default
    # nft's own notes on the set (libnftnl "udata"): only read by `nft list`, not compared
    userdata: bytes = field(default=b"", compare=False)

    def body(self, table: str, set_id: int) -> bytes:
        out = strz(1, table) + strz(2, self.name) + be32(3, self.flags) + \
            be32(4, self.key_type) + be32(5, self.key_len)
        if self.flags & NFT_SET_MAP:
            out += be32(6, self.data_type) + be32(7, self.data_len)
        if self.size:
            out += nest(9, be32(1, self.size))
        out += be32(10, set_id)
        return out + attr(13, self.userdata) if self.userdata else out


# nft's set userdata: NFTNL_UDATA_SET_DATABYTEORDER = BYTEORDER_HOST_ENDIAN, so that `nft list`
# prints host-endian map data (meta priority values) the right way round.
USERDATA_HOST_ENDIAN_DATA = bytes((1, 4)) + struct.pack("=I", 1)


def concat_type(*types: int) -> int:
    """nft's id of a concatenated datatype (its listing shows the fields again)."""
    out = 0
    for t in types:
        out = (out << 6) | t
    return out


def new_table(table: str) -> Message:
    return Message(NEWTABLE, NLM_F_REQUEST | NLM_F_CREATE, strz(1, table), f"add table {table}")


def delete_table(table: str) -> Message:
    return Message(DELTABLE, NLM_F_REQUEST, strz(1, table), f"delete table {table}")


def new_chain(table: str, chain: str, hook: Hook | None = None) -> Message:
    body = strz(1, table) + attr(3, chain.encode() + b"\0") + (hook.encode() if hook else b"")
    return Message(NEWCHAIN, NLM_F_REQUEST | NLM_F_CREATE, body, f"add chain {chain}")


def delete_chain(table: str, chain: str) -> Message:
    return Message(DELCHAIN, NLM_F_REQUEST, strz(1, table) + strz(3, chain),
                   f"delete chain {chain}")


def flush_chain(table: str, chain: str) -> Message:
    return Message(DELRULE, NLM_F_REQUEST, strz(1, table) + strz(2, chain),
                   f"flush chain {chain}")


def new_rule(table: str, chain: str, expressions: bytes) -> Message:
    body = strz(1, table) + attr(2, chain.encode() + b"\0") + attr(4, expressions)
    return Message(NEWRULE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND, body,
                   f"add rule to {chain}")


def new_set(table: str, spec: SetSpec, set_id: int) -> Message:
    return Message(NEWSET, NLM_F_REQUEST | NLM_F_CREATE, spec.body(table, set_id),
                   f"add set {spec.name}")


def delete_set(table: str, name: str) -> Message:
    return Message(DELSET, NLM_F_REQUEST, strz(1, table) + strz(2, name), f"delete set {name}")


@lru_cache(maxsize=64)
def _element_headers(key_len: int, data_len: int | None) -> tuple[bytes, bytes]:
    """The attribute headers around an element's key and data (sizes are all multiples of 4
    here: no padding): one NFTA_LIST_ELEM costs a concatenation, not four nests."""
    key = _NLA.pack(8 + key_len, 1) + _NLA.pack(4 + key_len, 1)
    data = b"" if data_len is None else _NLA.pack(4 + data_len, 2)
    size = 4 + len(key) + key_len + len(data) + (data_len or 0)
    return _NLA.pack(size, 1) + key, data


def element(key: bytes, data: bytes | None = None) -> bytes:
    """One NFTA_LIST_ELEM: key and (maps) data, both already encoded values: `data` is the
    NFTA_SET_ELEM_DATA payload (value(...) or Verdict.encode())."""
    if len(key) % 4 or (data is not None and len(data) % 4):
        inner = nest(1, value(key)) + (nest(2, data) if data is not None else b"")
        return nest(1, inner)
    head, middle = _element_headers(len(key), None if data is None else len(data))
    return head + key + middle + data if data is not None else head + key


def _element_messages(kind: int, flags: int, table: str, name: str,
                      encoded: list[bytes], what: str) -> list[Message]:
    head = strz(1, table) + strz(2, name)
    sizes = set(map(len, encoded))
    if len(sizes) == 1:  # one size (always, within a map of ours): plain slices
        per = max(1, _ELEMENTS_PER_MESSAGE_BYTES // sizes.pop())
        return [Message(kind, flags, head + nest(3, *encoded[i:i + per]), what)
                for i in range(0, len(encoded), per)]
    out: list[Message] = []
    start, size = 0, 0
    for i, e in enumerate(encoded):
        if size + len(e) > _ELEMENTS_PER_MESSAGE_BYTES:
            out.append(Message(kind, flags, head + nest(3, *encoded[start:i]), what))
            start, size = i, 0
        size += len(e)
    if start < len(encoded):
        out.append(Message(kind, flags, head + nest(3, *encoded[start:]), what))
    return out


def _encode_elements(elements: list[tuple[bytes, bytes | None]]) -> list[bytes]:
    """element() for many: when all keys and all data have one length each (they do, per
    map) the headers are computed once and each element is a single concatenation."""
    if not elements:
        return []
    data = list(map(itemgetter(1), elements))
    if None not in data:
        key_sizes = set(map(len, map(itemgetter(0), elements)))  # C loops, not Python ones
        data_sizes = set(map(len, data))  # type: ignore[arg-type]
        if len(key_sizes) == 1 and len(data_sizes) == 1:
            lk, ld = key_sizes.pop(), data_sizes.pop()
            if lk % 4 == 0 and ld % 4 == 0:
                head, middle = _element_headers(lk, ld)
                return [head + k + middle + d for k, d in elements]  # type: ignore[operator]
    return [element(k, d) for k, d in elements]


def add_elements(table: str, name: str, elements: Iterable[tuple[bytes, bytes | None]]
                 ) -> list[Message]:
    return _element_messages(NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE, table, name,
                             _encode_elements(list(elements)), f"add elements to {name}")


def delete_elements(table: str, name: str, keys: Iterable[bytes]) -> list[Message]:
    return _element_messages(DELSETELEM, NLM_F_REQUEST, table, name,
                             [element(k) for k in keys], f"delete elements from {name}")


# --- dumps, decoded -----------------------------------------------------------------------------


def get_rules(table: str, seq: int) -> bytes:
    return dump_request(GETRULE, strz(1, table), seq)


def get_chains(seq: int) -> bytes:
    return dump_request(GETCHAIN, b"", seq)


def get_sets(table: str, seq: int) -> bytes:
    return dump_request(GETSET, strz(1, table), seq)


def get_elements(table: str, name: str, seq: int) -> bytes:
    return dump_request(GETSETELEM, strz(1, table) + strz(2, name), seq)


def get_tables(seq: int) -> bytes:
    return dump_request(GETTABLE, b"", seq)


def decode_set(a: dict[int, bytes]) -> SetSpec:
    """A dumped set's definition (compared with ours: another type or flags differ)."""
    desc = attributes(a.get(9, b""))
    return SetSpec(text(a[2]), u32(a[3]), u32(a[4]), u32(a[5]),
                   u32(a[6]) if 6 in a else 0, u32(a[7]) if 7 in a else 0,
                   u32(desc[1]) if 1 in desc else 0)


def set_count(a: dict[int, bytes]) -> int | None:
    """How many elements a dumped set holds (NFTA_SET_COUNT, kernels >= 6.16; else None)."""
    count = a.get(20)
    return u32(count) if count is not None and len(count) == 4 else None


class LiveChain(NamedTuple):
    name: str
    hook: Hook | None
    other_type: bool = False  # a base chain that is not type nat / policy accept


def decode_chain(a: dict[int, bytes]) -> LiveChain:
    name = a[3][:-1].decode()  # NUL-terminated (attributes() drops the padding)
    if 4 not in a:
        return LiveChain(name, None)
    h = attributes(a[4])
    hook = Hook(u32(h[1]), s32(h[2]))
    other = text(a.get(7, b"nat")) != "nat" or u32(a.get(5, _BE32.pack(NF_ACCEPT))) != NF_ACCEPT
    return LiveChain(name, hook, other)


@lru_cache(maxsize=16)
def _element_layout(key_len: int, data_len: int) -> tuple[re.Pattern[bytes], struct.Struct]:
    """How the kernel dumps an element with a `key_len` key and `data_len` value data and
    nothing else: a pattern matching a run of them, and a record to slice them."""
    value = _NLA.pack(4 + data_len, 1)
    key = _NLA.pack(8 + key_len, 1) + _NLA.pack(4 + key_len, 1)
    data = _NLA.pack(8 + data_len, 2) + value
    elem = _NLA.pack(4 + len(key) + key_len + len(data) + data_len, 1)
    record = re.escape(elem + key) + b".{%d}" % key_len + re.escape(data) + b".{%d}" % data_len
    fmt = f"={len(elem + key)}x{key_len}s{len(data) - 4}x{4 + data_len}s"
    return re.compile(b"(?:" + record + b")*", re.DOTALL), struct.Struct(fmt)


def decode_value_elements(payload: bytes, key_len: int, data_len: int
                          ) -> Iterable[tuple[bytes, bytes | None]]:
    """decode_elements for maps with value data of a fixed length: when every element has
    exactly that shape (the usual case) they are sliced in C - 100,000 elements are read on
    a full sync - else decoded one by one."""
    a = attributes(payload[4:])
    elements = a.get(3, b"")
    pattern, record = _element_layout(key_len, data_len)
    if pattern.fullmatch(elements):
        return record.iter_unpack(elements)
    return decode_elements(payload)


def decode_elements(payload: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """(key value, data attribute payload or None) of every element in a dump message."""
    a = attributes(payload[4:])
    for elem in attribute_list(a.get(3, b"")):
        key: bytes | None = None
        data: bytes | None = None
        off, end = 0, len(elem)
        while off + 4 <= end:
            size, kind = _NLA.unpack_from(elem, off)
            if size < 4:
                break
            kind &= 0x3FFF
            if kind == 1:  # NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
                inner = _NLA.unpack_from(elem, off + 4)[0]
                key = elem[off + 8:off + 4 + inner]
            elif kind == 2:
                data = elem[off + 4:off + size]
            off += (size + 3) & ~3
        if key is not None:
            yield key, data



def decode_rule(a: dict[int, bytes]) -> tuple[str, bytes]:
    """(chain, NFTA_RULE_EXPRESSIONS payload) of a dumped rule."""
    return text(a[2]), a.get(4, b"")
