"""What both ends of a proxied exchange share: an asyncio protocol whose writes go nowhere once it is closing.

Either side may close at any moment (a client gone, an upstream that broke off) while the other side still has
bytes for it; those are dropped here rather than raising out of the callback that produced them.
"""

from __future__ import annotations

import asyncio
from typing import cast


class Connection(asyncio.Protocol):
    """An asyncio protocol that keeps its transport and writes to it only while it is open."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Several buffers in one system call (uvloop writes them with writev)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)
