"""The upstream: a pool of keep-alive HTTP/1.1 connections, each a protocol object parsing responses with httptools.

One request at a time per connection (no pipelining upstream: a slow response would hold up the next one). A
connection goes back to the pool only when its response ended exactly where its framing said: a response that
lies about its length (bytes after the end, a body cut short) poisons the connection, which is closed, so what one
response left behind can never be read as the start of the next.

The response head, body and end reach the `ResponseConsumer` (the exchange) as callbacks; a response's end is
reported only after the parser has consumed the whole chunk it came in, never from inside the parser.

An upstream may answer before it has read the request body (a 413, a 401) and close at once; the kernel then resets
the connection, and the next body write fails. The event loop closes the socket on that write error, unread answer
and all, so while a body is being sent a second descriptor of the socket is kept, through which what the upstream
said before it went away is still read (`_read_what_was_left`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from scopegate.transport import Connection

# Statuses whose responses never have a body (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5).
_NO_BODY_STATUS = frozenset({204, 304})
IDLE_SECONDS = 30.0
MAX_CONNECTIONS = 1024


class ResponseConsumer(Protocol):
    """What the upstream connection reports to, for the one exchange it carries."""

    def upstream_informational(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]]) -> None:
        """A 1xx response other than 101 (the final response follows)."""
        ...

    def upstream_head(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], framing: ResponseFraming
    ) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_flush(self) -> None:
        """One read from the upstream is parsed: relay what it produced."""
        ...

    def upstream_end(self) -> None: ...

    def upstream_upgraded(self, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], rest: bytes) -> None:
        """101 Switching Protocols: from now on the connection carries raw bytes (`rest` came after the head)."""
        ...

    def upstream_failed(self, why: str) -> None:
        """The connection broke, or the response is malformed, before the response ended."""
        ...

    def upstream_paused(self) -> None:
        """The upstream is not taking the request body as fast as it comes: stop sending until resumed."""
        ...

    def upstream_resumed(self) -> None: ...


class ResponseFraming:
    """How a response's body is delimited."""

    __slots__ = ("chunked", "content_length", "keep_alive", "no_body", "until_close")

    def __init__(
        self, content_length: int | None, chunked: bool, until_close: bool, keep_alive: bool, *, no_body: bool
    ) -> None:
        self.content_length = content_length  # as the upstream declared it (also for HEAD and 304)
        self.no_body = no_body  # the answer to a HEAD, a 204 or a 304: no body, whatever the length says
        self.chunked = chunked
        self.until_close = until_close  # no length: the body ends when the upstream closes
        self.keep_alive = keep_alive


class UpstreamConnection(Connection):
    """One connection to the upstream, carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._consumer: ResponseConsumer | None = None
        self._fields: list[tuple[bytes, bytes, bytes]] = []
        self._reason = b""
        self._head_only = False
        self._final = False  # the response in progress is the final one (not a 1xx)
        self._upgrade_head: tuple[bytes, list[tuple[bytes, bytes, bytes]]] | None = None
        self._framing: ResponseFraming | None = None
        self._ended = False
        self._poisoned = False
        self._tunnel = False
        self.served = 0  # exchanges completed on this connection: a failure on a reused one may be a stale close
        self.answered = False  # the exchange under way has received bytes from the upstream
        self._reading_paused = False
        self._spare_fd: int | None = None  # the socket's second descriptor while a request body is being sent

    # --- for the exchange -------------------------------------------------------------------------------------

    def begin(self, consumer: ResponseConsumer, *, head_only: bool, with_body: bool = False) -> None:
        """Carry one exchange; `head_only` for a HEAD request, whose response has no body whatever it declares;
        `with_body` when a request body follows the head (an early answer to it must not be lost)."""
        self._consumer = consumer
        self._head_only = head_only
        self._ended = self._final = self.answered = False
        self._framing = None
        self._upgrade_head = None
        if with_body and not self._pool.https:  # TLS records could not be read past the transport anyway
            self._keep_spare_fd()

    def write_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def pause_reading(self) -> None:
        """The client is not reading the response: let the upstream wait (TCP back-pressure)."""
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()

    def release(self, *, reusable: bool) -> None:
        """The exchange is over: back to the pool when the connection is clean and `reusable`, else closed."""
        self._consumer = None
        self.served += 1
        self._close_spare_fd()
        clean = reusable and self._ended and not self._poisoned and not self._tunnel and not self.closed
        framing = self._framing
        if clean and framing is not None and framing.keep_alive and not framing.until_close:
            self._fields = []
            self.resume_reading()  # a slow client may have paused it as its response ended: the next one must flow
            if self._head_only:
                # llhttp still waits for the body a HEAD response declared: the next response needs a fresh parser.
                self._parser = httptools.HttpResponseParser(self)
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        """Close now. Not `transport.close()`, which waits until the write buffer is sent: what is left of a request
        body is worth nothing once its exchange is over, and an upstream that stopped reading would hold the
        connection open for good."""
        self._consumer = None
        self._close_spare_fd()
        if self.transport is not None:
            self.transport.abort()

    def start_tunnel(self) -> None:
        """After 101: the bytes that arrive are the other protocol's, relayed as they are."""
        self._tunnel = True

    # --- asyncio.Protocol -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        consumer = self._consumer
        if self._tunnel:
            if consumer is not None:
                consumer.upstream_body(data)
            return
        if consumer is None or self._ended:
            self._poisoned = True  # bytes nobody asked for: this connection's framing can't be trusted any more
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self._poisoned = True
            if not self._ended:  # after the end, the garbage only costs the connection its reuse
                self._fail(f"malformed_response: {exc.args[0] if exc.args else type(exc).__name__}")
                return
        if self._consumer is consumer:
            if self._ended:
                consumer.upstream_end()
            else:
                consumer.upstream_flush()

    def eof_received(self) -> bool | None:
        consumer = self._consumer
        if self._tunnel and consumer is not None:
            consumer.upstream_end()  # the upstream half-closed its side of the tunnel
            return True
        framing = self._framing
        if consumer is not None and framing is not None and framing.until_close and not self._ended:
            self._ended = True
            consumer.upstream_end()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        if exc is not None and self._spare_fd is not None:
            self._read_what_was_left()
        else:
            self._close_spare_fd()
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if self._tunnel:
            consumer.upstream_end()
        elif not self._ended:
            framing = self._framing
            if framing is not None and framing.until_close:
                self._ended = True
                consumer.upstream_end()
            else:
                consumer.upstream_failed("upstream_closed" if exc is None else type(exc).__name__)

    def pause_writing(self) -> None:
        if self._consumer is not None:
            self._consumer.upstream_paused()

    def resume_writing(self) -> None:
        if self._consumer is not None:
            self._consumer.upstream_resumed()

    # --- parser callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._ended:
            self._poisoned = True  # a second response to one request
        self._fields = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), name, value))

    def on_headers_complete(self) -> None:
        parser, consumer = self._parser, self._consumer
        status = parser.get_status_code()
        if consumer is None or self._ended:
            self._poisoned = True
            return
        if status == 101:
            self._upgrade_head = (self._reason, self._fields)
            return
        if status < 200:
            consumer.upstream_informational(status, self._reason, self._fields)
            return
        self._final = True
        framing = _response_framing(self._fields, status, self._head_only, parser.should_keep_alive())
        if framing is None:
            self._poisoned = True
            raise _UnsupportedFraming
        self._framing = framing
        consumer.upstream_head(status, self._reason, self._fields, framing)
        if framing.no_body:
            self._ended = True  # llhttp would wait for a HEAD response's declared body: it never comes

    def on_body(self, data: bytes) -> None:
        if self._ended:
            self._poisoned = True  # a HEAD response with a body
            return
        if self._consumer is not None:
            self._consumer.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._final:
            self._ended = True

    # --- internals --------------------------------------------------------------------------------------------

    def _upgraded(self, rest: bytes) -> None:
        consumer, head = self._consumer, self._upgrade_head
        if consumer is None or head is None:
            self._poisoned = True
            self.close()
            return
        self._ended = True
        consumer.upstream_upgraded(head[0], head[1], rest)

    def _keep_spare_fd(self) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if self._spare_fd is None and sock is not None:
            self._spare_fd = os.dup(sock.fileno())

    def _close_spare_fd(self) -> None:
        spare, self._spare_fd = self._spare_fd, None
        if spare is not None:
            os.close(spare)

    def _read_what_was_left(self) -> None:
        """The connection broke while the request body was being sent: read what the upstream sent before it went
        away (an early answer), as if it had arrived in time. The descriptor shares the transport's non-blocking
        mode, so this reads only what is already there."""
        spare, self._spare_fd = self._spare_fd, None
        assert spare is not None
        try:
            while self._consumer is not None and not self._ended and (data := os.read(spare, 65536)):
                self.data_received(data)
        except OSError:
            pass  # nothing more to read (EAGAIN), or the reset itself once the data is consumed
        finally:
            os.close(spare)

    def _fail(self, why: str) -> None:
        consumer, self._consumer = self._consumer, None
        self.close()
        if consumer is not None:
            consumer.upstream_failed(why)


class _UnsupportedFraming(Exception):
    """A response framed in a way scopegate does not relay (a transfer coding other than chunked)."""


def _response_framing(
    fields: list[tuple[bytes, bytes, bytes]], status: int, head_only: bool, keep_alive: bool
) -> ResponseFraming | None:
    """How the body is delimited; None for a transfer coding other than chunked, which is not relayed."""
    content_length: int | None = None
    chunked = False
    for lower, _, value in fields:
        if lower == b"content-length":
            content_length = int(value)
        elif lower == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                return None
            chunked = True
    no_body = head_only or status in _NO_BODY_STATUS
    until_close = not no_body and not chunked and content_length is None
    return ResponseFraming(
        content_length, chunked and not no_body, until_close, keep_alive and not until_close, no_body=no_body
    )


class UpstreamPool:
    """Keep-alive connections to one upstream origin, reused most-recently-used first, at most `max_connections`."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_seconds: float = IDLE_SECONDS,
        trust_forwarded: bool = True,
    ) -> None:
        parts = urlsplit(url)
        # Whether the client's X-Forwarded-* fields are passed on (behind a trusted Ingress) or replaced.
        self.trust_forwarded = trust_forwarded
        self.host = parts.hostname or "127.0.0.1"
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.https else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            self.authority = f"[{self.host}]" + ("" if default_port else f":{self.port}")
        self.host_line = f"Host: {self.authority}\r\n".encode("ascii")  # for requests that bring none
        self._ssl = ssl.create_default_context() if self.https else None
        self._max = max_connections
        self._idle_seconds = idle_seconds
        self._idle: list[tuple[UpstreamConnection, float]] = []
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the pool works in, looked up once (each lookup is a getpid() call on Python 3.11)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for a request, or None (then `open` one)."""
        idle = self._idle
        while idle:
            connection, _ = idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    async def open(self) -> UpstreamConnection:
        """A new connection, or (at the limit) the first one another exchange releases."""
        while self._open >= self._max:
            waiter: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            handed = await waiter
            if handed is not None:
                return handed
            if self._open < self._max:
                break
        self._open += 1
        try:
            _, connection = await self.loop.create_connection(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            )
        except BaseException:
            self._open -= 1
            self._wake_one(None)
            raise
        return connection

    def put_back(self, connection: UpstreamConnection) -> None:
        if self._closed:
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        loop = self.loop
        self._idle.append((connection, loop.time()))
        if self._reaper is None:
            self._reaper = loop.call_later(self._idle_seconds, self._reap)

    def forget(self, connection: UpstreamConnection) -> None:
        """A connection closed: it no longer counts, and a waiting exchange may open another."""
        self._open -= 1
        self._idle = [(idle, since) for idle, since in self._idle if idle is not connection]
        self._wake_one(None)

    def close(self) -> None:
        """Close idle connections now; connections in use close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    def _wake_one(self, handed: UpstreamConnection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handed)
                return

    def _reap(self) -> None:
        """Close connections idle for longer than `idle_seconds`: the upstream may drop them any moment now."""
        self._reaper = None
        loop = self.loop
        cutoff = loop.time() - self._idle_seconds
        keep = [(connection, since) for connection, since in self._idle if since > cutoff]
        for connection, since in self._idle:
            if since <= cutoff:
                connection.close()
        self._idle = keep
        if keep:
            self._reaper = loop.call_later(self._idle_seconds / 2, self._reap)
