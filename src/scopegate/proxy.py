"""Forward an allowed request to the upstream and its response back: one `Exchange` per request, callbacks only.

What was authorized is exactly what is forwarded (the heads as `rewrite.py` builds them, the body byte for byte).
Bodies stream both ways with back-pressure: when the upstream stops taking the request body, the client's
connection stops being read, and when the client stops reading the response, the upstream's connection does.

The upstream deadline (`upstream_timeout_seconds`) runs from the start until the response head arrives, restarted
whenever a piece of the request body moves, so it bounds any one stall of the upstream, not a slow client's upload.
After the head the body streams without a deadline. A failure before the head is a 502 (`UpstreamError`) or a 504
(`UpstreamTimeout`) answered by the pipeline; after it, the status line is on the wire, so cutting the client's
connection is the only way left to tell it.

A WebSocket upgrade is relayed as bytes: the handshake goes upstream as the client sent it (Sec-WebSocket-* headers
included), and once the upstream answers 101 both connections become one byte tunnel until either side closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from scopegate.errors import BadRequest, Rejection, UpstreamError, UpstreamTimeout
from scopegate.gate import Verdict
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.rewrite import declared_length, request_head, response_fields, tunnel_fields
from scopegate.upstream import ResponseFraming, UpstreamConnection, UpstreamPool
from scopegate.wire import CONTINUE, connection_line, status_line

# Methods whose request may be sent again when a pooled connection turns out to have been closed by the upstream.
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

BROKEN_BY_UPSTREAM = "upstream"
BROKEN_BY_CLIENT = "client"

_BODY_NONE, _BODY_LENGTH, _BODY_CHUNKED, _BODY_UNTIL_CLOSE = 0, 1, 2, 3


class Exchange:
    """One forwarded request: written to an upstream connection, its response relayed to the client."""

    __slots__ = (
        "_body_mode",
        "_connecting",
        "_done",
        "_early",
        "_head",
        "_keep_alive",
        "_last_progress",
        "_loop",
        "_out",
        "_pool",
        "_retried",
        "_started",
        "_timeout",
        "_timer",
        "_tunnel",
        "_upstream",
        "broken_by",
        "client",
        "failure",
        "finished",
        "request",
        "response_started",
        "status",
        "upstream_seconds",
        "verdict",
    )

    def __init__(
        self,
        client: ClientConnection,
        request: IncomingRequest,
        verdict: Verdict,
        pool: UpstreamPool,
        timeout: float,
        done: Callable[[Exchange], None],
    ) -> None:
        self.client = client
        self.request = request
        self.verdict = verdict
        self._pool = pool
        self._timeout = timeout
        self._done = done
        self._loop = pool.loop
        self._started = self._last_progress = self._loop.time()
        self._head = request_head(request, verdict, pool, client)
        self._upstream: UpstreamConnection | None = None
        self._connecting: asyncio.Task[UpstreamConnection] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._retried = False
        self._tunnel = False
        self._early: list[bytes] = []  # client bytes of a WebSocket before the upstream's 101
        self._keep_alive = False
        self._body_mode = _BODY_NONE
        self._out: list[bytes] = []  # response bytes for the client, written together once the upstream read is done
        self.status = 0
        self.upstream_seconds: float | None = None
        self.response_started = False
        self.broken_by = ""
        self.failure: Rejection | None = None  # before any response byte: the pipeline answers with it
        self.finished = False

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    def start(self) -> None:
        self._timer = self._loop.call_at(self._started + self._timeout, self._deadline_passed)
        connection = self._pool.take_idle()
        if connection is not None:
            self._connected(connection)
        else:
            self._open()

    # --- connecting ---------------------------------------------------------------------------------------------

    def _open(self) -> None:
        self._connecting = self._loop.create_task(self._pool.open())
        self._connecting.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[UpstreamConnection]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._fail_before_response(UpstreamError(type(error).__name__))
            return
        connection = task.result()
        if self.finished:
            connection.release(reusable=False)
            return
        self._connected(connection)

    def _connected(self, connection: UpstreamConnection) -> None:
        request = self.request
        if request.broken is not None:  # the body failed while the connection was being found: send nothing
            self._pool.put_back(connection)
            self.body_broken(request.failure)
            return
        self._upstream = connection
        with_body = request.framing.has_body and not request.complete and not request.framing.websocket
        connection.begin(self, head_only=request.method == "HEAD", with_body=with_body)
        connection.write(self._head)
        if request.framing.expect_continue and not request.complete and not self.response_started:
            self.client.write(CONTINUE)  # authorized: now the client may send the body
        if request.consumer is None:
            request.consume(self)
        elif self._retried and request.complete:
            self.body_end()

    # --- the request body (BodyConsumer) -----------------------------------------------------------------------

    def body(self, data: bytes) -> None:
        upstream = self._upstream
        if self.finished or upstream is None:
            return
        if self.request.framing.websocket:
            if self._tunnel:
                upstream.write(data)
            else:
                self._early.append(data)
            return
        self._last_progress = self._loop.time()
        if self.request.framing.chunked:
            upstream.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            upstream.write(data)

    def body_end(self) -> None:
        upstream = self._upstream
        if self.finished or upstream is None:
            return
        if self._tunnel:
            upstream.write_eof()  # the client half-closed the tunnel: pass it on
            return
        if self.request.framing.chunked:
            upstream.write(b"0\r\n\r\n")  # the client's trailers, if any, are not forwarded
        self._last_progress = self._loop.time()

    def body_broken(self, error: BadRequest | None) -> None:
        if self.finished:
            return
        if error is None:
            self._client_gone()
            return
        if self.response_started:
            self.client.cut()
            self._finish(broken_by=BROKEN_BY_CLIENT)
        else:
            self._fail_before_response(error)

    def client_paused(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def client_resumed(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def client_lost(self) -> None:
        if not self.finished:
            self._client_gone()

    # --- the response (ResponseConsumer) -----------------------------------------------------------------------

    def upstream_informational(self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]]) -> None:
        # 100 Continue is scopegate's to send (it answered the client's Expect); HTTP/1.0 clients know no 1xx.
        if status == 100 or self.request.version != "1.1" or self.finished:
            return
        self.client.write(b"".join([status_line(status, reason), *response_fields(fields, self.verdict), b"\r\n"]))

    def upstream_head(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], framing: ResponseFraming
    ) -> None:
        if self.finished:
            return
        self._got_head(status)
        request, client = self.request, self.client
        keep_alive = client.reusable_after(request) and request.complete
        if framing.no_body:
            mode, framing_line = _BODY_NONE, declared_length(framing)
        elif framing.content_length is not None:
            mode, framing_line = _BODY_LENGTH, b"Content-Length: %d\r\n" % framing.content_length
        elif request.version == "1.1":
            mode, framing_line = _BODY_CHUNKED, b"Transfer-Encoding: chunked\r\n"
        else:
            mode, framing_line, keep_alive = _BODY_UNTIL_CLOSE, b"", False  # HTTP/1.0 knows no chunked coding
        self._body_mode, self._keep_alive = mode, keep_alive
        out = self._out
        out.append(status_line(status, reason))
        out.extend(response_fields(fields, self.verdict))
        out.append(framing_line)
        out.append(connection_line(keep_alive, request.version))
        out.append(b"\r\n")

    def upstream_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self._tunnel:
            self.client.write(data)
        elif self._body_mode == _BODY_CHUNKED:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def upstream_flush(self) -> None:
        """The upstream's bytes of one read are relayed: send what they made in one write (one system call)."""
        if self._out:
            self.client.writelines(self._out)
            self._out = []

    def upstream_end(self) -> None:
        if self.finished:
            return
        if self._tunnel:
            self.client.cut()
            self._finish()
            return
        if self._body_mode == _BODY_CHUNKED:
            self._out.append(b"0\r\n\r\n")
        self.upstream_flush()
        self._finish()

    def upstream_upgraded(self, reason: bytes, fields: list[tuple[bytes, bytes, bytes]], rest: bytes) -> None:
        upstream = self._upstream
        if self.finished or upstream is None:
            return
        if not self.request.framing.websocket:
            self._fail_before_response(UpstreamError("unexpected_upgrade"))
            return
        self._got_head(101)
        self._tunnel = True
        upstream.start_tunnel()
        self.client.write(b"".join([status_line(101, reason), *tunnel_fields(fields), b"\r\n", rest]))
        early, self._early = self._early, []
        for data in early:
            upstream.write(data)

    def upstream_failed(self, why: str) -> None:
        if self.finished:
            return
        if self.response_started:
            self.upstream_flush()
            self.client.cut()  # the status line is out: a short body is all the client can be told
            self._finish(broken_by=BROKEN_BY_UPSTREAM)
        elif self._may_retry():
            self._retried = True
            self._upstream = None
            self._open()
        else:
            self._fail_before_response(UpstreamError(why))

    def upstream_paused(self) -> None:
        self.client.pause_reading()

    def upstream_resumed(self) -> None:
        self._last_progress = self._loop.time()
        self.client.resume_reading()

    # --- endings -----------------------------------------------------------------------------------------------

    def _got_head(self, status: int) -> None:
        self.status = status
        self.response_started = True
        self.upstream_seconds = self._loop.time() - self._started
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline_passed(self) -> None:
        self._timer = None
        if self.finished or self.response_started:
            return
        due = self._last_progress + self._timeout
        if due > self._loop.time():
            self._timer = self._loop.call_at(due, self._deadline_passed)  # the body moved since: wait on
            return
        self._fail_before_response(UpstreamTimeout("header_deadline"))

    def _may_retry(self) -> bool:
        """A reused connection that fails before any response may have been closed by the upstream just as the
        request went out; sending it again is safe only when it is idempotent and carried no body."""
        upstream = self._upstream
        return (
            not self._retried
            and upstream is not None
            and upstream.served > 0
            and not upstream.answered  # a malformed answer is an answer: only silence may be a stale close
            and self.request.method in _RETRYABLE
            and not self.request.framing.has_body
            and not self.request.framing.websocket
        )

    def _client_gone(self) -> None:
        self._finish(broken_by=BROKEN_BY_CLIENT)

    def _fail_before_response(self, failure: Rejection) -> None:
        self.failure = failure
        self._finish()

    def _finish(self, *, broken_by: str = "") -> None:
        if self.finished:
            return
        self.finished = True
        self.broken_by = broken_by
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            clean = not broken_by and self.failure is None and not self._tunnel and self.request.complete
            upstream.release(reusable=clean)
        self._done(self)
