"""HTTP/1.1 on the proxy port: bytes in, requests out one at a time; one protocol object per connection, no tasks.

`ClientConnection` feeds what the client sends to httptools (llhttp, the parser under aiohttp's and uvicorn's fast
paths) in its strict mode, and hands each complete request to the `RequestHandler` (the pipeline) once the whole
read is parsed and the previous response on the connection is done: pipelined requests wait their turn, with
reading paused. The request body streams to whoever consumes it (`BodyConsumer`: the exchange with the upstream),
buffered only until that consumer is attached and only up to a high-water mark, after which reading pauses.

The framing rules are `wire.read_framing`; the connection enforces the size and time limits on top: request line
-> 414, header fields -> 431, a head not complete within the header deadline -> 408. Each refusal is answered once,
then the connection closes: after a framing error nothing more on it can be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import NoReturn, Protocol

import httptools

from scopegate.errors import BadRequest, Overloaded, Rejection
from scopegate.limits import Limits
from scopegate.request import Headers, RequestFacts
from scopegate.transport import Connection
from scopegate.wire import Framing, read_framing

# Buffer a request body up to this much while nobody consumes it yet (the decision is pending), then pause reading.
BODY_HIGH_WATER = 256 * 1024
# What a request head may take beyond its line and fields: CRLFs, colons, the version.
_HEAD_SLACK = 1024
# What a closing connection still reads and drops of a body the client keeps sending after its answer.
_LINGER_BYTES = 1 << 20

# Why reading is paused; reading resumes when no reason is left.
_PAUSED_BY_BUFFER = 1  # a body is buffered up to the high-water mark
_PAUSED_BY_PIPELINE = 2  # a pipelined request waits for the one before it
_PAUSED_BY_CONSUMER = 4  # the upstream is not taking the body as fast as it comes
_PAUSED_BY_CLOSING = 8  # nothing more will be read as a request

_IDLE, _HEAD, _BUSY, _LINGER = "idle", "head", "busy", "linger"


class BodyConsumer(Protocol):
    """Takes a request's body as it arrives (after a WebSocket upgrade: the client's raw bytes), and hears about the
    client's side of the connection."""

    def body(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...

    def body_broken(self, error: BadRequest | None) -> None:
        """The body cannot complete: a framing error in it, or (None) the client closed mid-body."""
        ...

    def client_paused(self) -> None:
        """The client is not reading: stop producing response bytes until `client_resumed`."""
        ...

    def client_resumed(self) -> None: ...

    def client_lost(self) -> None:
        """The connection is gone; nothing more can be written."""
        ...


class Listener(Protocol):
    """What a connection needs of the listener that accepted it (`listener.Http1Server`)."""

    limits: Limits  # for connections from now on: a reload may replace it
    handler: RequestHandler
    draining: bool

    def joined(self, connection: ClientConnection) -> bool:
        """Count the connection in; False when that makes one more than `limits.max_connections`."""
        ...

    def forget(self, connection: ClientConnection) -> None: ...

    def now(self) -> float: ...


class RequestHandler(Protocol):
    """What the connection calls: a request whose turn has come, or a framing error to answer (then it closes)."""

    def handle(self, connection: ClientConnection, request: IncomingRequest) -> None: ...

    def refuse(self, connection: ClientConnection, error: Rejection, method: str) -> None: ...


class IncomingRequest:
    """One request on a connection: its facts for the decision, its framing, and its body as a stream."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_connection",
        "_consumer",
        "body_bytes",
        "broken",
        "complete",
        "facts",
        "framing",
        "keep_alive",
        "left_mid_body",
        "method_bytes",
        "version",
    )

    def __init__(
        self,
        connection: ClientConnection,
        facts: RequestFacts,
        framing: Framing,
        version: str,
        keep_alive: bool,
        method_bytes: bytes,
    ) -> None:
        self._connection = connection
        self.facts = facts
        self.method_bytes = method_bytes
        self.framing = framing
        self.version = version
        self.keep_alive = keep_alive
        self.complete = False  # the whole body (or, for an upgrade, the head) has arrived
        self.broken: BadRequest | None = None
        self.left_mid_body = False  # broken because the client went away, not by what it sent
        self.body_bytes = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._consumer: BodyConsumer | None = None

    @property
    def method(self) -> str:
        return self.facts.method

    def consume(self, consumer: BodyConsumer) -> None:
        """From now on the body goes to `consumer`: what was buffered first, then the rest as it arrives."""
        self._consumer = consumer
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for data in buffered:
            consumer.body(data)
        self._connection.resume_reading(_PAUSED_BY_BUFFER)
        if self.broken is not None:
            consumer.body_broken(self.failure)
        elif self.complete and not self.framing.websocket:
            consumer.body_end()

    @property
    def consumer(self) -> BodyConsumer | None:
        return self._consumer

    def received(self, data: bytes) -> None:
        self.body_bytes += len(data)
        limit = self._connection.limits.max_body_bytes
        if limit is not None and self.body_bytes > limit and not self.framing.websocket:
            error = BadRequest("body_too_large", f"the request body is larger than {limit} bytes", status=413)
            self._connection.body_too_large(self, error)
            return
        if self._consumer is not None:
            self._consumer.body(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._connection.pause_reading(_PAUSED_BY_BUFFER)

    def ended(self) -> None:
        if self.broken is not None:
            return  # a body cut off by an error never completes, whatever the parser reaches later
        self.complete = True
        if self._consumer is not None and not self.framing.websocket:
            self._consumer.body_end()

    def fail(self, error: BadRequest | None) -> None:
        """The body cannot complete (framing error, or None: the client went away)."""
        if self.complete or self.broken is not None:
            return
        self.broken = error or BadRequest("client_closed_mid_body", "the client closed the connection mid-body")
        self.left_mid_body = error is None
        if self._consumer is not None:
            self._consumer.body_broken(error)

    @property
    def failure(self) -> BadRequest | None:
        """What broke the body, for a `BodyConsumer`: None when the client went away."""
        return None if self.left_mid_body else self.broken


class _Refusal:
    """A framing error waiting its turn behind the requests before it."""

    __slots__ = ("error", "method")

    def __init__(self, error: Rejection, method: str) -> None:
        self.error = error
        self.method = method


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp; the reason is in `ClientConnection._error`."""


class ClientConnection(Connection):
    """One client connection on the proxy port."""

    def __init__(self, server: Listener) -> None:
        self._server = server
        self.limits = server.limits
        self._handler = server.handler
        self._parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.local = ""
        self.peer_bytes = self.local_bytes = self.forwarded_for = b""
        self._active: IncomingRequest | None = None
        self._parsing: IncomingRequest | None = None
        self._queue: deque[IncomingRequest | _Refusal] = deque()
        self._url: list[bytes] = []
        self._fields: list[tuple[bytes, bytes, bytes]] = []
        self._line_bytes = 0
        self._header_bytes = 0
        self._head_bytes = 0
        self._counting_head = True
        self._head_started = False
        self._error: BadRequest | None = None
        self._paused = 0
        self._upgraded = False
        self._finished_reading = False  # a framing error or an upgrade: no more requests from these bytes
        self._closing = False  # close once the response in progress is done
        self._halted = False  # parsing was stopped on purpose (closing): not a framing error
        self._client_done = False  # the client half-closed: nothing more will come from it
        self._dispatching = False
        self._discard_budget = 0  # bytes still accepted and dropped while lingering before a close
        self.cut_at_shutdown = False  # still busy when the drain's grace period ended
        self.cut_for_not_reading = False  # the client stopped reading what it was sent for `limits.send_timeout`
        self.deadline = 0.0
        self.deadline_kind = _HEAD
        self.send_deadline = float("inf")  # while writing is paused (the client is not reading): when to give up

    # --- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else ""
        self.peer_bytes = self.peer.encode("ascii")
        self.local_bytes = self.local.encode("ascii")
        self.forwarded_for = b"X-Forwarded-For: %s\r\n" % self.peer_bytes  # for requests that bring none
        room = self._server.joined(self)
        self._set_deadline(_HEAD, self.limits.request_header_timeout_seconds)
        if self._server.draining:
            self.shutdown()
        elif not room:
            # Answered before anything is read, so a flood of idle connections cannot starve the ones serving.
            self._refuse_now(_Refusal(Overloaded("too_many_connections"), ""))

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            self._tunnel_in(data)
            return
        if self._finished_reading:
            self._discard(len(data))
            return
        if self._counting_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if not self._halted:
                self._framing_failed(self._error or BadRequest("malformed_request", _parser_message(exc)))
        else:
            if self._counting_head and self._head_bytes > self._head_limit():
                self._framing_failed(self._head_too_large())
        # Requests start only once the whole read is parsed: an error later in the same bytes (a broken chunk, a
        # malformed request behind it) is known before anything goes upstream, and no request starts from inside
        # the parser.
        self._dispatch()

    def eof_received(self) -> bool | None:
        if self._upgraded:
            active = self._active
            if active is not None and active.consumer is not None:
                active.consumer.body_end()  # the client half-closed its side of the tunnel
                return True
            return None
        self._client_done = True
        parsing = self._parsing
        if parsing is not None:
            parsing.fail(None)
        active = self._active
        if active is not None and active.complete:
            self._closing = True
            return True  # keep the write side open: the response is still on its way
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._closing = True
        active, self._active = self._active, None
        self._queue.clear()
        if active is not None:
            active.fail(None)
            if active.consumer is not None:
                active.consumer.client_lost()

    def pause_writing(self) -> None:
        self.send_deadline = self._server.now() + self.limits.send_timeout_seconds
        active = self._active
        if active is not None and active.consumer is not None:
            active.consumer.client_paused()

    def resume_writing(self) -> None:
        self.send_deadline = float("inf")
        active = self._active
        if active is not None and active.consumer is not None:
            active.consumer.client_resumed()

    # --- parser callbacks --------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._finished_reading or self._closing:
            self._halt()  # the connection closes after what is under way: what follows is not read as a request
        self._url = []
        self._fields = []
        self._line_bytes = self._header_bytes = 0
        self._head_started = True
        if self.deadline_kind == _IDLE:
            self._set_deadline(_HEAD, self.limits.request_header_timeout_seconds)

    def on_url(self, part: bytes) -> None:
        if not self._url:  # the method, two spaces, `HTTP/1.1` and CRLF belong to the line too
            self._line_bytes = len(self._parser.get_method()) + 12
        self._line_bytes += len(part)
        if self._line_bytes > self.limits.max_request_line_bytes:
            self._stop(self._line_too_long())
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._fields.append((name.lower(), name, value))
        limits = self.limits
        if self._header_bytes > limits.max_header_bytes or len(self._fields) > limits.max_header_count:
            self._stop(_fields_too_large(limits))

    def on_headers_complete(self) -> None:
        self._counting_head = self._head_started = False
        parser = self._parser
        method_bytes = parser.get_method()
        method = method_bytes.decode("ascii")
        version = parser.get_http_version()
        try:
            framing = read_framing(self._fields, version, parser.should_upgrade(), self.limits)
        except BadRequest as exc:
            self._stop(exc)
        target = b"".join(self._url).decode("latin-1")
        facts = RequestFacts(method, target, Headers(self._fields))
        self._fields = []  # llhttp reports trailers through on_header too: they land here and are dropped
        keep_alive = parser.should_keep_alive() and not (parser.should_upgrade() and not framing.websocket)
        request = IncomingRequest(self, facts, framing, version, keep_alive, method_bytes)
        self._parsing = request
        self._queue.append(request)

    def on_body(self, data: bytes) -> None:
        parsing = self._parsing
        if parsing is not None:
            parsing.received(data)

    def on_message_complete(self) -> None:
        parsing, self._parsing = self._parsing, None
        self._counting_head, self._head_bytes = True, 0
        if parsing is not None:
            parsing.ended()

    # --- for the handler and the exchange ----------------------------------------------------------------------

    def reusable_after(self, request: IncomingRequest) -> bool:
        """Can the connection carry another request once this one's response is done? (Decided before the
        response head is written: it says `Connection: close` otherwise.)"""
        return (
            request.keep_alive
            and request.broken is None
            and not self._closing
            and not self._server.draining
            and not request.framing.websocket
        )

    def finish(self, request: IncomingRequest, *, keep_alive: bool) -> None:
        """The response to `request` is complete: next request, or close."""
        if self._active is not request:
            return
        self._active = None
        self.resume_reading(_PAUSED_BY_CONSUMER)
        if not keep_alive or not request.complete or self._closing or self._server.draining:
            # What the client still sends (a body, pipelined requests) is read and dropped for a moment, so that it
            # reads its answer rather than a connection reset.
            self.close_after_writing(linger_budget=_LINGER_BYTES)
            return
        self._dispatch()
        if self._active is None:
            if self._head_started:
                self._set_deadline(_HEAD, self.limits.request_header_timeout_seconds)
            else:
                self._set_deadline(_IDLE, self.limits.keepalive_timeout_seconds)

    def close_after_writing(self, linger_budget: int = 0) -> None:
        """Close once what is written has gone out; meanwhile read and drop up to `linger_budget` bytes, so a client
        still sending is not answered with a reset that would destroy the response it has not read yet."""
        self._closing = self._finished_reading = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if linger_budget <= 0 or self._client_done:  # nothing to linger for
            transport.close()
            return
        self._discard_budget = linger_budget
        self._active = None
        self._set_deadline(_LINGER, min(2.0, self.limits.request_header_timeout_seconds))
        self.resume_reading(_PAUSED_BY_BUFFER | _PAUSED_BY_PIPELINE | _PAUSED_BY_CONSUMER | _PAUSED_BY_CLOSING)
        if transport.can_write_eof():
            transport.write_eof()

    def cut(self) -> None:
        """End the connection now, mid-response: the only way left to tell a client its response is broken."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self, reason: int = _PAUSED_BY_CONSUMER) -> None:
        was = self._paused
        self._paused |= reason
        if not was and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self, reason: int = _PAUSED_BY_CONSUMER) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """Draining: close now when idle, else after the response in progress."""
        self._closing = True
        if self._active is None and not self._head_started and not self._upgraded:
            self.close_after_writing()

    def expire(self, now: float) -> None:
        """Called by the server's sweep: act on a passed deadline."""
        if self.transport is None:
            return
        if now >= self.send_deadline:
            # Not `close()`, which would wait for a buffer the client never reads: a slow-read client would hold
            # its connection, and what the upstream sent into it, for good.
            self.cut_for_not_reading = True
            self.transport.abort()
            return
        if now < self.deadline or self.transport.is_closing():
            return
        kind = self.deadline_kind
        if kind == _HEAD and self._head_started and self._active is None:
            self._framing_failed(
                BadRequest("request_header_timeout", "the request head did not arrive in time", status=408)
            )
            self._dispatch()
        elif kind in (_HEAD, _IDLE, _LINGER):
            self.transport.close()

    # --- internals ---------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start the next request when none is under way. A loop, not recursion: a request answered at once ends
        inside `_start`, and a read may hold hundreds of pipelined requests."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._active is None and self._queue and not self.closed:
                item = self._queue.popleft()
                if isinstance(item, _Refusal):
                    self._refuse_now(item)
                    break
                self._active = item
                self._set_deadline(_BUSY, 0.0)
                self._handler.handle(self, item)
        finally:
            self._dispatching = False
        if self._queue:
            self.pause_reading(_PAUSED_BY_PIPELINE)  # requests wait their turn: read no more until they had it
        else:
            self.resume_reading(_PAUSED_BY_PIPELINE)

    def _refuse_now(self, refusal: _Refusal) -> None:
        self._queue.clear()
        self._closing = self._finished_reading = True
        self._handler.refuse(self, refusal.error, refusal.method)
        self.close_after_writing(linger_budget=_LINGER_BYTES)

    def _framing_failed(self, error: BadRequest) -> None:
        """Nothing more from this connection can be trusted: answer in turn (the caller dispatches), then close."""
        self._finished_reading = True
        self.pause_reading(_PAUSED_BY_CLOSING)
        parsing, self._parsing = self._parsing, None
        method = self._method_so_far()
        if parsing is not None:  # the error is in this request's body
            method = parsing.method
            if parsing is self._active:
                parsing.fail(error)
                return
            with contextlib.suppress(ValueError):
                self._queue.remove(parsing)
        self._queue.append(_Refusal(error, method))

    def body_too_large(self, request: IncomingRequest, error: BadRequest) -> None:
        """A body grew past the limit while being parsed: a framing failure of that request."""
        if request is self._parsing:
            self._framing_failed(error)
        else:
            request.fail(error)

    def _halt(self) -> NoReturn:
        """Stop llhttp quietly: nothing more on this connection is read as a request."""
        self._halted = self._finished_reading = True
        self.pause_reading(_PAUSED_BY_CLOSING)
        raise _StopParsing("halted")

    def _method_so_far(self) -> str:
        try:
            return self._parser.get_method().decode("ascii") if self._url else ""
        except httptools.HttpParserError:
            return ""

    def _stop(self, error: BadRequest) -> NoReturn:
        self._error = error
        raise _StopParsing(error.detail)

    def _upgrade(self, rest: bytes) -> None:
        """llhttp stops at an upgrade request's head; what follows is not HTTP any more."""
        request = self._parsing or self._last_request()
        if request is None or not request.framing.websocket:
            # Not a WebSocket: served as a plain request, then the connection closes; what followed is not read.
            self._closing = True
            self.pause_reading(_PAUSED_BY_CLOSING)
            return
        self._upgraded = True
        if rest:
            self._tunnel_in(rest)

    def _last_request(self) -> IncomingRequest | None:
        if self._queue and isinstance(self._queue[-1], IncomingRequest):
            return self._queue[-1]
        return self._active

    def _tunnel_in(self, data: bytes) -> None:
        request = self._last_request()
        if request is not None:
            request.received(data)

    def _discard(self, size: int) -> None:
        self._discard_budget -= size
        if self._discard_budget < 0 and self.transport is not None:
            self.transport.close()

    def _set_deadline(self, kind: str, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self._server.now() + seconds if seconds else float("inf")

    def _head_limit(self) -> int:
        return self.limits.max_request_line_bytes + self.limits.max_header_bytes + _HEAD_SLACK

    def _head_too_large(self) -> BadRequest:
        return self._line_too_long() if not self._fields else _fields_too_large(self.limits)

    def _line_too_long(self) -> BadRequest:
        limit = self.limits.max_request_line_bytes
        return BadRequest("request_line_too_long", f"the request line is longer than {limit} bytes", status=414)


def _fields_too_large(limits: Limits) -> BadRequest:
    return BadRequest(
        "header_fields_too_large",
        f"the request has more than {limits.max_header_count} header fields or {limits.max_header_bytes} bytes of them",
        status=431,
    )


def _parser_message(exc: httptools.HttpParserError) -> str:
    """llhttp's own reason (a fixed text such as 'Invalid header value char'), made safe for a quoted string."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return "malformed request: " + "".join(ch for ch in text if ch.isalnum() or ch in " -_`:")[:100]
