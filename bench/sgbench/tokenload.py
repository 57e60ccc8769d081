"""The `--memory` load: one GET per line of a token file, each with its own token, over N keep-alive connections.

wrk does not fit this run: fresh.lua formats every request in init() (~950 MB of RSS for a million tokens),
wrk runs for a time rather than a count, and it counts only statuses >= 400. This client streams the file (a line is
read when a connection is free to send it), sends exactly `count` requests, counts every status, and calls back
every `every` answers so the harness samples at exact request counts. A minimal HTTP/1.1 client over asyncio
streams on uvloop, enough for scopegate in front of the loopback nginx: Content-Length or chunked bodies,
`Connection: close` answered by reconnecting. A failed request (reset, timeout, garbled answer) is counted and its
token is not sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from .layout import LOOPBACK, REQUEST_PATH

REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass
class Outcome:
    """What the load did: requests sent and finished, statuses, failures by kind, and why it stopped early."""

    sent: int = 0
    done: int = 0  # answered or failed
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # no answer: exception name -> count
    seconds: float = 0.0
    stopped: str | None = None  # why it stopped before `count` requests, or None

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def not_ok(self) -> int:
        """Requests without a 200: other statuses and failures."""
        return self.done - self.ok


# Checkpoint callback: gets the tally so far (`done` requests answered or failed); a string it returns stops the load.
Progress = Callable[[Outcome], str | None]


class _Feed:
    """The token file, read a line at a time, and the tally; every connection task shares one (one event loop)."""

    def __init__(self, path: Path, count: int, every: int, progress: Progress, deadline: float, max_not_ok: int):
        self._file = path.open("rb")
        self._count = count
        self._every = every
        self._progress = progress
        self._deadline = deadline
        self._max_not_ok = max_not_ok
        self.outcome = Outcome()

    def next_token(self) -> bytes | None:
        outcome = self.outcome
        if outcome.stopped is not None or outcome.sent >= self._count:
            return None
        if time.monotonic() > self._deadline:
            outcome.stopped = f"time limit reached after {outcome.sent:,} requests"
            return None
        line = b""
        while not line:
            raw = self._file.readline()
            if not raw:
                outcome.stopped = f"the token file ended after {outcome.sent:,} tokens"
                return None
            line = raw.strip()
        outcome.sent += 1
        return line

    def finished(self, status: int | None, failure: str | None = None) -> None:
        outcome = self.outcome
        outcome.done += 1
        if status is not None:
            outcome.statuses[status] += 1
        if failure is not None:
            outcome.failures[failure] += 1
        if outcome.not_ok > self._max_not_ok and outcome.stopped is None:
            outcome.stopped = f"more than {self._max_not_ok:,} requests without a 200"
        if outcome.done % self._every == 0 or outcome.done == self._count:
            reason = self._progress(outcome)
            if reason is not None and outcome.stopped is None:
                outcome.stopped = reason

    def close(self) -> None:
        self._file.close()


def drive(
    port: int,
    tokens: Path,
    count: int,
    *,
    connections: int,
    every: int,
    progress: Progress,
    max_seconds: float,
    max_not_ok: int,
) -> Outcome:
    """Send `count` requests (one per token line) to scopegate on `port`, `connections` at a time."""
    feed = _Feed(tokens, count, every, progress, time.monotonic() + max_seconds, max_not_ok)
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_run(port, feed, connections))
    finally:
        feed.close()
    feed.outcome.seconds = time.monotonic() - started
    return feed.outcome


async def _run(port: int, feed: _Feed, connections: int) -> None:
    prefix = f"GET {REQUEST_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAuthorization: Bearer ".encode()
    await asyncio.gather(*(_connection(port, feed, prefix) for _ in range(connections)))


async def _connection(port: int, feed: _Feed, prefix: bytes) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while (token := feed.next_token()) is not None:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    if reader is None or writer is None:
                        reader, writer = await asyncio.open_connection(LOOPBACK, port)
                    writer.write(prefix + token + b"\r\n\r\n")
                    status, close = await _response(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                feed.finished(None, type(exc).__name__)
                close, status = True, None
            else:
                feed.finished(status)
            if close and writer is not None:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, whether the connection must be closed after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF; after the last (empty) one, the final CRLF
            if size == 0:
                break
    elif length is not None:
        await reader.readexactly(length)
    else:  # no framing: the body runs to the end of the connection
        await reader.read()
        close = True
    return status, close
