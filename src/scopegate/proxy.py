"""Forward an allowed request to the upstream, streaming both ways, and WebSocket upgrades too.

What was authorized is exactly what is forwarded: the normalized path, the raw query, the body byte for byte
(`auto_decompress=False`, no buffering). Hop-by-hop headers and client-sent identity headers are dropped; scopegate's
identity headers and `X-Forwarded-*` are added. Failures before the upstream's response headers arrive become
`UpstreamError` (502) or `UpstreamTimeout` (504); a failure after that can only cut the client's connection, because
the status line is already on the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from scopegate.bearer import is_identity_header
from scopegate.errors import UpstreamError, UpstreamTimeout
from scopegate.responses import SERVER_HEADER

# RFC 9110 section 7.6.1, plus the non-standard Proxy-Connection some clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The WebSocket handshake is negotiated separately on each side of the proxy.
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
_CHUNK = 64 * 1024
BROKEN_BY_UPSTREAM = "upstream"
BROKEN_BY_CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Forward:
    """What to send upstream for one allowed request."""

    path: str  # normalized: exactly what was authorized
    query: str  # raw, as the client sent it
    identity: Mapping[str, str]  # scopegate's X-Auth-* headers
    request_id: str


@dataclass(slots=True)
class Forwarded:
    """How forwarding went, for the decision log and metrics."""

    response: web.StreamResponse
    upstream_seconds: float
    broken_by: str = ""  # BROKEN_BY_UPSTREAM or BROKEN_BY_CLIENT when the body stopped short


def new_session(*, connections: int = 1024) -> aiohttp.ClientSession:
    """The one keep-alive session shared by all forwarded requests (owned by the app)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # a shared jar would leak one client's cookies to the next
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # forward what the client sent, nothing more
        trust_env=False,
        max_line_size=16384,
        max_field_size=32768,
    )


def wants_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in _connection_tokens(
        request.headers
    )


class Upstream:
    """The upstream service: base URL, header deadline, and the shared client session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_seconds: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._ws_base = "ws" + self._base[4:] if self._base.startswith("http") else self._base
        self._timeout = timeout_seconds

    async def forward(self, request: web.BaseRequest, forward: Forward) -> Forwarded:
        started = time.perf_counter()
        upstream = await self._open(request, forward)
        seconds = time.perf_counter() - started
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            _copy_response_headers(upstream.headers, response)
            await response.prepare(request)
            broken_by = await _pump_body(upstream, response, request)
        finally:
            upstream.release()
        return Forwarded(response, seconds, broken_by)

    async def _open(self, request: web.BaseRequest, forward: Forward) -> aiohttp.ClientResponse:
        url = _target(self._base, forward)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout) as deadline:

                def progressed() -> None:
                    deadline.reschedule(loop.time() + self._timeout)

                body = _streamed(request.content, progressed) if request.body_exists else None
                return await self._session.request(
                    request.method,
                    url,
                    headers=upstream_headers(request, forward),
                    data=body,
                    allow_redirects=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout("header_deadline") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def forward_websocket(self, request: web.BaseRequest, forward: Forward) -> Forwarded:
        started = time.perf_counter()
        url = _target(self._ws_base, forward)
        headers = upstream_headers(request, forward, drop=_WS_HANDSHAKE)
        offered = _offered_protocols(request.headers)
        try:
            async with asyncio.timeout(self._timeout):
                upstream = await self._session.ws_connect(url, headers=headers, protocols=offered, autoping=True)
        except TimeoutError as exc:
            raise UpstreamTimeout("websocket_handshake") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(type(exc).__name__) from exc
        seconds = time.perf_counter() - started
        client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else ())
        await client.prepare(request)
        await _relay_websocket(client, upstream)
        return Forwarded(client, seconds)


def _target(base: str, forward: Forward) -> URL:
    """The upstream URL: its base, then the authorized path and the client's raw query, re-encoded by nobody."""
    return URL(base + forward.path + (f"?{forward.query}" if forward.query else ""), encoded=True)


def upstream_headers(
    request: web.BaseRequest, forward: Forward, *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """The client's end-to-end headers, minus identity headers, plus X-Forwarded-*, X-Request-Id and identity."""
    skip = HOP_BY_HOP | drop | _connection_tokens(request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in skip or is_identity_header(lower) or lower in ("x-request-id", "x-forwarded-for"):
            continue
        headers.add(name, value)
    peer = request.remote or ""
    earlier = ", ".join(request.headers.getall("X-Forwarded-For", []))
    headers["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer
    # Behind an Ingress that terminated TLS these already say https and the public host: keep them.
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    headers.setdefault("X-Forwarded-Host", request.host)
    headers["X-Request-Id"] = forward.request_id
    headers.update(forward.identity)
    return headers


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in Connection are hop-by-hop for this message too (RFC 9110 section 7.6.1)."""
    return frozenset(token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(","))


def _copy_response_headers(source: CIMultiDictProxy[str], response: web.StreamResponse) -> None:
    skip = HOP_BY_HOP | _connection_tokens(source)
    for name, value in source.items():
        if name.lower() not in skip:
            response.headers.add(name, value)
    response.headers.setdefault("Server", SERVER_HEADER)  # the upstream's own, when it sent one


async def _pump_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse, request: web.BaseRequest) -> str:
    """Stream the upstream body to the client; returns who broke off midway ("upstream", "client") or ""."""
    chunks = upstream.content.iter_chunked(_CHUNK)
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, OSError, TimeoutError):
            # The status line is sent; cutting the connection is the only way left to tell the client.
            if request.transport is not None:
                request.transport.close()
            return BROKEN_BY_UPSTREAM
        try:
            await response.write(chunk)
        except ConnectionError:  # aiohttp raises ClientConnectionResetError, a ConnectionResetError
            return BROKEN_BY_CLIENT
    try:
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        return BROKEN_BY_CLIENT
    return ""


async def _streamed(content: aiohttp.StreamReader, progressed: Callable[[], None]) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, restarting the upstream deadline whenever a chunk moves.

    The deadline is meant for the upstream, not for the client's uplink: a large upload over a slow link must not
    become a 504. It still bounds any single stall, and once the body is sent it runs in full for the response.
    """
    async for chunk in content.iter_chunked(_CHUNK):
        progressed()  # read from the client
        yield chunk
        progressed()  # taken by the upstream
    progressed()


def _offered_protocols(headers: CIMultiDictProxy[str]) -> tuple[str, ...]:
    return tuple(
        proto.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", [])
        for proto in value.split(",")
        if proto.strip()
    )


async def _relay_websocket(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages both ways until either side closes, then close the other with the same code."""

    async def client_to_upstream() -> None:
        async for message in client:
            await _send(upstream, message)
        await upstream.close(code=client.close_code or aiohttp.WSCloseCode.OK)

    async def upstream_to_client() -> None:
        async for message in upstream:
            await _send(client, message)
        await client.close(code=upstream.close_code or aiohttp.WSCloseCode.OK)

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        await client.close()


async def _send(target: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage) -> None:
    if message.type is aiohttp.WSMsgType.TEXT:
        await target.send_str(message.data)
    elif message.type is aiohttp.WSMsgType.BINARY:
        await target.send_bytes(message.data)
