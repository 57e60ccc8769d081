"""Request smuggling and framing: one row per trick, sent as raw bytes, each with its exact answer.

The proxy port parses HTTP/1.1 itself (`http1.py` towards the client, `upstream.py` towards the upstream), so the
attacks on that framing are scopegate's to refuse. Every row here is written to a raw socket exactly as typed, so no
client library tidies it first, and pins down three things:

- the status the client gets, read with a small httptools-based response reader (a 1xx counts as a response);
- whether the connection is closed afterwards: read until EOF with a generous timeout, never a timer;
- what the upstream received: `RecordingUpstream` keeps every request head and body in arrival order, and
  `forwarded()` sends a sentinel request on a new connection once a row is done, so that anything the row made the
  proxy forward has arrived by the time its answer is back. "No second request smuggled" is then an exact list.

The upstream-side rows script the recording upstream's raw answer instead (`Reply`) and pin what the client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools
import pytest

from conftest import IssuerServer, Proxy, ProxyFactory, make_config, wait_until

# Generous: a row fails on a missing answer or a connection left open, never on a slow machine.
READ_TIMEOUT = 10.0

# Small size limits for the limit rows. The timeouts stay well above READ_TIMEOUT, so that a connection left open is
# seen as open (a read timeout), never mistaken for one the proxy closed on purpose.
LIMITS = """
limits:
  max_request_line_bytes: 1024
  max_header_bytes: 2048
  max_header_count: 20
  max_body_bytes: 1000
  request_header_timeout_seconds: 30
  keepalive_timeout_seconds: 60
"""
TIMEOUTS = """
limits:
  request_header_timeout_seconds: 1
  keepalive_timeout_seconds: 1
"""

SENTINEL = b"/public/sentinel"


# --- the recording upstream -------------------------------------------------------------------------------------


@dataclass
class Received:
    """One request as the upstream read it, bytes exactly as they came over the wire."""

    connection: int  # which upstream connection it arrived on, numbered from 0 in accept order
    head: bytes  # request line and header fields, without the blank line
    body: bytes = b""  # as framed on the wire: chunk sizes included
    complete: bool = False  # the body ended where its framing said

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    @property
    def lines(self) -> list[bytes]:
        return self.head.split(b"\r\n")

    @property
    def names(self) -> set[bytes]:
        return {line.partition(b":")[0].lower() for line in self.lines[1:]}

    def values(self, name: bytes) -> list[bytes]:
        fields = (line.partition(b":") for line in self.lines[1:])
        return [value.strip() for key, _, value in fields if key.lower() == name]


@dataclass(frozen=True)
class Reply:
    """A scripted raw response."""

    data: bytes
    close: bool = False  # close the connection once it is written


def echo(target: bytes) -> Reply:
    """The default answer: a 200 whose body names the request it answers."""
    return Reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))


class RecordingUpstream:
    """A raw HTTP/1.1 server on 127.0.0.1 that records every request and answers from `replies` (else `echo`)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: dict[bytes, Reply] = {}
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number, self.connections = self.connections, self.connections + 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Received(number, head[:-4])
                self.received.append(request)
                await _read_body(reader, request)
                request.complete = True
                reply = self.replies.get(request.target) or echo(request.target)
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the proxy closed the connection, between requests or mid-body
        finally:
            writer.close()
            self._tasks.discard(task)


async def _read_body(reader: asyncio.StreamReader, request: Received) -> None:
    """Read the body the head announces, appending to `request.body` as it arrives."""
    if request.values(b"transfer-encoding") == [b"chunked"]:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            request.body += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            request.body += await reader.readexactly(size + 2)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            request.body += line  # a trailer field: recorded, so that a test can see one was forwarded
        request.body += line
    elif lengths := request.values(b"content-length"):
        request.body += await reader.readexactly(int(lengths[0]))


# --- the raw client ---------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool  # the body ended where its framing said (False: the connection closed before)

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key.lower() == name]
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None


class _Message:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.head_done = self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class RawClient:
    """One client connection: writes bytes exactly as given, reads the proxy's responses one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buffer = b""
        self._eof = False

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def response(self, *, head_only: bool = False) -> Response:
        """The next response (a 1xx is one); `head_only` for the answer to a HEAD, which has no body."""
        message = _Message()
        parser = httptools.HttpResponseParser(message)
        while not (message.done or (head_only and message.head_done)):
            if not self._buffer and not await self._fill():
                break
            # One byte at a time, so that what follows this response stays in the buffer for the next one.
            byte, self._buffer = self._buffer[:1], self._buffer[1:]
            parser.feed_data(byte)
        assert message.head_done, f"the connection closed before a complete response head: {self._buffer!r}"
        names = {name.lower() for name, _ in message.headers}
        until_close = not names & {b"content-length", b"transfer-encoding"}
        complete = message.done or head_only or (self._eof and until_close)
        return Response(parser.get_status_code(), message.headers, message.body, complete)

    async def closed(self) -> bytes:
        """Read until the proxy closes the connection; returns what came first (b"" when nothing did)."""
        while await self._fill():
            pass
        rest, self._buffer = self._buffer, b""
        return rest

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def _fill(self) -> bool:
        """Read what the proxy sent next; False at EOF (a reset counts as one)."""
        if self._eof:
            return False
        try:
            data = await asyncio.wait_for(self._reader.read(65536), READ_TIMEOUT)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise AssertionError(f"neither data nor EOF from the proxy within {READ_TIMEOUT} s") from None
        self._eof = not data
        self._buffer += data
        return bool(data)


@contextlib.asynccontextmanager
async def connect(proxy: Proxy) -> AsyncIterator[RawClient]:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    client = RawClient(*await asyncio.open_connection(host, int(port)))
    try:
        yield client
    finally:
        await client.close()


async def forwarded(proxy: Proxy, upstream: RecordingUpstream) -> list[Received]:
    """What the upstream received before a sentinel request sent now, on a new connection.

    Whatever a row made the proxy forward was on its way upstream before the row's connection ended, and the
    recorder reads every connection as its bytes come, so it has been recorded by the time the sentinel's answer is
    back.
    """
    async with connect(proxy) as client:
        await client.send(b"GET %s HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n" % SENTINEL)
        assert (await client.response()).status == 200
    *before, last = upstream.received
    assert last.target == SENTINEL
    return before


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def gate(issuer: IssuerServer, recorder: RecordingUpstream, start_proxy: ProxyFactory) -> Proxy:
    """The proxy on conftest's RULES (`/public/**` needs no token) with small `LIMITS`, in front of `recorder`."""
    return await start_proxy(make_config(issuer.issuer.issuer, recorder.url, extra=LIMITS))


# --- request rows -----------------------------------------------------------------------------------------------


def message(request_line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """A request from its line and fields, each ended with CRLF, then the blank line and `body` as given."""
    return b"".join(line + b"\r\n" for line in (request_line, *fields)) + b"\r\n" + body


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return message(b"POST /public/x HTTP/1.1", b"Host: gate", *fields, body=body)


def get(*fields: bytes) -> bytes:
    return message(b"GET /public/x HTTP/1.1", b"Host: gate", *fields)


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


SMUGGLED = b"GET /public/smuggled HTTP/1.1\r\nHost: gate\r\n\r\n"


# Refused in the head: answered once, the connection then closes, and nothing at all reaches the upstream.
REFUSED = [
    # Content-Length and Transfer-Encoding
    pytest.param(post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, id="cl-with-te"),
    pytest.param(post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"), 400, id="te-with-cl"),
    pytest.param(post(b"Content-Length: 4", b"Content-Length: 4", body=b"abcd"), 400, id="cl-twice-same"),
    pytest.param(post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcde"), 400, id="cl-twice-different"),
    pytest.param(post(b"Content-Length: 4, 4", body=b"abcd"), 400, id="cl-list"),
    pytest.param(post(b"Content-Length: +4", body=b"abcd"), 400, id="cl-plus-sign"),
    pytest.param(post(b"Content-Length: -4", body=b"abcd"), 400, id="cl-minus-sign"),
    pytest.param(post(b"Content-Length: 0x4", body=b"abcd"), 400, id="cl-hex"),
    pytest.param(post(b"Content-Length: 184467440737095516160", body=b"abcd"), 400, id="cl-overflow"),
    pytest.param(post(b"Content-Length: "), 400, id="cl-empty"),
    pytest.param(post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"), 400, id="te-chunked-identity"),
    pytest.param(post(b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"), 400, id="te-identity-chunked"),
    pytest.param(post(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400, id="te-gzip"),
    pytest.param(post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400, id="te-xchunked"),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, id="te-twice"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=b"0\r\n\r\n"), 400, id="te-twice-mixed"
    ),
    pytest.param(post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400, id="te-space-before-colon"),
    pytest.param(post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"), 400, id="te-vertical-tab"),
    pytest.param(
        message(b"POST /public/x HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, id="te-on-http10"
    ),
    # The classic desyncs: what a lenient hop would take for a second request never reaches the upstream.
    pytest.param(
        post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED), 400, id="desync-cl-te"
    ),
    pytest.param(
        post(
            b"Content-Length: 4",
            b"Transfer-Encoding: chunked",
            body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
        ),
        400,
        id="desync-te-cl",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: cow", body=b"0\r\n\r\n" + SMUGGLED),
        400,
        id="desync-te-te",
    ),
    # Field syntax
    pytest.param(get(b"X-A: 1", b" 2"), 400, id="obs-fold-space"),
    pytest.param(get(b"X-A: 1", b"\t2"), 400, id="obs-fold-tab"),
    pytest.param(b"GET /public/x HTTP/1.1\nHost: gate\n\n", 400, id="bare-lf-everywhere"),
    pytest.param(b"GET /public/x HTTP/1.1\nHost: gate\r\n\r\n", 400, id="bare-lf-after-request-line"),
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost: gate\nX-A: 1\r\n\r\n", 400, id="bare-lf-after-field"),
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost: gate\r\n\n", 400, id="bare-lf-ending-head"),
    pytest.param(b"GET /public/x HTTP/1.1\r\nHost: gate\rX-A: 1\r\n\r\n", 400, id="bare-cr"),
    pytest.param(get(b"X-A: a\x00b"), 400, id="nul-in-value"),
    pytest.param(get(b"X-A: a\x01b"), 400, id="ctl-0x01-in-value"),
    pytest.param(get(b"X-A: a\x7fb"), 400, id="del-in-value"),
    pytest.param(get(b"Caf\xc3\xa9: 1"), 400, id="non-ascii-in-name"),
    pytest.param(get(b"X A: 1"), 400, id="space-in-name"),
    pytest.param(get(b": 1"), 400, id="empty-name"),
    # Limits (LIMITS: line 1024, fields 2048 bytes / 20 fields, body 1000)
    pytest.param(message(b"GET /public/" + b"a" * 1100 + b" HTTP/1.1", b"Host: gate"), 414, id="request-line-long"),
    pytest.param(
        message(b"GET /public/" + b"a" * 1015 + b" HTTP/1.1", b"Host: gate"),
        414,
        id="request-line-long-by-method-and-version",
    ),
    pytest.param(get(b"X-Big: " + b"b" * 3000), 431, id="one-field-too-big"),
    pytest.param(get(*(b"X-F%d: " % n + b"f" * 200 for n in range(12))), 431, id="fields-too-big-together"),
    pytest.param(get(*(b"X-F%d: f" % n for n in range(20))), 431, id="too-many-fields"),
    pytest.param(post(b"Content-Length: 1001", body=b"a" * 1001), 413, id="cl-over-body-limit"),
    # Host
    pytest.param(message(b"GET /public/x HTTP/1.1"), 400, id="host-missing"),
    pytest.param(get(b"Host: other"), 400, id="host-twice"),
    # Version and request line
    pytest.param(message(b"GET /public/x HTTP/2.0", b"Host: gate"), 505, id="http-2.0"),
    pytest.param(b"GET /\r\n\r\n", 400, id="http-0.9"),
    pytest.param(message(b"GET /public/x HTTP/1.2", b"Host: gate"), 400, id="http-1.2"),
    pytest.param(message(b"get /public/x HTTP/1.1", b"Host: gate"), 400, id="method-lower-case"),
    pytest.param(message(b"FETCH /public/x HTTP/1.1", b"Host: gate"), 400, id="method-unknown"),
    pytest.param(message(b"GET /public/a b HTTP/1.1", b"Host: gate"), 400, id="space-in-target"),
    pytest.param(message(b"GET /public/a\tb HTTP/1.1", b"Host: gate"), 400, id="tab-in-target"),
    pytest.param(message(b"GET /public/caf\xc3\xa9 HTTP/1.1", b"Host: gate"), 400, id="non-ascii-in-target"),
    # Expect
    pytest.param(post(b"Expect: 200-ok", b"Content-Length: 5", body=b"hello"), 417, id="expect-other"),
]


@pytest.mark.parametrize(("raw", "status"), REFUSED)
async def test_refused_once_then_closed_and_nothing_forwarded(
    gate: Proxy, recorder: RecordingUpstream, raw: bytes, status: int
) -> None:
    async with connect(gate) as client:
        await client.send(raw)
        assert (await client.response()).status == status
        assert await client.closed() == b""
    assert await forwarded(gate, recorder) == []


# Refused in the body: the head was fine, so the exchange with the upstream may have begun when the body breaks.
BODY_REFUSED = [
    pytest.param(chunked(b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), id="chunk-size-overflow"),
    pytest.param(chunked(b"3 \r\nabc\r\n0\r\n\r\n"), id="chunk-size-then-space"),
    pytest.param(chunked(b"-3\r\nabc\r\n0\r\n\r\n"), id="chunk-size-negative"),
    pytest.param(chunked(b"3\nabc\n0\n\n"), id="chunk-bare-lf"),
    pytest.param(chunked(b"3\r\nabcX\r\n0\r\n\r\n"), id="chunk-data-without-crlf"),
    pytest.param(chunked(b'3;foo="a\r\nb"\r\nabc\r\n0\r\n\r\n'), id="chunk-ext-quoted-crlf"),
]


@pytest.mark.parametrize("raw", BODY_REFUSED)
async def test_broken_chunked_body_refused_once_then_closed(
    gate: Proxy, recorder: RecordingUpstream, raw: bytes
) -> None:
    """Whatever part of the request went upstream never completes there, and the request after it never goes."""
    async with connect(gate) as client:
        await client.send(raw + SMUGGLED)
        assert (await client.response()).status == 400
        assert await client.closed() == b""
    received = await forwarded(gate, recorder)
    assert [(request.target, request.complete) for request in received] in ([], [(b"/public/x", False)])


@pytest.mark.parametrize("raw", BODY_REFUSED)
async def test_broken_chunked_body_arriving_with_its_head_forwards_nothing(
    gate: Proxy, recorder: RecordingUpstream, raw: bytes
) -> None:
    async with connect(gate) as client:
        await client.send(raw)
        assert (await client.response()).status == 400
        assert await client.closed() == b""
    assert await forwarded(gate, recorder) == []


OVER_LIMIT = chunked(b"258\r\n" + b"a" * 600 + b"\r\n258\r\n" + b"a" * 600 + b"\r\n0\r\n\r\n")

# (an idle pooled upstream connection is at hand, what follows the body in the same write)
OVER_LIMIT_IN_ONE_WRITE = [
    pytest.param(False, b"", id="cold-pool"),
    pytest.param(False, SMUGGLED, id="cold-pool-then-a-request"),
    pytest.param(True, b"", id="warm-pool"),
    pytest.param(True, SMUGGLED, id="warm-pool-then-a-request"),
]


@pytest.mark.parametrize(("warm", "then"), OVER_LIMIT_IN_ONE_WRITE)
async def test_chunked_body_over_the_limit_in_one_write(
    gate: Proxy, recorder: RecordingUpstream, warm: bool, then: bytes
) -> None:
    """413, closed, and nothing after the body reaches the upstream. With `warm` the exchange takes a pooled
    upstream connection at once, so the body streams upstream while the request is still being parsed."""
    if warm:
        await forwarded(gate, recorder)
    async with connect(gate) as client:
        await client.send(OVER_LIMIT + then)
        assert (await client.response()).status == 413
        assert await client.closed() == b""
    received = [request for request in await forwarded(gate, recorder) if request.target != SENTINEL]
    assert [(request.target, request.complete) for request in received] in ([], [(b"/public/x", False)])


@pytest.mark.parametrize("then", [pytest.param(b"", id="alone"), pytest.param(SMUGGLED, id="then-a-request")])
async def test_chunked_body_growing_past_the_limit(gate: Proxy, recorder: RecordingUpstream, then: bytes) -> None:
    """The first chunk is under way upstream when the second passes the limit: 413, never the upstream's 200."""
    async with connect(gate) as client:
        await client.send(chunked(b"258\r\n" + b"a" * 600 + b"\r\n"))
        await wait_until(lambda: bool(recorder.received) and len(recorder.received[0].body) > 600)
        await client.send(b"258\r\n" + b"a" * 600 + b"\r\n0\r\n\r\n" + then)
        assert (await client.response()).status == 413
        assert await client.closed() == b""
    received = await forwarded(gate, recorder)
    assert [(request.target, request.complete) for request in received] == [(b"/public/x", False)]


# --- forwarded rows ---------------------------------------------------------------------------------------------

AFTER = message(b"GET /public/after HTTP/1.1", b"Host: gate", b"Connection: close")
CHUNKED_LIMIT_BODY = b"3e8\r\n" + b"a" * 1000 + b"\r\n0\r\n\r\n"

# (request, lines the upstream head has byte for byte, field names it lacks, the body it got, the connection closes)
FORWARDED = [
    pytest.param(get(b"X-Name: caf\xc3\xa9"), [b"X-Name: caf\xc3\xa9"], [], b"", False, id="obs-text-value"),
    pytest.param(
        post(b"Content-Length: 5", body=b"hello"),
        [b"Content-Length: 5"],
        [b"transfer-encoding"],
        b"hello",
        False,
        id="content-length-body",
    ),
    pytest.param(
        post(b"Content-Length: 4 ", body=b"abcd"),
        [b"Content-Length: 4"],
        [],
        b"abcd",
        False,
        id="content-length-trailing-space",
    ),
    pytest.param(
        post(b"Transfer-Encoding: CHUNKED", body=b"0\r\n\r\n"),
        [b"Transfer-Encoding: chunked"],
        [],
        b"0\r\n\r\n",
        False,
        id="te-chunked-upper-case",
    ),
    pytest.param(
        post(b"Content-Length: 1000", body=b"a" * 1000),
        [b"Content-Length: 1000"],
        [],
        b"a" * 1000,
        False,
        id="content-length-at-body-limit",
    ),
    pytest.param(
        chunked(CHUNKED_LIMIT_BODY),
        [b"Transfer-Encoding: chunked"],
        [b"content-length"],
        CHUNKED_LIMIT_BODY,
        False,
        id="chunked-at-body-limit",
    ),
    pytest.param(
        chunked(b"3;foo=bar\r\nabc\r\n0\r\n\r\n"),
        [b"Transfer-Encoding: chunked"],
        [],
        b"3\r\nabc\r\n0\r\n\r\n",
        False,
        id="chunk-extension-dropped",
    ),
    pytest.param(
        chunked(b"3\r\nabc\r\n0\r\nX-Trailer: evil\r\n\r\n"),
        [b"Transfer-Encoding: chunked"],
        [b"x-trailer"],
        b"3\r\nabc\r\n0\r\n\r\n",
        False,
        id="request-trailers-dropped",
    ),
    pytest.param(get(*(b"X-F%d: f" % n for n in range(19))), [b"X-F18: f"], [], b"", False, id="field-count-at-limit"),
    pytest.param(
        get(
            b"X-Auth-Subject: admin",
            b"x_auth_subject: admin",
            b"X-AUTH-SUBJECT: admin",
            b"X-Auth_Subject: admin",
            b"X_Auth-Client-Id: admin-client",
        ),
        [b"X-Auth-Route: public"],
        [b"x-auth-subject", b"x_auth_subject", b"x-auth_subject", b"x_auth-client-id"],
        b"",
        False,
        id="client-identity-fields",
    ),
    pytest.param(
        get(b"Connection: X-Secret, x-other", b"X-Secret: s", b"X-Other: o"),
        [],
        [b"connection", b"x-secret", b"x-other"],
        b"",
        False,
        id="fields-named-in-connection",
    ),
    pytest.param(
        get(
            b"Connection: close",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Trailer: X-T",
            b"Proxy-Connection: keep-alive",
            b"Proxy-Authorization: Basic Zm9vOmJhcg==",
            b"Upgrade: h2c",
        ),
        [],
        [b"connection", b"keep-alive", b"te", b"trailer", b"proxy-connection", b"proxy-authorization", b"upgrade"],
        b"",
        True,
        id="hop-by-hop-fields",
    ),
]


@pytest.mark.parametrize(("raw", "present", "absent", "body", "closes"), FORWARDED)
async def test_forwarded_exactly(
    gate: Proxy,
    recorder: RecordingUpstream,
    raw: bytes,
    present: list[bytes],
    absent: list[bytes],
    body: bytes,
    closes: bool,
) -> None:
    """Forwarded once, as stated; on a kept connection the next request gets its own answer."""
    async with connect(gate) as client:
        await client.send(raw)
        response = await client.response()
        assert (response.status, response.body) == (200, b"/public/x")
        if not closes:
            await client.send(AFTER)
            response = await client.response()
            assert (response.status, response.body) == (200, b"/public/after")
        assert await client.closed() == b""
    first, *rest = await forwarded(gate, recorder)
    assert [request.target for request in rest] == ([] if closes else [b"/public/after"])
    assert (first.target, first.complete, first.body) == (b"/public/x", True, body)
    assert set(present) <= set(first.lines)
    assert not set(absent) & first.names


async def test_http10_without_host_is_forwarded_then_closed(gate: Proxy, recorder: RecordingUpstream) -> None:
    async with connect(gate) as client:
        await client.send(b"GET /public/x HTTP/1.0\r\n\r\n")
        response = await client.response()
        assert (response.status, response.body) == (200, b"/public/x")
        assert await client.closed() == b""
    (request,) = await forwarded(gate, recorder)
    assert request.values(b"host") == [recorder.url.removeprefix("http://").encode()]


# --- pipelining -------------------------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_and_forwarded_in_order(gate: Proxy, recorder: RecordingUpstream) -> None:
    async with connect(gate) as client:
        await client.send(
            message(b"GET /public/one HTTP/1.1", b"Host: gate")
            + message(b"POST /public/two HTTP/1.1", b"Host: gate", b"Content-Length: 3", body=b"abc")
            + message(b"GET /public/three HTTP/1.1", b"Host: gate", b"Connection: close")
        )
        bodies = [(await client.response()).body for _ in range(3)]
        assert bodies == [b"/public/one", b"/public/two", b"/public/three"]
        assert await client.closed() == b""
    received = await forwarded(gate, recorder)
    assert [(request.target, request.body) for request in received] == [
        (b"/public/one", b""),
        (b"/public/two", b"abc"),
        (b"/public/three", b""),
    ]


FIRST = message(b"GET /public/first HTTP/1.1", b"Host: gate")
SECOND = b"/public/second"

# A malformed request pipelined behind a valid one, in the same write.
MALFORMED_SECOND = [
    pytest.param(b"GET /public/second HTTP/1.1\nHost: gate\n\n", 400, id="bare-lf"),
    pytest.param(
        message(
            b"POST /public/second HTTP/1.1",
            b"Host: gate",
            b"Content-Length: 3",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
        id="cl-with-te",
    ),
    pytest.param(message(b"GET /public/second HTTP/1.1", b"Host: gate", b"X-A: 1", b" folded"), 400, id="obs-fold"),
    pytest.param(message(b"GET /public/second HTTP/1.1"), 400, id="no-host"),
    pytest.param(message(b"GET /public/second HTTP/1.1", b"Host: gate", b"X-Big: " + b"b" * 3000), 431, id="too-big"),
    pytest.param(message(b"GET /public/second HTTP/2.0", b"Host: gate"), 505, id="http-2.0"),
    pytest.param(
        message(b"POST /public/second HTTP/1.1", b"Host: gate", b"Content-Length: 1001", body=b"a" * 1001),
        413,
        id="cl-over-body-limit",
    ),
]


@pytest.mark.parametrize(("second", "status"), MALFORMED_SECOND)
async def test_malformed_request_after_a_valid_one(
    gate: Proxy, recorder: RecordingUpstream, second: bytes, status: int
) -> None:
    """The valid one is answered, then the malformed one is refused in turn, then the connection closes."""
    async with connect(gate) as client:
        await client.send(FIRST + second)
        first = await client.response()
        assert (first.status, first.body) == (200, b"/public/first")
        assert (await client.response()).status == status
        assert await client.closed() == b""
    assert [request.target for request in await forwarded(gate, recorder)] == [b"/public/first"]


# A request after which the connection closes, with a valid request pipelined behind it in the same write: the
# client is told the connection ends, so nothing after it may be acted on (RFC 9112 section 9.6).
CLOSING_FIRST = [
    pytest.param(
        message(b"GET /public/first HTTP/1.1", b"Host: gate", b"Connection: close"), 200, id="connection-close"
    ),
    pytest.param(message(b"GET /public/first HTTP/1.0"), 200, id="http10"),
    pytest.param(
        message(b"GET /api/reports/1 HTTP/1.1", b"Host: gate", b"Connection: close"),
        401,
        id="refused-with-connection-close",
    ),
]


@pytest.mark.parametrize(("first", "status"), CLOSING_FIRST)
async def test_nothing_after_a_closing_request_is_forwarded(
    gate: Proxy, recorder: RecordingUpstream, first: bytes, status: int
) -> None:
    async with connect(gate) as client:
        await client.send(first + message(b"GET /public/second HTTP/1.1", b"Host: gate"))
        assert (await client.response()).status == status
        assert await client.closed() == b""
    received = await forwarded(gate, recorder)
    assert [request.target for request in received] == ([b"/public/first"] if status == 200 else [])


async def test_a_refusal_before_its_body_arrives_closes_and_acts_on_nothing_after(
    gate: Proxy, recorder: RecordingUpstream
) -> None:
    """Refused with its body still to come: `Connection: close`; what the client sends next (the body, a request
    behind it) is read and dropped, never acted on, and the client reads its 401 rather than a reset."""
    async with connect(gate) as client:
        await client.send(message(b"POST /api/reports/1 HTTP/1.1", b"Host: gate", b"Content-Length: 5"))
        refused = await client.response()
        assert refused.status == 401
        assert (b"Connection", b"close") in refused.headers
        await client.send(b"hello" + message(b"GET /public/second HTTP/1.1", b"Host: gate"))
        assert await client.closed() == b""
    assert await forwarded(gate, recorder) == []


async def test_a_refusal_after_its_whole_body_keeps_the_connection(gate: Proxy, recorder: RecordingUpstream) -> None:
    """Refused with its body already read: the connection is clean, and the request behind it is answered."""
    async with connect(gate) as client:
        refused_with_body = message(b"POST /api/reports/1 HTTP/1.1", b"Host: gate", b"Content-Length: 5", body=b"hello")
        await client.send(refused_with_body + message(b"GET /public/second HTTP/1.1", b"Host: gate"))
        refused = await client.response()
        assert refused.status == 401
        assert b"connection" not in {name.lower() for name, _ in refused.headers}
        second = await client.response()
        assert (second.status, second.body) == (200, b"/public/second")
    assert [request.target for request in await forwarded(gate, recorder)] == [b"/public/second"]


# --- Expect -----------------------------------------------------------------------------------------------------


async def test_expect_100_continue_on_an_allowed_request(gate: Proxy, recorder: RecordingUpstream) -> None:
    """100 Continue first; the body is sent only then; the upstream never sees the Expect field."""
    async with connect(gate) as client:
        await client.send(post(b"Expect: 100-continue", b"Content-Length: 5", b"Connection: close"))
        assert (await client.response()).status == 100
        await client.send(b"hello")
        final = await client.response()
        assert (final.status, final.body) == (200, b"/public/x")
        assert await client.closed() == b""
    (request,) = await forwarded(gate, recorder)
    assert b"expect" not in request.names
    assert request.body == b"hello"


async def test_expect_100_continue_on_a_refused_request_gets_no_100(gate: Proxy, recorder: RecordingUpstream) -> None:
    """The route needs a token: the 401 comes without a 100 Continue, and the unsent body is never waited for."""
    async with connect(gate) as client:
        await client.send(
            message(b"POST /api/reports/1 HTTP/1.1", b"Host: gate", b"Expect: 100-continue", b"Content-Length: 5")
        )
        assert (await client.response()).status == 401
        assert await client.closed() == b""
    assert await forwarded(gate, recorder) == []


# --- timeouts ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def impatient(issuer: IssuerServer, recorder: RecordingUpstream, start_proxy: ProxyFactory) -> Proxy:
    """The proxy with one-second header and keep-alive timeouts."""
    return await start_proxy(make_config(issuer.issuer.issuer, recorder.url, extra=TIMEOUTS))


async def test_stalled_request_head_gets_408_then_closed(impatient: Proxy, recorder: RecordingUpstream) -> None:
    async with connect(impatient) as client:
        await client.send(b"GET /public/x HTTP/1.1\r\nHost: ga")
        assert (await client.response()).status == 408
        assert await client.closed() == b""
    assert await forwarded(impatient, recorder) == []


async def test_silent_connection_is_closed_without_a_response(impatient: Proxy) -> None:
    async with connect(impatient) as client:
        assert await client.closed() == b""


async def test_idle_keepalive_connection_is_closed(impatient: Proxy, recorder: RecordingUpstream) -> None:
    async with connect(impatient) as client:
        await client.send(get())
        assert (await client.response()).status == 200
        assert await client.closed() == b""
    assert [request.target for request in await forwarded(impatient, recorder)] == [b"/public/x"]


# --- upstream side ----------------------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# (the upstream's raw answer to GET /public/x, the status the client gets, the body it gets when that is pinned)
UPSTREAM_ANSWERS = [
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n0123456789",
        200,
        b"01234",
        id="cl-shorter-than-body",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n01234HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        200,
        b"01234",
        id="cl-shorter-then-a-second-response",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        502,
        None,
        id="cl-with-te",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 502, None, id="cl-twice-same"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        502,
        None,
        id="cl-twice-different",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello", 502, None, id="te-gzip"),
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", 502, None, id="status-four-digits"),
    pytest.param(b"HTTP/1.1 OK\r\nContent-Length: 5\r\n\r\nhello", 502, None, id="status-missing"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", 502, None, id="not-http"),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        502,
        None,
        id="101-to-a-plain-request",
    ),
]


@pytest.mark.parametrize(("reply", "status", "body"), UPSTREAM_ANSWERS)
async def test_upstream_answer_is_relayed_exactly_or_refused(
    gate: Proxy, recorder: RecordingUpstream, reply: bytes, status: int, body: bytes | None
) -> None:
    """The next request on the same client connection gets its own answer, over a new upstream connection: the one
    that carried the bad answer is never reused."""
    recorder.replies[b"/public/x"] = Reply(reply)
    async with connect(gate) as client:
        await client.send(get())
        response = await client.response()
        assert response.status == status
        if body is not None:
            assert response.body == body
        await client.send(AFTER)
        after = await client.response()
        assert (after.status, after.body) == (200, b"/public/after")
        assert await client.closed() == b""
    first, second = await forwarded(gate, recorder)
    assert (first.target, second.target) == (b"/public/x", b"/public/after")
    assert second.connection != first.connection


async def test_malformed_answer_on_a_reused_connection_is_not_sent_again(
    gate: Proxy, recorder: RecordingUpstream
) -> None:
    """A retry is for a pooled connection the upstream closed unseen; this upstream answered (badly) instead."""
    recorder.replies[b"/public/bad"] = Reply(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")
    async with connect(gate) as client:
        await client.send(message(b"GET /public/warm HTTP/1.1", b"Host: gate"))
        assert (await client.response()).status == 200
        await client.send(message(b"GET /public/bad HTTP/1.1", b"Host: gate", b"Connection: close"))
        assert (await client.response()).status == 502
        assert await client.closed() == b""
    assert [request.target for request in await forwarded(gate, recorder)] == [b"/public/warm", b"/public/bad"]


CUT_SHORT = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789", id="content-length"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n", id="chunked"),
]


@pytest.mark.parametrize("reply", CUT_SHORT)
async def test_body_cut_short_upstream_cuts_the_client_connection(
    gate: Proxy, recorder: RecordingUpstream, reply: bytes
) -> None:
    """The head is out already: an early close (never a proper end) is how the client learns of it."""
    recorder.replies[b"/public/x"] = Reply(reply, close=True)
    async with connect(gate) as client:
        await client.send(get())
        response = await client.response()
        assert (response.status, response.body, response.complete) == (200, b"0123456789", False)
        assert await client.closed() == b""


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

# (the client's HTTP version, the upstream's raw answer, the statuses the client gets in order)
INFORMATIONAL = [
    pytest.param(b"1.1", EARLY_HINTS + OK, [103, 200], id="103-to-http11"),
    pytest.param(b"1.0", EARLY_HINTS + OK, [200], id="103-to-http10"),
    pytest.param(b"1.1", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, [200], id="100-from-upstream"),
]


@pytest.mark.parametrize(("version", "reply", "statuses"), INFORMATIONAL)
async def test_informational_answers(
    gate: Proxy, recorder: RecordingUpstream, version: bytes, reply: bytes, statuses: list[int]
) -> None:
    recorder.replies[b"/public/x"] = Reply(reply)
    async with connect(gate) as client:
        await client.send(message(b"GET /public/x HTTP/" + version, b"Host: gate", b"Connection: close"))
        responses = [await client.response()]
        while responses[-1].status < 200:
            responses.append(await client.response())
        assert [response.status for response in responses] == statuses
        assert (responses[-1].body, responses[-1].complete) == (b"ok", True)
        if statuses[0] == 103:
            assert responses[0].header(b"link") == b"</style.css>; rel=preload"
        assert await client.closed() == b""


# (the upstream's raw answer to HEAD /public/x, the Content-Length the client gets, next request from another client)
HEAD_ANSWERS = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"1000", False, id="declared-length"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"1000",
        True,
        id="declared-length-then-another-client",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"5", False, id="with-a-body-anyway"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"5", True, id="with-a-body-then-another-client"
    ),
]


@pytest.mark.parametrize(("reply", "length", "other_client"), HEAD_ANSWERS)
async def test_head_answer(
    gate: Proxy, recorder: RecordingUpstream, reply: bytes, length: bytes, other_client: bool
) -> None:
    """The declared length is passed on, no body follows, and the next request gets its own answer through the
    proxy, on the same client connection or another one (the pooled upstream connections serve every client)."""
    recorder.replies[b"/public/x"] = Reply(reply)
    async with connect(gate) as client, connect(gate) as other:
        await client.send(message(b"HEAD /public/x HTTP/1.1", b"Host: gate"))
        response = await client.response(head_only=True)
        assert (response.status, response.header(b"content-length")) == (200, length)
        following = other if other_client else client
        await following.send(AFTER)
        after = await following.response()
        assert (after.status, after.body) == (200, b"/public/after")
        assert after.header(b"server") == b"scopegate"  # relayed by the proxy, not raw upstream bytes
        assert await following.closed() == b""
    assert [request.target for request in await forwarded(gate, recorder)] == [b"/public/x", b"/public/after"]


async def test_chunked_answer_to_http10_is_dechunked_then_closed(gate: Proxy, recorder: RecordingUpstream) -> None:
    recorder.replies[b"/public/x"] = Reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with connect(gate) as client:
        await client.send(b"GET /public/x HTTP/1.0\r\n\r\n")
        response = await client.response()
        assert (response.status, response.body, response.complete) == (200, b"hello world", True)
        assert response.header(b"transfer-encoding") is None
        assert response.header(b"content-length") is None
        assert await client.closed() == b""
