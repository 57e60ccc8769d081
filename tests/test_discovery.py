"""HttpJwksFetcher against a real HTTP server on 127.0.0.1: discovery, the JWKS, and every way fetching fails."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from scopegate.discovery import HttpJwksFetcher
from scopegate.errors import JwksFetchError

from jwkstools import Refreshes, Sleeps, make_cache, run_until
from tokenlib import EC_A, RSA, Json, jwks


class FakeLogto:
    """A tiny issuer on 127.0.0.1 serving discovery and JWKS under /oidc, misbehaving on request."""

    def __init__(self) -> None:
        self.keys: list[Json] = [EC_A.jwk()]
        self.discovery_issuer: str | None = None  # None: the issuer the server really is
        self.discovery_extra: dict[str, Any] = {}
        self.jwks_response: Callable[[], web.StreamResponse] | None = None
        self.release = asyncio.Event()  # a slow handler waits for it
        self.hits: dict[str, int] = {"discovery": 0, "jwks": 0}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/oidc/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oidc/jwks", self._jwks)
        app.router.add_get("/oidc/slow", self._slow)
        app.router.add_get("/oidc/chunked", self._chunked)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        base = f"http://{request.host}/oidc"
        document = {"issuer": self.discovery_issuer or base, "jwks_uri": f"{base}/jwks", **self.discovery_extra}
        return web.json_response(document)

    async def _jwks(self, _: web.Request) -> web.StreamResponse:
        self.hits["jwks"] += 1
        if self.jwks_response is not None:
            return self.jwks_response()
        return web.json_response(jwks(*self.keys), headers={"Cache-Control": "no-cache"})

    async def _slow(self, _: web.Request) -> web.Response:
        await self.release.wait()
        return web.json_response(jwks(*self.keys))

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length: only a bounded read can stop it
        await response.prepare(request)
        for _ in range(64):
            await response.write(b" " * 1024)
        await response.write_eof()
        return response


@pytest.fixture
async def logto(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[FakeLogto, str]]:
    fake = FakeLogto()
    server = await aiohttp_server(fake.app())
    yield fake, str(server.make_url("/oidc"))
    fake.release.set()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def fetch_error(fetcher: HttpJwksFetcher) -> str:
    with pytest.raises(JwksFetchError) as caught:
        await fetcher()
    return str(caught.value)


async def test_discovery_then_jwks_and_discovery_is_remembered(
    logto: tuple[FakeLogto, str], session: aiohttp.ClientSession
) -> None:
    fake, issuer = logto
    fetcher = HttpJwksFetcher(session, issuer=issuer, jwks_uri=None)
    assert await fetcher() == jwks(EC_A.jwk())
    assert await fetcher() == jwks(EC_A.jwk())
    assert fake.hits == {"discovery": 1, "jwks": 2}


async def test_the_cache_loads_keys_over_http(logto: tuple[FakeLogto, str], session: aiohttp.ClientSession) -> None:
    fake, issuer = logto
    fake.keys = [EC_A.jwk(), RSA.jwk(with_alg=False)]
    cache = make_cache(HttpJwksFetcher(session, issuer=issuer + "/", jwks_uri=f"{issuer}/jwks"))
    assert await cache.refresh()
    assert cache.key_count == 2
    assert fake.hits == {"discovery": 0, "jwks": 1}  # a configured jwks_uri needs no discovery


@pytest.mark.parametrize(
    ("claimed", "configured_suffix"),
    [
        pytest.param("https://evil.example/oidc", "", id="other-issuer"),
        pytest.param(None, "/", id="configured-with-trailing-slash"),
    ],
)
async def test_discovery_must_name_the_configured_issuer(
    logto: tuple[FakeLogto, str], session: aiohttp.ClientSession, claimed: str | None, configured_suffix: str
) -> None:
    fake, issuer = logto
    fake.discovery_issuer = claimed
    message = await fetch_error(HttpJwksFetcher(session, issuer=issuer + configured_suffix, jwks_uri=None))
    assert f"{issuer}/.well-known/openid-configuration" in message
    assert "issuer" in message
    assert fake.hits["jwks"] == 0


async def test_discovery_without_jwks_uri_fails(logto: tuple[FakeLogto, str], session: aiohttp.ClientSession) -> None:
    fake, issuer = logto
    fake.discovery_extra = {"jwks_uri": None}
    message = await fetch_error(HttpJwksFetcher(session, issuer=issuer, jwks_uri=None))
    assert "jwks_uri" in message


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(lambda: web.Response(status=500, text="boom"), "HTTP 500", id="http-500"),
        pytest.param(lambda: web.Response(status=404), "HTTP 404", id="http-404"),
        pytest.param(
            lambda: web.Response(status=302, headers={"Location": "/elsewhere"}), "HTTP 302", id="redirect-not-followed"
        ),
        pytest.param(lambda: web.Response(text="<html>login</html>"), "not JSON", id="html"),
        pytest.param(lambda: web.Response(body=b"\xff\xfe{}"), "not JSON", id="not-utf8"),
        pytest.param(lambda: web.json_response([1, 2]), "not a JSON object", id="json-array"),
        pytest.param(lambda: web.Response(body=b"[" * 3000), "not JSON", id="deeply-nested"),
        pytest.param(lambda: web.Response(body=b" " * 5000), "larger than 4096 bytes", id="oversized"),
    ],
)
async def test_bad_jwks_responses_are_fetch_errors_naming_the_url(
    logto: tuple[FakeLogto, str],
    session: aiohttp.ClientSession,
    response: Callable[[], web.StreamResponse],
    expected: str,
) -> None:
    fake, issuer = logto
    fake.jwks_response = response
    message = await fetch_error(HttpJwksFetcher(session, issuer=issuer, jwks_uri=None, max_bytes=4096))
    assert f"GET {issuer}/jwks:" in message
    assert expected in message


async def test_oversized_chunked_body_is_cut_off(logto: tuple[FakeLogto, str], session: aiohttp.ClientSession) -> None:
    _, issuer = logto
    fetcher = HttpJwksFetcher(session, issuer=issuer, jwks_uri=f"{issuer}/chunked", max_bytes=4096)
    assert "larger than 4096 bytes" in await fetch_error(fetcher)


async def test_timeout_is_a_fetch_error(logto: tuple[FakeLogto, str], session: aiohttp.ClientSession) -> None:
    _, issuer = logto
    fetcher = HttpJwksFetcher(session, issuer=issuer, jwks_uri=f"{issuer}/slow", timeout_seconds=0.05)
    message = await fetch_error(fetcher)
    assert f"GET {issuer}/slow:" in message
    assert "0.05 s" in message


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connection_refused_is_a_fetch_error(session: aiohttp.ClientSession) -> None:
    issuer = f"http://127.0.0.1:{free_port()}/oidc"
    message = await fetch_error(HttpJwksFetcher(session, issuer=issuer, jwks_uri=None))
    assert f"GET {issuer}/.well-known/openid-configuration:" in message
    assert "ClientConnectorError" in message


async def test_run_loads_keys_once_the_issuer_comes_up(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession
) -> None:
    port, fake = free_port(), FakeLogto()
    issuer = f"http://127.0.0.1:{port}/oidc"

    async def start_issuer() -> None:
        await aiohttp_server(fake.app(), port=port)

    sleeps = Sleeps(stop_after=4, actions={2: start_issuer})
    refreshes = Refreshes()
    cache = make_cache(
        HttpJwksFetcher(session, issuer=issuer, jwks_uri=None), sleep=sleeps, on_refresh=refreshes, refresh_seconds=60
    )
    await run_until(cache, sleeps)
    assert refreshes == [(False, 0), (False, 0), (True, 1), (True, 1)]
    assert sleeps.delays == [1, 2, 60, 60]
    assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid
