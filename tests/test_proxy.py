"""Forwarding through the real proxy: what the upstream receives, streaming, upstream failures, WebSockets."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from conftest import API, GatedUpstream, IssuerServer, Proxy, ProxyFactory, Running, free_port, make_config, wait_until

MiB = 1024 * 1024
_GATED_RULES = """
routes:
  - name: gated
    match: { path: "/**" }
    resource: https://api.example.com
"""


@pytest.fixture
def token(issuer: IssuerServer) -> str:
    return issuer.issuer.mint(subject="u1", client_id="c1", resource=API, scopes=["read:report", "chat"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_method_path_query_and_body_reach_the_upstream(proxy: Proxy, token: str) -> None:
    url = aiohttp.client.URL(proxy.url + "/up/items?b=%20x&a=1&a=2", encoded=True)
    async with proxy.session.put(url, data=b"hello", headers=auth(token)) as response:
        seen = await response.json()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/up/items"
    assert seen["query"] == "b=%20x&a=1&a=2"
    assert seen["body_bytes"] == 5
    assert seen["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_hop_by_hop_headers_are_dropped_and_forwarding_headers_added(proxy: Proxy, token: str) -> None:
    headers = {
        **auth(token),
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-Forwarded-For": "203.0.113.7",
        "X-End-To-End": "kept",
        "Host": "app.example.com",
    }
    async with proxy.session.get(proxy.url + "/up/h", headers=headers) as response:
        seen = {k.lower(): v for k, v in (await response.json())["headers"].items()}
    for dropped in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert dropped not in seen, dropped
    assert seen["x-end-to-end"] == "kept"
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "app.example.com"
    assert seen["host"] == "app.example.com", "the client's Host is preserved"
    assert seen["authorization"] == f"Bearer {token}", "the app may read the token itself"


async def test_upstream_status_and_headers_pass_through(proxy: Proxy, token: str) -> None:
    async with proxy.session.get(proxy.url + "/status/418", headers=auth(token)) as response:
        assert response.status == 418
    async with proxy.session.get(proxy.url + "/status/302", headers=auth(token), allow_redirects=False) as resp:
        assert resp.status == 302, "redirects are the client's business, never followed by the proxy"


async def test_large_download_streams_byte_for_byte(proxy: Proxy, token: str) -> None:
    size = 32 * MiB
    digest = hashlib.sha256()
    async with proxy.session.get(proxy.url + f"/bytes/{size}", headers=auth(token)) as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(MiB):
            digest.update(chunk)
        expected = response.headers["X-Body-Sha256"]
    assert digest.hexdigest() == expected


async def test_upload_is_streamed_not_buffered(
    issuer: IssuerServer, gated_upstream: tuple[GatedUpstream, Running], start_proxy: ProxyFactory, token: str
) -> None:
    """The upstream sees the body's first bytes while the client still holds most of it back: nothing buffers it whole.

    The client sends 1 MiB, then waits until the upstream has received bytes before sending the remaining 63 MiB; a
    proxy that buffered the body before forwarding it would leave the upstream empty and fail the wait.
    """
    gated, running = gated_upstream
    proxy = await start_proxy(make_config(issuer.issuer.issuer, running.url, rules=_GATED_RULES))
    size, chunk = 64 * MiB, b"\xa5" * MiB

    async def body() -> AsyncIterator[bytes]:
        yield chunk
        await asyncio.wait_for(gated.first_bytes.wait(), 30)
        for _ in range(size // MiB - 1):
            yield chunk

    async with proxy.session.post(proxy.url + "/count", data=body(), headers=auth(token)) as response:
        seen = await response.json()
    assert seen["body_bytes"] == size


async def test_chunked_response_streams_as_it_comes(
    issuer: IssuerServer, gated_upstream: tuple[GatedUpstream, Running], start_proxy: ProxyFactory, token: str
) -> None:
    """The client reads the first chunk while the upstream still holds the rest back."""
    gated, running = gated_upstream
    proxy = await start_proxy(make_config(issuer.issuer.issuer, running.url, rules=_GATED_RULES))
    async with proxy.session.get(proxy.url + "/drip", headers=auth(token)) as response:
        first = await asyncio.wait_for(response.content.readany(), 30)
        assert not gated.release.is_set()
        gated.release.set()
        rest = await response.read()
    assert first + rest == b"first-rest"


async def test_head_request(proxy: Proxy, token: str) -> None:
    async with proxy.session.head(proxy.url + "/bytes/1000", headers=auth(token)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1000"
        assert await response.read() == b""


async def test_dead_upstream_is_502(issuer: IssuerServer, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(make_config(issuer.issuer.issuer, f"http://127.0.0.1:{free_port()}"))
    async with proxy.session.get(proxy.url + "/public/x") as response:
        assert response.status == 502
        assert (await response.json())["error"] == "bad_gateway"
    assert proxy.metrics.requests.labels("public", "allow", "upstream_error")._value.get() == 1


async def test_slow_upstream_is_504(proxy: Proxy, token: str) -> None:
    """The upstream would answer 200 after 10 s: a 504 shows the 2 s header deadline ended it first."""
    async with proxy.session.get(proxy.url + "/slow/10", headers=auth(token)) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "gateway_timeout"
    assert proxy.metrics.requests.labels("echo-slow", "allow", "upstream_timeout")._value.get() == 1


async def test_keep_alive_connections_are_reused(proxy: Proxy, token: str) -> None:
    peers = set()
    for _ in range(5):
        async with proxy.session.get(proxy.url + "/up/k", headers=auth(token)) as response:
            assert response.status == 200
            peers.add((await response.json())["peer"])
    assert len(peers) == 1, f"one pooled upstream connection served all five, not {sorted(peers)}"


async def test_websocket_is_proxied_with_identity(proxy: Proxy, token: str) -> None:
    async with proxy.session.ws_connect(proxy.url + "/ws/chat", headers=auth(token)) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["path"] == "/ws/chat"
        assert hello["headers"]["X-Auth-Subject"] == "u1"
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "ping"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(timeout=5)).data == b"\x00\x01"


async def test_websocket_without_token_is_refused(proxy: Proxy) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.session.ws_connect(proxy.url + "/ws/chat")
    assert refused.value.status == 401


async def test_concurrent_requests_are_all_answered(proxy: Proxy, token: str) -> None:
    async def one(i: int) -> int:
        async with proxy.session.get(proxy.url + f"/up/c/{i}", headers=auth(token)) as response:
            assert (await response.json())["path"] == f"/up/c/{i}"
            return response.status

    statuses = await asyncio.gather(*(one(i) for i in range(50)))
    assert statuses == [200] * 50


async def test_client_hanging_up_mid_body_is_not_blamed_on_the_upstream(proxy: Proxy, token: str) -> None:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /bytes/{64 * MiB} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await reader.readexactly(1024)
    writer.transport.abort()  # a reset, not a polite close
    counted = proxy.metrics.requests.labels("echo-bytes", "allow", "ok")
    await wait_until(lambda: counted._value.get() == 1)
    assert proxy.metrics.requests.labels("echo-bytes", "allow", "upstream_error")._value.get() == 0


async def test_upstream_breaking_off_mid_body_cuts_the_client(issuer: IssuerServer, start_proxy: ProxyFactory) -> None:
    """The upstream promises 1000 bytes and hangs up after 10: the client must see a short body, not a clean end."""

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(make_config(issuer.issuer.issuer, f"http://127.0.0.1:{port}"))
        async with proxy.session.get(proxy.url + "/public/x") as response:
            assert response.status == 200
            assert response.headers["Server"] == "scopegate", "the upstream sent none; no aiohttp version either"
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        counted = proxy.metrics.requests.labels("public", "allow", "upstream_error")
        await wait_until(lambda: counted._value.get() == 1)
    finally:
        server.close()


async def test_slow_upload_longer_than_the_upstream_timeout_is_not_a_504(proxy: Proxy, token: str) -> None:
    """The 2 s deadline is for the upstream: a body trickling in over 3.5 s still gets through, length intact."""
    chunk, count = b"x" * 1000, 7

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk
            await asyncio.sleep(0.5)

    headers = {**auth(token), "Content-Length": str(len(chunk) * count)}
    async with proxy.session.post(proxy.url + "/up/trickle", data=trickle(), headers=headers) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["body_bytes"] == len(chunk) * count
    received = {name.lower(): value for name, value in seen["headers"].items()}
    assert received["content-length"] == str(len(chunk) * count)
    assert "transfer-encoding" not in received


async def test_an_upload_that_stalls_longer_than_the_timeout_is_cut(proxy: Proxy, token: str) -> None:
    """Progress restarts the deadline, but a single stall longer than it still ends the request."""

    async def stall() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(6)
        yield b"never"

    headers = {**auth(token), "Content-Length": "10"}
    async with proxy.session.post(proxy.url + "/up/stall", data=stall(), headers=headers) as response:
        assert response.status == 504  # after the stall the body completes and the upstream would answer 200
