"""The echo upstream reports exactly what reached it; its special paths behave as the proxy's tests expect."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientTimeout, WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from scopegate.dev.echo import echo_app

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(echo_app())  # a real server on 127.0.0.1, a free port


async def raw_exchange(client: Client, request: bytes) -> bytes:
    """Send bytes as they are, past any client-side URL or header normalization; return the whole response."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    response = await reader.read()  # the request asks for Connection: close
    writer.close()
    await writer.wait_closed()
    return response


def pattern(size: int) -> bytes:
    """What /bytes/{size} must return, written independently of the server's own chunking."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# -- the echo ------------------------------------------------------------------------------------------------


async def test_path_and_query_are_echoed_raw(client: Client) -> None:
    response = await client.get(URL("/a/%2e%2e/b%20c?x=%41&y=1+2&x=3", encoded=True))
    assert response.status == 200
    echoed = await response.json()
    assert echoed["path"] == "/a/%2e%2e/b%20c"
    assert echoed["query"] == "x=%41&y=1+2&x=3"
    assert echoed["method"] == "GET"


@pytest.mark.parametrize("target", ["/x/../y", "//double//slash", "/a/./b/%2F/", "/semi;colon", "/%ZZ"])
async def test_paths_no_client_would_send_are_echoed_byte_for_byte(client: Client, target: str) -> None:
    request = f"GET {target}?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(client, request.encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(body)
    assert echoed["path"] == target
    assert echoed["query"] == "q"


async def test_no_query_is_an_empty_string(client: Client) -> None:
    assert (await (await client.get("/plain")).json())["query"] == ""


async def test_headers_are_echoed_and_repeats_joined(client: Client) -> None:
    response = await raw_exchange(
        client,
        b"GET /h HTTP/1.1\r\nHost: x\r\nX-Scopegate-Sub: user-1\r\nX-Tag: a\r\nx-tag: b\r\nConnection: close\r\n\r\n",
    )
    headers = json.loads(response.partition(b"\r\n\r\n")[2])["headers"]
    assert headers["X-Scopegate-Sub"] == "user-1"
    assert headers["X-Tag"] == "a, b"
    assert "x-tag" not in headers
    assert headers["Host"] == "x"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_any_method_on_any_path(client: Client, method: str) -> None:
    response = await client.request(method, "/any/deep/path")
    assert response.status == 200
    assert (await response.json())["method"] == method


async def test_no_body_is_zero_bytes(client: Client) -> None:
    echoed = await (await client.get("/")).json()
    assert echoed["body_bytes"] == 0
    assert echoed["body_sha256"] == hashlib.sha256(b"").hexdigest()


async def test_streamed_upload_is_counted_and_hashed(client: Client) -> None:
    chunks = [bytes([i]) * 250_000 for i in range(20)]  # 5 MB, sent chunked without a Content-Length

    async def upload() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = await client.post("/upload", data=upload())
    echoed = await response.json()
    assert echoed["headers"]["Transfer-Encoding"] == "chunked"
    assert echoed["body_bytes"] == 5_000_000
    assert echoed["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


# -- special paths -------------------------------------------------------------------------------------------


async def test_status_answers_with_that_status_and_the_echo(client: Client) -> None:
    response = await client.post("/status/418/teapot?q=1", data=b"tea")
    assert response.status == 418
    echoed = await response.json()
    assert echoed["path"] == "/status/418/teapot"
    assert echoed["body_bytes"] == 3


@pytest.mark.parametrize("status", [204, 304])
async def test_status_without_a_body(client: Client, status: int) -> None:
    response = await client.get(f"/status/{status}")
    assert response.status == status
    assert await response.read() == b""
    assert (await (await client.get("/after")).json())["path"] == "/after"  # the connection is still sane


@pytest.mark.parametrize("path", ["/bytes/100000", "/stream/3", "/status/418", "/anything"])
async def test_head_gets_headers_only(client: Client, path: str) -> None:
    response = await client.head(path)
    assert response.status in (200, 418)
    assert await response.read() == b""
    assert (await (await client.get("/after")).json())["path"] == "/after"  # no stray body on the connection


@pytest.mark.parametrize("path", ["/status/199", "/status/600", "/slow/-1", "/slow/nan", "/slow/soon"])
async def test_bad_arguments_are_refused(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 400
    assert (await response.json())["error"]


@pytest.mark.parametrize("size", [0, 1, 65_536, 200_001])
async def test_bytes_returns_the_pattern_with_its_checksum(client: Client, size: int) -> None:
    response = await client.get(f"/bytes/{size}")
    assert response.status == 200
    assert response.content_length == size
    body = await response.read()
    assert body == pattern(size)
    assert response.headers["X-Body-Sha256"] == hashlib.sha256(body).hexdigest()


async def test_bytes_is_capped_at_64_mib(client: Client) -> None:
    response = await client.get("/bytes/999999999999")
    assert response.content_length == 64 * 1024 * 1024
    response.close()


async def test_stream_sends_separate_chunks_in_order(client: Client) -> None:
    response = await client.get("/stream/5")
    assert response.headers["Transfer-Encoding"] == "chunked"
    received = b""
    chunk_ends = 0
    async for data, end_of_chunk in response.content.iter_chunks():
        received += data
        chunk_ends += end_of_chunk
    assert received == b"".join(bytes([letter]) * 1024 for letter in b"abcde")
    assert chunk_ends == 5


async def test_slow_waits_before_answering(client: Client) -> None:
    started = time.monotonic()
    response = await client.get("/slow/0.05")
    assert response.status == 200
    assert time.monotonic() - started >= 0.05
    assert (await response.json())["path"] == "/slow/0.05"


async def test_slow_is_long_enough_to_time_out(client: Client) -> None:
    with pytest.raises(TimeoutError):
        await client.get("/slow/5", timeout=ClientTimeout(total=0.1))


# -- WebSocket -----------------------------------------------------------------------------------------------


async def test_websocket_greets_with_headers_then_echoes(client: Client) -> None:
    async with client.ws_connect("/ws/room%201", headers={"X-Scopegate-Sub": "user-1"}) as ws:
        greeting: dict[str, Any] = await ws.receive_json()
        assert greeting["path"] == "/ws/room%201"
        assert greeting["headers"]["X-Scopegate-Sub"] == "user-1"
        assert greeting["headers"]["Upgrade"].lower() == "websocket"
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        await ws.send_bytes(b"\x00\xff")
        assert await ws.receive_bytes() == b"\x00\xff"
        await ws.close()
        assert (await ws.receive()).type is WSMsgType.CLOSED


async def test_ws_path_without_upgrade_is_a_plain_echo(client: Client) -> None:
    response = await client.get("/ws")
    assert response.status == 200
    assert (await response.json())["path"] == "/ws"
