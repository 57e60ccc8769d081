"""The key cache serves rotation without floods, keeps its keys through outages, and fetches over real HTTP safely.

Cache behaviour is driven by a counting in-memory issuer and a fake clock; the HTTP fetcher talks to a small aiohttp
issuer on 127.0.0.1 whose behaviour each test controls. Nothing sleeps for real beyond a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import socket
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pytest_aiohttp import AiohttpServer

from scopegate.config import ASYMMETRIC_ALGORITHMS
from scopegate.errors import InvalidToken, JwksFetchError, JwksUnavailable
from scopegate.jwks import MAX_KEYS, HttpJwksFetcher, JwksCache
from scopegate.tokens import TokenVerifier

from tokenlib import EC_A, EC_B, EC_P256, ED, ISSUER, NOW, RSA, Json, jwks, logto_claims

COOLDOWN = 5.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIssuer:
    """A JWKS source that counts its fetches; it can be taken down, and can hold fetches until released."""

    def __init__(self, *keys: Json) -> None:
        self.keys: list[Json] = list(keys)
        self.document: Mapping[str, Any] | None = None  # served instead of {"keys": ...} when set
        self.up = True
        self.fetches = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise JwksFetchError("GET https://tenant.logto.app/oidc/jwks: HTTP 503 (expected 200)")
        return self.document if self.document is not None else jwks(*self.keys)


class Refreshes(list[tuple[bool, int]]):
    """The on_refresh hook: every (success, key_count) report in order."""

    def __call__(self, success: bool, keys: int) -> None:
        self.append((success, keys))


def make_cache(
    issuer: Callable[[], Awaitable[Mapping[str, Any]]],
    *,
    clock: FakeClock | None = None,
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
    on_refresh: Refreshes | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    refresh_seconds: float = 300,
) -> JwksCache:
    return JwksCache(
        fetch=issuer,
        algorithms=algorithms,
        refresh_seconds=refresh_seconds,
        refetch_cooldown_seconds=COOLDOWN,
        clock=clock or FakeClock(),
        sleep=sleep,
        on_refresh=on_refresh,
    )


def random_kid() -> str:
    return "".join(random.choices(string.ascii_letters, k=16))


async def unknown_kid(cache: JwksCache, kid: str | None) -> str:
    with pytest.raises(InvalidToken) as caught:
        await cache.key_for(kid, "ES384")
    return caught.value.detail


async def settle() -> None:
    """Let every task that is ready run (a gated fetch stays parked)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- single flight and rate limits ----------------------------------------------------------------------------


async def test_concurrent_refreshes_share_one_fetch() -> None:
    issuer = FakeIssuer(EC_A.jwk())
    issuer.gate = asyncio.Event()
    cache = make_cache(issuer)
    waiting = [asyncio.create_task(cache.refresh()) for _ in range(50)]
    await settle()
    issuer.gate.set()
    assert await asyncio.gather(*waiting) == [True] * 50
    assert issuer.fetches == 1


async def test_concurrent_key_misses_share_one_fetch() -> None:
    issuer = FakeIssuer(EC_A.jwk())
    issuer.gate = asyncio.Event()
    cache = make_cache(issuer)
    waiting = [asyncio.create_task(cache.key_for(EC_A.kid, "ES384")) for _ in range(100)]
    await settle()
    issuer.gate.set()
    keys = await asyncio.gather(*waiting)
    assert {key.key_id for key in keys} == {EC_A.kid}
    assert issuer.fetches == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    issuer = FakeIssuer(EC_A.jwk())
    issuer.gate = asyncio.Event()
    cache = make_cache(issuer)
    impatient, patient = asyncio.create_task(cache.refresh()), asyncio.create_task(cache.refresh())
    await settle()
    impatient.cancel()
    await settle()
    issuer.gate.set()
    assert await patient is True
    assert impatient.cancelled()
    assert cache.has_keys


async def test_a_flood_of_unknown_kids_refetches_once_per_cooldown() -> None:
    issuer, clock = FakeIssuer(EC_A.jwk()), FakeClock()
    cache = make_cache(issuer, clock=clock)
    assert await cache.refresh()
    clock.now += COOLDOWN + 5  # the last fetch is old: the next miss may refetch

    details = await asyncio.gather(*(unknown_kid(cache, random_kid()) for _ in range(1000)))
    assert set(details) == {"unknown_kid"}
    assert issuer.fetches == 2

    clock.now += COOLDOWN - 0.01
    details = await asyncio.gather(*(unknown_kid(cache, random_kid()) for _ in range(1000)))
    assert set(details) == {"unknown_kid"}
    assert issuer.fetches == 2

    clock.now += 0.01
    assert await unknown_kid(cache, random_kid()) == "unknown_kid"
    assert await unknown_kid(cache, random_kid()) == "unknown_kid"
    assert issuer.fetches == 3


async def test_known_kids_are_served_without_fetching() -> None:
    issuer = FakeIssuer(EC_A.jwk())
    cache = make_cache(issuer)
    assert await cache.refresh()
    for _ in range(100):
        assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid
    assert issuer.fetches == 1


# --- rotation and outages -------------------------------------------------------------------------------------


async def test_rotation_new_kid_is_accepted_after_one_refetch_and_the_retired_kid_is_refused() -> None:
    issuer, clock = FakeIssuer(EC_A.jwk()), FakeClock()
    cache = make_cache(issuer, clock=clock)
    verifier = TokenVerifier(
        issuer=ISSUER, algorithms=frozenset({"ES384"}), leeway_seconds=60, keys=cache, clock=lambda: NOW
    )
    assert (await verifier.verify(EC_A.token(logto_claims()))).subject == "user-123"
    assert issuer.fetches == 1

    clock.now += COOLDOWN
    issuer.keys = [EC_A.jwk(), EC_B.jwk()]  # Logto publishes the new key next to the old one
    assert (await verifier.verify(EC_B.token(logto_claims()))).subject == "user-123"
    assert issuer.fetches == 2

    clock.now += 300
    issuer.keys = [EC_B.jwk()]  # the old key is retired
    assert await cache.refresh()
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(EC_A.token(logto_claims()))
    assert caught.value.detail == "unknown_kid"


async def test_failed_refresh_keeps_the_old_keys_and_reports_failure() -> None:
    issuer, refreshes = FakeIssuer(EC_A.jwk()), Refreshes()
    cache = make_cache(issuer, on_refresh=refreshes)
    assert await cache.refresh()
    issuer.up = False
    with structlog.testing.capture_logs() as logs:
        assert await cache.refresh() is False
    assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid
    assert cache.key_count == 1
    assert refreshes == [(True, 1), (False, 1)]
    assert [(log["event"], log["keys"]) for log in logs] == [("jwks_refresh_failed", 1)]
    assert "HTTP 503" in logs[0]["error"]


async def test_no_keys_ever_fails_closed_and_retries_only_after_the_cooldown() -> None:
    issuer, clock, refreshes = FakeIssuer(EC_A.jwk()), FakeClock(), Refreshes()
    issuer.up = False
    cache = make_cache(issuer, clock=clock, on_refresh=refreshes)
    for _ in range(3):
        with pytest.raises(JwksUnavailable) as caught:
            await cache.key_for(EC_A.kid, "ES384")
        assert caught.value.detail == "no_signing_keys"
    assert issuer.fetches == 1
    assert refreshes == [(False, 0)]
    assert not cache.has_keys

    issuer.up = True
    clock.now += COOLDOWN
    assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid
    assert issuer.fetches == 2


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"keys": {"kid": "a"}}, id="keys-not-a-list"),
        pytest.param({"jwks": []}, id="no-keys-member"),
        pytest.param({"keys": []}, id="empty"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, id="only-unusable-keys"),
    ],
)
async def test_a_document_without_usable_keys_is_a_failed_fetch(document: Mapping[str, Any]) -> None:
    issuer, refreshes = FakeIssuer(EC_A.jwk()), Refreshes()
    cache = make_cache(issuer, on_refresh=refreshes)
    assert await cache.refresh()
    issuer.document = document
    assert await cache.refresh() is False
    assert refreshes == [(True, 1), (False, 1)]
    assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid


# --- which keys are used --------------------------------------------------------------------------------------

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ"


async def test_unusable_keys_are_skipped_while_the_others_load() -> None:
    private_jwk = {**EC_B.jwk(), "kid": "published-private", "d": "QUJD"}
    issuer = FakeIssuer()
    issuer.document = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": SECRET},
            {**EC_B.jwk(), "kid": "for-encryption", "use": "enc"},
            {**EC_B.jwk(), "kid": "wrap-only", "key_ops": ["wrapKey"]},
            private_jwk,
            {"kty": "EC", "kid": "broken", "crv": "P-384", "x": "AAAA", "y": "AAAA"},
            {"kty": "EC", "kid": "secp256k1", "crv": "secp256k1", "x": "AAAA", "y": "AAAA"},
            {**EC_B.jwk(), "kid": "es256-on-p384", "alg": "ES256"},
            {**EC_B.jwk(), "kid": "hs256-on-ec", "alg": "HS256"},
            {**EC_B.jwk(), "kid": 7},
            "not-an-object",
            EC_A.jwk(),
            {**EC_B.jwk(), "kid": EC_A.kid},
        ]
    }
    cache = make_cache(issuer)
    with structlog.testing.capture_logs() as logs:
        assert await cache.refresh()
    assert cache.key_count == 1
    skipped = [(log["kid"], log["why"]) for log in logs if log["event"] == "jwk_skipped"]
    assert skipped == [
        ("hmac", "symmetric"),
        ("for-encryption", "not_for_signatures"),
        ("wrap-only", "not_for_verification"),
        ("published-private", "private_key"),
        ("broken", "unparseable"),
        ("secp256k1", "unsupported_key_type"),
        ("es256-on-p384", "alg_does_not_fit_key"),
        ("hs256-on-ec", "alg_does_not_fit_key"),
        (None, "kid_not_a_string"),
        (None, "not_an_object"),
        (EC_A.kid, "duplicate_kid"),
    ]
    assert all(SECRET not in str(log) and "QUJD" not in str(log) for log in logs)
    assert (await cache.key_for(EC_A.kid, "ES384")).key_id == EC_A.kid


@pytest.mark.parametrize("kid", ["hmac", "for-encryption", "published-private", "es256-on-p384"])
async def test_a_skipped_key_is_unknown(kid: str) -> None:
    issuer = FakeIssuer(
        {"kty": "oct", "kid": "hmac", "k": SECRET},
        {**EC_B.jwk(), "kid": "for-encryption", "use": "enc"},
        {**EC_B.jwk(), "kid": "published-private", "d": "QUJD"},
        {**EC_B.jwk(), "kid": "es256-on-p384", "alg": "ES256"},
        EC_A.jwk(),
    )
    cache = make_cache(issuer)
    assert await unknown_kid(cache, kid) == "unknown_kid"


async def test_rsa_keys_shorter_than_2048_bits_are_skipped() -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the point
    issuer = FakeIssuer({**RSAAlgorithm.to_jwk(short, as_dict=True), "kid": "rsa-1024"}, EC_A.jwk())
    cache = make_cache(issuer)
    with structlog.testing.capture_logs() as logs:
        assert await cache.refresh()
    skipped = [(log["kid"], log["why"]) for log in logs if log["event"] == "jwk_skipped"]
    assert skipped == [("rsa-1024", "key_too_short")]
    assert cache.key_count == 1


async def test_rsa_jwk_without_alg_serves_every_allowed_rsa_algorithm() -> None:
    cache = make_cache(FakeIssuer(RSA.jwk(with_alg=False)), algorithms=frozenset({"RS256", "PS256", "ES384"}))
    assert (await cache.key_for(RSA.kid, "RS256")).algorithm_name == "RS256"
    assert (await cache.key_for(RSA.kid, "PS256")).algorithm_name == "PS256"
    with pytest.raises(InvalidToken) as caught:
        await cache.key_for(RSA.kid, "ES384")
    assert caught.value.detail == "alg_key_mismatch"
    with pytest.raises(InvalidToken) as caught:
        await cache.key_for(RSA.kid, "RS512")  # an RSA algorithm, but not an allowed one
    assert caught.value.detail == "alg_not_allowed"


async def test_a_ps256_token_verifies_with_a_no_alg_rsa_key() -> None:
    cache = make_cache(FakeIssuer(RSA.jwk(with_alg=False)), algorithms=frozenset({"PS256"}))
    verifier = TokenVerifier(
        issuer=ISSUER, algorithms=frozenset({"PS256"}), leeway_seconds=0, keys=cache, clock=lambda: NOW
    )
    assert (await verifier.verify(RSA.token(logto_claims(), alg="PS256"))).subject == "user-123"


async def test_jwk_alg_outside_the_allow_list_is_not_served() -> None:
    issuer = FakeIssuer({**RSA.jwk(), "alg": "RS512"}, EC_A.jwk())
    cache = make_cache(issuer, algorithms=frozenset({"RS256", "ES384"}))
    with structlog.testing.capture_logs() as logs:
        assert await cache.refresh()
    assert cache.key_count == 1
    assert [(log["kid"], log["why"]) for log in logs if log["event"] == "jwk_skipped"] == [
        (RSA.kid, "no_allowed_algorithm")
    ]
    with pytest.raises(InvalidToken) as caught:
        await cache.key_for(RSA.kid, "RS256")
    assert caught.value.detail == "unknown_kid"


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        pytest.param(EC_A, "ES384", id="ec-p384"),
        pytest.param(EC_P256, "ES256", id="ec-p256"),
        pytest.param(ED, "EdDSA", id="ed25519"),
        pytest.param(RSA, "RS384", id="rsa"),
    ],
)
async def test_algorithm_is_inferred_from_key_type_and_curve_when_the_jwk_has_none(key: Any, alg: str) -> None:
    cache = make_cache(FakeIssuer(key.jwk(with_alg=False)))
    assert (await cache.key_for(key.kid, alg)).algorithm_name == alg


async def test_a_token_without_kid_uses_the_only_key_that_fits() -> None:
    cache = make_cache(FakeIssuer(EC_A.jwk(), RSA.jwk(with_alg=False)))
    assert (await cache.key_for(None, "ES384")).key_id == EC_A.kid
    assert (await cache.key_for(None, "RS256")).key_id == RSA.kid
    cache = make_cache(FakeIssuer(EC_A.jwk(), EC_B.jwk()))
    assert await unknown_kid(cache, None) == "unknown_kid"


async def test_at_most_max_keys_are_loaded() -> None:
    issuer = FakeIssuer(*({**EC_A.jwk(), "kid": f"k{i}"} for i in range(MAX_KEYS + 50)))
    cache = make_cache(issuer)
    with structlog.testing.capture_logs() as logs:
        assert await cache.refresh()
    assert cache.key_count == MAX_KEYS
    assert [log["event"] for log in logs] == ["jwks_truncated", "jwks_refreshed"]
    assert await unknown_kid(cache, f"k{MAX_KEYS}") == "unknown_kid"


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        make_cache(FakeIssuer(), algorithms=frozenset({"ES384", "HS256"}))


# --- the background task --------------------------------------------------------------------------------------


class Sleeps:
    """An injected sleep that records each delay, runs a scripted action after some of them, and parks at the end."""

    def __init__(self, stop_after: int, actions: Mapping[int, Callable[[], Awaitable[None] | None]]) -> None:
        self.delays: list[float] = []
        self.done = asyncio.Event()
        self._stop_after = stop_after
        self._actions = actions

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        action = self._actions.get(len(self.delays))
        if action is not None:
            result = action()
            if result is not None:
                await result
        if len(self.delays) >= self._stop_after:
            self.done.set()
            await asyncio.Event().wait()  # parked until the test cancels run()
        await asyncio.sleep(0)


async def run_until(cache: JwksCache, sleeps: Sleeps) -> None:
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(sleeps.done.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_backs_off_until_keys_load_then_refreshes_periodically() -> None:
    issuer, refreshes = FakeIssuer(EC_A.jwk()), Refreshes()
    issuer.up = False

    def up() -> None:
        issuer.up = True

    def down() -> None:
        issuer.up = False

    sleeps = Sleeps(stop_after=8, actions={3: up, 5: down})
    cache = make_cache(issuer, sleep=sleeps, on_refresh=refreshes, refresh_seconds=20)
    await run_until(cache, sleeps)
    assert sleeps.delays == [1, 2, 4, 20, 20, 1, 2, 4]
    assert [success for success, _ in refreshes] == [False] * 3 + [True] * 2 + [False] * 3
    assert cache.has_keys  # the failed periodic refreshes kept the keys


@pytest.mark.parametrize(
    ("refresh_seconds", "delays"),
    [
        pytest.param(300, [1, 2, 4, 8, 16, 30, 30], id="capped-at-30"),
        pytest.param(5, [1, 2, 4, 5, 5, 5, 5], id="capped-at-refresh-interval"),
    ],
)
async def test_run_backoff_is_capped(refresh_seconds: float, delays: list[float]) -> None:
    issuer = FakeIssuer(EC_A.jwk())
    issuer.up = False
    sleeps = Sleeps(stop_after=len(delays), actions={})
    await run_until(make_cache(issuer, sleep=sleeps, refresh_seconds=refresh_seconds), sleeps)
    assert sleeps.delays == delays


# --- HTTP -----------------------------------------------------------------------------------------------------


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
