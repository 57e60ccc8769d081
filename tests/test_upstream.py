"""The upstream pool and its connections, against a real server on 127.0.0.1: what reuse must never carry over.

The exchange (`proxy.py`) is one consumer of these connections; here a small recording consumer stands in for it,
so each test can pause, end and release a connection exactly when it wants to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from scopegate.upstream import ResponseFraming, UpstreamConnection, UpstreamPool


@dataclass
class Recorder:
    """A ResponseConsumer that keeps what it hears; `pause_on_body` pauses the connection on the first body bytes."""

    connection: UpstreamConnection | None = None
    pause_on_body: bool = False
    status: int = 0
    body: bytes = b""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str = ""

    def upstream_informational(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]]) -> None:
        """Not expected in these tests."""

    def upstream_head(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], framing: ResponseFraming
    ) -> None:
        self.status = status

    def upstream_body(self, data: bytes) -> None:
        self.body += data
        if self.pause_on_body and self.connection is not None:
            self.connection.pause_reading()  # as a client that stopped reading would make the exchange do

    def upstream_flush(self) -> None:
        """Nothing to relay."""

    def upstream_end(self) -> None:
        self.ended.set()

    def upstream_upgraded(self, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], rest: bytes) -> None:
        """Not expected in these tests."""

    def upstream_failed(self, why: str) -> None:
        self.failed = why
        self.ended.set()

    def upstream_paused(self) -> None:
        """The request bodies here are empty."""

    def upstream_resumed(self) -> None:
        """The request bodies here are empty."""


@dataclass
class Upstream:
    url: str
    connections: int = 0
    close_after_each: bool = False


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """Answers every request on a connection with `200 OK`, a 5-byte body, and counts the connections it saw."""
    state = Upstream("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            if state.close_after_each:
                writer.close()
                return

    async def quietly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(quietly, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield state
    server.close()


async def exchange(connection: UpstreamConnection, recorder: Recorder) -> Recorder:
    recorder.connection = connection
    connection.begin(recorder, head_only=False)
    connection.write(b"GET / HTTP/1.1\r\nHost: up\r\n\r\n")
    await asyncio.wait_for(recorder.ended.wait(), timeout=10)
    return recorder


async def test_a_connection_paused_as_its_response_ended_reads_again_when_reused(upstream: Upstream) -> None:
    """A slow client pauses the upstream connection; if that response ends in the same read, the connection goes
    back to the pool paused, and must not stay so: the next response on it has to arrive."""
    pool = UpstreamPool(upstream.url)
    first = await exchange(await pool.open(), Recorder(pause_on_body=True))
    assert (first.status, first.body) == (200, b"hello")
    assert first.connection is not None
    first.connection.release(reusable=True)
    again = pool.take_idle()
    assert again is first.connection, "the clean connection was pooled and handed out again"
    second = await exchange(again, Recorder())
    assert (second.status, second.body, second.failed) == (200, b"hello", "")
    assert upstream.connections == 1
    pool.close()


async def test_a_connection_the_upstream_closed_while_idle_is_never_handed_out(upstream: Upstream) -> None:
    upstream.close_after_each = True
    pool = UpstreamPool(upstream.url)
    connection = await pool.open()
    done = await exchange(connection, Recorder())
    assert done.body == b"hello"
    connection.release(reusable=True)
    # The upstream closed it after answering: once that is seen, the pool must not offer it again.
    for _ in range(1000):
        if connection.closed:
            break
        await asyncio.sleep(0.01)
    assert pool.take_idle() is None
    fresh = await exchange(await pool.open(), Recorder())
    assert (fresh.status, fresh.body) == (200, b"hello")
    assert upstream.connections == 2
    pool.close()
