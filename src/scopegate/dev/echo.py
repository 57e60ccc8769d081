"""An upstream that reports exactly what reached it, for the demo and the proxy's end-to-end tests.

Every request is answered with JSON describing what the upstream received: the method, the path and query
*raw* (as on the wire, never decoded or normalized: tests assert what the proxy forwarded), every header, and
the body's length and sha256 (counted while streaming, so a large upload is never held in memory).

A few path prefixes select behaviours that the proxy's tests need from an upstream:

    /slow/{seconds}    answer after a delay (capped at 30 s)        -> gateway timeouts
    /stream/{n}        n chunks of 1 KiB, chunked, 10 ms apart        -> streamed responses
    /status/{code}     the echo JSON with that status                  -> status pass-through
    /bytes/{n}         n bytes of a fixed pattern, with X-Body-Sha256  -> large bodies, byte for byte
    /ws, /ws/...       a WebSocket echo (with an Upgrade request)      -> WebSocket forwarding
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiohttp import WSMsgType, hdrs, web

MAX_SLOW_SECONDS = 30.0
MAX_STREAM_CHUNKS = 10_000
STREAM_CHUNK_SIZE = 1024
STREAM_PAUSE_SECONDS = 0.01
MAX_BYTES = 64 * 1024 * 1024
BYTES_CHUNK_SIZE = 64 * 1024
READ_CHUNK_SIZE = 64 * 1024

# 64 KiB of 0x00..0xff repeated: every full chunk of /bytes/{n} is this block, so bodies cost no allocation.
_PATTERN_BLOCK = bytes(range(256)) * (BYTES_CHUNK_SIZE // 256)

_Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def echo_app() -> web.Application:
    """The echo upstream: one catch-all route, so no path is refused or rewritten before the handler."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


async def _dispatch(request: web.Request) -> web.StreamResponse:
    path = _raw_path(request)
    if _is_websocket_path(path) and _wants_websocket(request):
        return await _websocket(request)
    for pattern, handler in _BEHAVIOURS:
        match = pattern.fullmatch(path)
        if match:
            return await handler(request, match.group(1))
    return web.json_response(await _describe(request))


def _raw_path(request: web.Request) -> str:
    """The path as it came on the request line; `request.path` is decoded and may be normalized."""
    return request.raw_path.partition("?")[0]


def _raw_query(request: web.Request) -> str:
    return request.raw_path.partition("?")[2]


async def _describe(request: web.Request) -> dict[str, Any]:
    """The echo JSON; reads (and so consumes) the request body."""
    length, sha256 = await _digest_body(request)
    return {
        "method": request.method,
        "path": _raw_path(request),
        "query": _raw_query(request),
        "headers": _headers(request),
        "body_bytes": length,
        "body_sha256": sha256,
        "peer": _peer(request),
    }


def _peer(request: web.Request) -> str:
    """Which connection the request came on (host:port of its sender): two requests on one connection share it."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""


async def _digest_body(request: web.Request) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK_SIZE):
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


def _headers(request: web.Request) -> dict[str, str]:
    """Every header, repeats joined with ", " (RFC 9110 section 5.3); names keep the case they arrived in."""
    joined: dict[str, str] = {}
    first_spelling: dict[str, str] = {}
    for name, value in request.headers.items():
        key = first_spelling.setdefault(name.lower(), name)
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined


async def _slow(request: web.Request, argument: str) -> web.StreamResponse:
    seconds = _parse_float(argument)
    if seconds is None or seconds < 0:
        return _bad_argument("seconds must be a non-negative number")
    description = await _describe(request)
    await asyncio.sleep(min(seconds, MAX_SLOW_SECONDS))
    return web.json_response(description)


async def _stream(request: web.Request, argument: str) -> web.StreamResponse:
    count = min(int(argument), MAX_STREAM_CHUNKS)
    await _digest_body(request)  # drain the body first, so a client still sending one is not left blocked
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    chunks = (_stream_chunk(index) for index in range(count))
    return await _send(request, response, chunks, pause=STREAM_PAUSE_SECONDS)


def _stream_chunk(index: int) -> bytes:
    """Chunk `index` is one repeated letter, so a test can see the chunks arrive in order."""
    return bytes([ord("a") + index % 26]) * STREAM_CHUNK_SIZE


async def _status(request: web.Request, argument: str) -> web.StreamResponse:
    status = int(argument)
    if not 200 <= status <= 599:
        return _bad_argument("status must be between 200 and 599")
    # aiohttp itself drops the body of a 204 or 304, which must have none (RFC 9110 section 6.4.1).
    return web.json_response(await _describe(request), status=status)


async def _bytes(request: web.Request, argument: str) -> web.StreamResponse:
    size = min(int(argument), MAX_BYTES)
    await _digest_body(request)
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "X-Body-Sha256": _pattern_sha256(size)}
    )
    response.content_length = size
    return await _send(request, response, _pattern_chunks(size))


async def _send(
    request: web.Request, response: web.StreamResponse, chunks: Iterable[bytes], *, pause: float = 0.0
) -> web.StreamResponse:
    """Writes each chunk as it comes; `pause` spaces them out so a client sees them arrive separately."""
    await response.prepare(request)
    # aiohttp sends whatever a StreamResponse writes, even to HEAD; the headers alone must answer it.
    if request.method != hdrs.METH_HEAD:
        for index, chunk in enumerate(chunks):
            if index and pause:
                await asyncio.sleep(pause)
            await response.write(chunk)
    await response.write_eof()
    return response


def _pattern_chunks(size: int) -> Iterator[bytes]:
    """The body of /bytes/{size}: bytes 0x00..0xff repeated, cut into 64 KiB chunks."""
    full, rest = divmod(size, BYTES_CHUNK_SIZE)
    for _ in range(full):
        yield _PATTERN_BLOCK
    if rest:
        yield _PATTERN_BLOCK[:rest]


def _pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


def _is_websocket_path(path: str) -> bool:
    return path == "/ws" or path.startswith("/ws/")


def _wants_websocket(request: web.Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


async def _websocket(request: web.Request) -> web.StreamResponse:
    """Greets with the headers it received (the identity headers are the point), then echoes until close."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json({"headers": _headers(request), "path": _raw_path(request)})
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


def _parse_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _bad_argument(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


# Selected by prefix (`/status/418/anything` too), so a proxy route can put its own path after the behaviour.
# Integer arguments match digits only, so int() cannot fail and no handler needs its own parse error.
_BEHAVIOURS: tuple[tuple[re.Pattern[str], _Handler], ...] = (
    (re.compile(r"/slow/([^/]+)(?:/.*)?"), _slow),
    (re.compile(r"/stream/(\d{1,9})(?:/.*)?"), _stream),
    (re.compile(r"/status/(\d{3})(?:/.*)?"), _status),
    (re.compile(r"/bytes/(\d{1,12})(?:/.*)?"), _bytes),
)
