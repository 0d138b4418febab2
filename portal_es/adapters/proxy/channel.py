"""Messages between the proxy's parent and its worker processes, over a socketpair.

Each message is a 4-byte big-endian length and a pickle. Pickle is safe here: both ends are
this package, started by the parent, over an unnamed socketpair no one else can reach.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

_LENGTH = struct.Struct(">I")


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def receive(reader: asyncio.StreamReader) -> Any:
    """The next message; raises asyncio.IncompleteReadError when the other end is gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))
