"""The proxy port's listener: accepting connections, checking their deadlines, and draining them on shutdown.

Deadlines (the request-head deadline, idle keep-alive, lingering before a close) are checked by one sweep for all
connections rather than a timer per request: a request then costs no timer at all, and a deadline is acted on
within a quarter of a second of passing.
"""

from __future__ import annotations

import asyncio
import contextlib

from scopegate.http1 import ClientConnection, RequestHandler
from scopegate.limits import Limits

# How often deadlines are checked: coarse on purpose, since a timer per request would cost more than the checks.
_SWEEP_SECONDS = 0.25


class Http1Server:
    """The proxy listener: its connections, their deadlines, and draining them on shutdown."""

    def __init__(self, handler: RequestHandler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits  # replaced on reload; a connection keeps the limits it started with
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self._all_closed = asyncio.Event()  # set once draining has no connection left
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def joined(self, connection: ClientConnection) -> bool:
        self.connections.add(connection)
        return len(self.connections) <= self.limits.max_connections

    def forget(self, connection: ClientConnection) -> None:
        self.connections.discard(connection)
        if self.draining and not self.connections:
            self._all_closed.set()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start accepting; returns the bound port (the OS's choice for port 0)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="http1-deadlines")
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self, grace_seconds: float) -> list[ClientConnection]:
        """Stop accepting, close idle connections, give busy ones `grace_seconds`; returns those cut at the end."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace_seconds)
        cut = list(self.connections)
        for connection in cut:
            connection.cut_at_shutdown = True
            connection.cut()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        return cut

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = self.now()
            for connection in list(self.connections):
                if connection.deadline <= now or connection.send_deadline <= now:
                    connection.expire(now)
