"""The soak's load: a few keep-alive connections sending the plan's cases in a fixed weighted order, each answer
judged as it arrives.

A raw HTTP/1.1 client on asyncio (uvloop), because the hostile cases must go out exactly as written: no client
library may tidy a path or a header first. Requests are built here from a case (token of the key in use, our
X-Request-Id, spoofed identity headers, body), sent one at a time per connection, and read back with their framing
(Content-Length, chunked, or to the end). Refused-framing cases get a connection of their own, and must see it
closed after the one answer. Every loop is bounded: the load stops at `Schedule.stop_at` or after `max_requests`,
and every request after REQUEST_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .layout import LOOPBACK
from .soakcheck import Answers, Clocks, Problems, Reply, RequestIds, Sent, judge
from .soakplan import SPOOFED, Case, Expect
from .soakrules import UPSTREAM_TIMEOUT_SECONDS
from .soaktokens import TokenBook

REQUEST_TIMEOUT_SECONDS = UPSTREAM_TIMEOUT_SECONDS + 10.0
CLOSE_TIMEOUT_SECONDS = 5.0  # a refused framing: how long the connection may take to close after the answer
READ_LIMIT = 1 << 20
_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


class Schedule:
    """Which case comes next: smooth weighted round robin over the plan, so every kind recurs every few dozen
    requests; at most one `exclusive` case (the slow upstream) in flight, and none started after `long_until`, so
    that none holds the end of the load up; nothing after `stop_at` or `max_requests`."""

    def __init__(self, cases: Sequence[Case], stop_at: float, max_requests: int, long_until: float) -> None:
        self.cases = cases
        self.stop_at = stop_at
        self.max_requests = max_requests
        self.long_until = long_until
        self.issued = 0
        self._order = _interleave([case.weight for case in cases])
        self._position = 0
        self._busy: set[int] = set()

    def next(self) -> int | None:
        if time.monotonic() >= self.stop_at or self.issued >= self.max_requests:
            return None
        for _ in range(len(self._order)):
            index = self._order[self._position % len(self._order)]
            self._position += 1
            if self.cases[index].exclusive:
                if index in self._busy or time.monotonic() > self.long_until:
                    continue
                self._busy.add(index)
            self.issued += 1
            return index
        return None

    def done(self, index: int) -> None:
        self._busy.discard(index)


def _interleave(weights: Sequence[int]) -> list[int]:
    """One cycle of smooth weighted round robin (nginx's upstream balancing): each index `weight` times, spread."""
    total = sum(weights)
    current = [0] * len(weights)
    order = []
    for _ in range(total):
        for index, weight in enumerate(weights):
            current[index] += weight
        chosen = max(range(len(weights)), key=lambda index: current[index])
        current[chosen] -= total
        order.append(chosen)
    return order


@dataclass
class CaseTally:
    sent: int = 0
    wrong: int = 0
    no_answer: int = 0
    injected_5xx: int = 0
    unexplained_5xx: int = 0
    forwarded: int = 0  # answered right, and the upstream had to get it
    refused: int = 0  # answered right with a refusal
    statuses: Counter[int] = field(default_factory=Counter)


class Tally:
    """Every answer, counted by case, with its latency and, for the first few wrong ones of a case, what was wrong."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = cases
        self.by_case = [CaseTally() for _ in cases]
        self.latencies = [array("d") for _ in cases]  # by case, ms
        self.answers: Answers = [None]  # by request number (from 1): the expectation a right answer met
        self._shared: dict[tuple[int, Expect], tuple[int, Expect]] = {}
        self.framing_answered = 0
        self.problems = Problems()

    def record(self, index: int, sent: Sent, status: int | None, problems: list[str], ms: float) -> None:
        tally = self.by_case[index]
        tally.sent += 1
        if status is not None:
            tally.statuses[status] += 1
        self.latencies[index].append(ms)
        if problems:
            tally.wrong += 1
            self.problems.add(self.cases[index].name, sent.request_id, problems)

    def answered(self, number: int, index: int, expect: Expect) -> None:
        if number >= len(self.answers):
            self.answers.extend([None] * (number + 1 - len(self.answers)))
        self.answers[number] = self._shared.setdefault((index, expect), (index, expect))


class Load:
    """The workers and what they share: the plan, the schedule, the tokens, the clocks and the tally."""

    def __init__(
        self, port: int, cases: Sequence[Case], book: TokenBook, clocks: Clocks, schedule: Schedule, ids: RequestIds
    ) -> None:
        self.port = port
        self.cases = cases
        self.book = book
        self.clocks = clocks
        self.schedule = schedule
        self.ids = ids
        self.tally = Tally(cases)
        self._sequence = 0

    async def run(self, connections: int) -> None:
        await asyncio.gather(*(self._worker() for _ in range(connections)))

    async def _worker(self) -> None:
        connection: Connection | None = None
        try:
            while (index := self.schedule.next()) is not None:
                try:
                    connection = await self._one(index, connection)
                finally:
                    self.schedule.done(index)
        finally:
            if connection is not None:
                connection.close()

    async def _one(self, index: int, connection: Connection | None) -> Connection | None:
        """Send case `index`, judge the answer; returns the connection to use next (None: open a new one)."""
        case = self.cases[index]
        self._sequence += 1
        number = self._sequence
        sent, data = self.build(case, self.ids.make(number))
        sent_at = time.monotonic()
        trailing: bytes | None = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                if case.raw is not None:
                    reply, trailing = await _framing_exchange(self.port, data)
                else:
                    if connection is None:
                        connection = await Connection.open(self.port)
                    reply = await connection.exchange(data, head_only=case.method == "HEAD")
        except _FAILURES as exc:
            if connection is not None:
                connection.close()
            answered_at = time.monotonic()
            self.tally.by_case[index].no_answer += 1
            self.tally.record(index, sent, None, [f"no answer: {type(exc).__name__}: {exc}"], _ms(sent_at, answered_at))
            return None
        answered_at = time.monotonic()
        self._judge(index, number, sent, reply, trailing, sent_at, answered_at)
        if reply.close and connection is not None:
            connection.close()
            return None
        return connection

    def _judge(
        self,
        index: int,
        number: int,
        sent: Sent,
        reply: Reply,
        trailing: bytes | None,
        sent_at: float,
        answered_at: float,
    ) -> None:
        case = self.cases[index]
        expects = self.clocks.expectations(case, sent_at, answered_at)
        expect, problems = judge(case, expects, sent, reply, trailing)
        tally = self.tally.by_case[index]
        if reply.status >= 500:
            if expect is not None and expect.injected:
                tally.injected_5xx += 1
            else:
                tally.unexplained_5xx += 1
        if expect is not None:
            if expect.forwarded:
                tally.forwarded += 1
            else:
                tally.refused += 1
            if case.raw is not None:
                self.tally.framing_answered += 1
            else:
                self.tally.answered(number, index, expect)
        self.tally.record(index, sent, reply.status, problems, _ms(sent_at, answered_at))

    def build(self, case: Case, request_id: str) -> tuple[Sent, bytes]:
        """The bytes of one request of `case`, and what checking its answer needs to know about them."""
        if case.raw is not None:
            return Sent(None, None, None), case.raw
        label = self.book.current if case.key == "current" else case.key
        fields = [("Host", "soak.example"), ("User-Agent", "sgbench-soak"), ("X-Request-Id", request_id)]
        claims = None
        value = None
        if case.profile is not None:
            minted = self.book.pick(label, case.profile)
            value, claims = minted.token, minted.claims
        elif case.malformed is not None:
            value = self.book.malformed(label, case.malformed)
        authorization = None
        if value is not None:
            if case.authorization == "basic":
                fields.append(("Authorization", "Basic " + base64.b64encode(b"soak:secret").decode()))
            elif case.authorization == "twice":
                fields += [("Authorization", f"Bearer {value}"), ("Authorization", f"Bearer {value}")]
            else:
                authorization = f"Bearer {value}"
                fields.append(("Authorization", authorization))
        fields += case.headers
        if case.spoof:
            fields += SPOOFED
        if case.body or case.method in ("POST", "PUT"):
            fields.append(("Content-Length", str(len(case.body))))
        head = f"{case.method} {case.target} HTTP/1.1\r\n" + "".join(f"{name}: {v}\r\n" for name, v in fields)
        return Sent(request_id, authorization, claims), head.encode("latin-1") + b"\r\n" + case.body


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


class Connection:
    """One client connection to the proxy port: a request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT))

    async def exchange(self, data: bytes, *, head_only: bool = False) -> Reply:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):  # refused before it read it all: the answer is still to be read
            await self.writer.drain()
        return await read_response(self.reader, head_only=head_only)

    async def rest(self) -> bytes | None:
        """What comes before the proxy closes the connection; None when it stays open CLOSE_TIMEOUT_SECONDS."""
        data = b""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                while chunk := await self.reader.read(65536):
                    data += chunk
                    if len(data) > READ_LIMIT:
                        break
        except TimeoutError:
            return None
        except ConnectionError:
            pass  # a reset after the answer is a close too
        return data

    def close(self) -> None:
        self.writer.close()


async def _framing_exchange(port: int, data: bytes) -> tuple[Reply, bytes | None]:
    connection = await Connection.open(port)
    try:
        reply = await connection.exchange(data)
        return reply, await connection.rest()
    finally:
        connection.close()


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    """One HTTP/1.1 response; raises ValueError (or IncompleteReadError) when it is not one."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    status = int(rest[:3])
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a header field: {line[:100]!r}")
        headers.append((name.strip().lower(), value.strip()))
    values = dict(headers)
    close = "close" in values.get("connection", "").lower() or version == "HTTP/1.0"
    if head_only or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in values.get("transfer-encoding", "").lower():
        body = await _chunked(reader)
    elif "content-length" in values:
        body = await reader.readexactly(int(values["content-length"]))
    else:
        body, close = await reader.read(READ_LIMIT), True
    return Reply(status, tuple(headers), body, close)


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            break
        body += (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass  # trailer fields
    return body
