"""The verified-token cache: a repeat token costs a lookup, yet it still expires, leaves with its key, and is verified
once however many requests bring it at the same time.

`TokenCache` is first driven on its own with stand-in entries (size bound, LRU order, key flushes, single flight).
The rest runs a real `TokenVerifier` over the real JWKS cache: real keys, really signed tokens, a fake clock, a
counting issuer and a count of the real signature checks (the checks still run; they are only counted).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jwt.algorithms import ECAlgorithm
from pytest_aiohttp import AiohttpServer

import scopegate.tokens
from scopegate.app import build_verifier
from scopegate.config import ASYMMETRIC_ALGORITHMS, AuthConfig, parse_config
from scopegate.errors import InvalidToken, JwksUnavailable
from scopegate.jwks import JwksCache, KeyId, PublishedKey
from scopegate.tokencache import CacheStats, TokenCache
from scopegate.tokens import TokenVerifier, VerifiedToken

from jwkstools import FakeClock, FakeIssuer, make_cache
from tokenlib import EC_A, EC_B, ISSUER, NOW, Json, jwks, logto_claims, parts, with_signature

LEEWAY = 60.0
KEY_A = KeyId(kid="a", alg="ES384", fingerprint="aa")
KEY_B = KeyId(kid="b", alg="ES384", fingerprint="bb")


async def settle() -> None:
    """Let every task that is ready run (a gated fetch or verification stays parked)."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- TokenCache on its own ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A stand-in for a verified token: the cache itself reads nothing but `key`."""

    key: KeyId = KEY_A


@pytest.mark.parametrize(
    ("script", "kept"),
    [
        pytest.param("put a, put b, put c, put d", "b c d", id="least-recently-put-goes-first"),
        pytest.param("put a, put b, put c, get a, put d", "a c d", id="a-hit-makes-an-entry-recent"),
        pytest.param("put a, put b, put c, put a, put d", "a c d", id="putting-again-makes-an-entry-recent"),
        pytest.param("put a, put b, put c, get x, put d", "b c d", id="a-miss-changes-no-order"),
        pytest.param("put a, put b, put c, evict b, put d", "a c d", id="an-eviction-makes-room"),
        pytest.param("put a, put b, get a, put c, get b, put d, put e", "b d e", id="mixed"),
    ],
)
def test_the_least_recently_used_entry_makes_room(script: str, kept: str) -> None:
    cache: TokenCache[Entry] = TokenCache(3)
    for step in script.split(", "):
        action, token = step.split()
        getattr(cache, action)(token, *([Entry()] if action == "put" else []))
    assert {token for token in "abcdex" if token in cache} == set(kept.split())


def test_a_million_distinct_tokens_never_grow_the_cache_past_its_capacity() -> None:
    capacity, inserts = 1000, 1_000_000
    cache: TokenCache[Entry] = TokenCache(capacity)
    entry = Entry()
    cache.put("hot", entry)
    for index in range(inserts):
        cache.put(f"token-{index}", entry)
        assert len(cache) <= capacity
        if index % 100 == 0:
            assert cache.get("hot") is entry  # used often enough to stay among the most recent
    assert "hot" in cache
    assert f"token-{inserts - 1}" in cache
    assert f"token-{inserts - capacity}" not in cache  # the hot entry holds one of the places
    assert cache.stats.evictions == inserts + 1 - capacity


def test_stats_count_hits_misses_and_evictions() -> None:
    cache: TokenCache[Entry] = TokenCache(2)
    for token in ("a", "b", "c"):
        cache.put(token, Entry())
    cache.get("c")
    cache.get("c")
    cache.get("a")
    cache.evict("b")
    cache.evict("b")  # already gone: not counted twice
    assert cache.stats == CacheStats(capacity=2, entries=1, hits=2, misses=1, evictions=2)


def test_forgetting_keys_drops_exactly_their_entries() -> None:
    cache: TokenCache[Entry] = TokenCache(10)
    for token, key in (("a1", KEY_A), ("b1", KEY_B), ("a2", KEY_A), ("b2", KEY_B)):
        cache.put(token, Entry(key))
    cache.forget_keys({KEY_A})
    assert [token in cache for token in ("a1", "a2", "b1", "b2")] == [False, False, True, True]
    assert cache.stats.evictions == 2
    cache.forget_keys({KeyId(kid="c", alg="ES384", fingerprint="cc")})
    assert len(cache) == 2


def test_capacity_zero_remembers_nothing() -> None:
    cache: TokenCache[Entry] = TokenCache(0)
    cache.put("a", Entry())
    assert not cache.enabled
    assert "a" not in cache
    assert len(cache) == 0


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        TokenCache(-1)


def test_clear_forgets_every_entry_without_counting_evictions() -> None:
    cache: TokenCache[Entry] = TokenCache(10)
    cache.put("a", Entry())
    cache.put("b", Entry())
    cache.clear()
    assert len(cache) == 0
    assert cache.stats.evictions == 0


class Verification:
    """An async verify function for `share`: counts its runs, and finishes (or fails) when released."""

    def __init__(self, outcome: Entry | Exception) -> None:
        self.outcome = outcome
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Entry:
        self.runs += 1
        await self.release.wait()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_concurrent_callers_share_one_verification_and_its_result_is_remembered() -> None:
    cache: TokenCache[Entry] = TokenCache(10)
    verify = Verification(Entry())
    callers = [asyncio.create_task(cache.share("t", verify)) for _ in range(100)]
    await settle()
    verify.release.set()
    results = await asyncio.gather(*callers)
    assert all(result is verify.outcome for result in results)
    assert verify.runs == 1
    assert cache.get("t") is verify.outcome


async def test_a_failure_reaches_every_caller_and_is_not_remembered() -> None:
    cache: TokenCache[Entry] = TokenCache(10)
    verify = Verification(InvalidToken("bad_signature"))
    callers = [asyncio.create_task(cache.share("t", verify)) for _ in range(20)]
    await settle()
    verify.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(result is verify.outcome for result in results)
    assert verify.runs == 1
    assert "t" not in cache
    with pytest.raises(InvalidToken):
        await cache.share("t", verify)  # no negative caching: the next caller verifies again
    assert verify.runs == 2


async def test_a_cancelled_caller_does_not_cancel_the_verification_others_wait_on() -> None:
    cache: TokenCache[Entry] = TokenCache(10)
    verify = Verification(Entry())
    impatient, patient = (asyncio.create_task(cache.share("t", verify)) for _ in range(2))
    await settle()
    impatient.cancel()
    await settle()
    verify.release.set()
    assert await patient is verify.outcome
    assert impatient.cancelled()
    assert "t" in cache


async def test_a_failure_nobody_waits_for_any_more_is_not_reported_as_unretrieved() -> None:
    reports: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reports.append(context))
    cache: TokenCache[Entry] = TokenCache(10)
    verify = Verification(InvalidToken("bad_signature"))
    caller = asyncio.create_task(cache.share("t", verify))
    await settle()
    caller.cancel()
    await settle()
    del caller  # its frame still refers to the verification task: drop it, so the task can be collected
    verify.release.set()
    await settle()
    gc.collect()
    assert reports == []
    assert "t" not in cache


@pytest.mark.parametrize(
    "invalidate",
    [
        pytest.param(lambda cache: cache.forget_keys({KEY_B}), id="keys-removed"),
        pytest.param(lambda cache: cache.clear(), id="cleared"),
    ],
)
async def test_a_verification_that_overlapped_an_invalidation_is_returned_but_not_remembered(
    invalidate: Callable[[TokenCache[Entry]], None],
) -> None:
    """It may have used a key that was removed meanwhile; the caller gets it, the next caller verifies again."""
    cache: TokenCache[Entry] = TokenCache(10)
    verify = Verification(Entry())
    caller = asyncio.create_task(cache.share("t", verify))
    await settle()
    invalidate(cache)
    verify.release.set()
    assert await caller is verify.outcome
    assert "t" not in cache


# --- through the verifier, with real tokens -------------------------------------------------------------------


class CountingKeys:
    """The real key cache, with its lookups counted."""

    def __init__(self, keys: JwksCache) -> None:
        self.keys = keys
        self.lookups = 0

    async def key_for(self, kid: str | None, alg: str) -> PublishedKey:
        self.lookups += 1
        return await self.keys.key_for(kid, alg)


@dataclass
class Rig:
    issuer: FakeIssuer
    clock: FakeClock
    keys: JwksCache
    lookups: CountingKeys
    cache: TokenCache[VerifiedToken]
    verifier: TokenVerifier

    def uncached(self) -> TokenVerifier:
        """A verifier over the same keys and clock that remembers nothing: what a full verification says."""
        return TokenVerifier(
            issuer=ISSUER, algorithms=ASYMMETRIC_ALGORITHMS, leeway_seconds=LEEWAY, keys=self.keys, clock=self.clock
        )


def rig(*published: Json, capacity: int = 64) -> Rig:
    issuer, clock = FakeIssuer(*(published or (EC_A.jwk(),))), FakeClock(NOW)
    cache: TokenCache[VerifiedToken] = TokenCache(capacity)
    keys = make_cache(issuer, clock=clock, on_keys_removed=cache.forget_keys)
    lookups = CountingKeys(keys)
    verifier = TokenVerifier(
        issuer=ISSUER,
        algorithms=ASYMMETRIC_ALGORITHMS,
        leeway_seconds=LEEWAY,
        keys=lookups,
        clock=clock,
        cache=cache,
    )
    return Rig(issuer=issuer, clock=clock, keys=keys, lookups=lookups, cache=cache, verifier=verifier)


class SignatureChecks:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> SignatureChecks:
    """Counts ECDSA signature checks; each one still runs for real."""
    checks = SignatureChecks()
    real_verify = ECAlgorithm.verify

    def counted(self: ECAlgorithm, msg: bytes, key: Any, sig: bytes) -> bool:
        checks.count += 1
        return real_verify(self, msg, key, sig)

    monkeypatch.setattr(ECAlgorithm, "verify", counted)
    return checks


def tampered(token: str) -> str:
    signature = bytearray(parts(token)[2])
    signature[10] ^= 0x01
    return with_signature(token, bytes(signature))


async def refused(verify: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        await verify
    return caught.value


def untouchable(*_: object) -> None:
    raise AssertionError("a cache hit must not parse the token")


async def test_a_repeat_token_is_answered_from_memory_with_the_very_same_claims(
    signatures: SignatureChecks, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rig()
    token = EC_A.token(logto_claims())
    first = await r.verifier.verify(token)
    assert (signatures.count, r.lookups.lookups) == (1, 1)
    monkeypatch.setattr(scopegate.tokens, "_parse", untouchable)  # no base64, no JSON from here on
    assert r.verifier.cached(token) is first
    assert await r.verifier.verify(token) is first
    assert (signatures.count, r.lookups.lookups, r.issuer.fetches) == (1, 1, 1)
    assert r.verifier.cache_stats == CacheStats(capacity=64, entries=1, hits=2, misses=1, evictions=0)


async def test_a_token_never_seen_is_a_miss_for_the_fast_path() -> None:
    r = rig()
    assert r.verifier.cached(EC_A.token(logto_claims())) is None
    assert r.lookups.lookups == 0


async def test_a_hit_is_served_up_to_exp_plus_leeway_and_not_a_moment_longer() -> None:
    r = rig()
    token = EC_A.token(logto_claims(exp=NOW + 10))
    claims = await r.verifier.verify(token)
    r.clock.now = NOW + 10 + LEEWAY
    assert r.verifier.cached(token) is claims
    r.clock.now += 0.001
    assert (await refused(r.verifier.verify(token))).detail == "expired"
    assert token not in r.cache


@pytest.mark.parametrize(
    ("claims", "later", "detail"),
    [
        pytest.param(logto_claims(), 3600 + LEEWAY + 1, "expired", id="an-hour-later"),
        pytest.param(logto_claims(exp=NOW + 10), 10 + LEEWAY + 0.5, "expired", id="short-lived-token"),
        pytest.param(logto_claims(nbf=NOW + LEEWAY - 1), -2, "not_yet_valid", id="nbf-after-the-clock-steps-back"),
        pytest.param(logto_claims(iat=NOW + LEEWAY - 1), -2, "not_yet_valid", id="iat-after-the-clock-steps-back"),
    ],
)
async def test_a_hit_failing_the_time_checks_is_refused_as_a_full_verification_would_and_evicted(
    claims: Json, later: float, detail: str
) -> None:
    r = rig()
    token = EC_A.token(claims)
    await r.verifier.verify(token)
    r.clock.now += later
    with pytest.raises(InvalidToken) as hit:
        r.verifier.cached(token)
    assert token not in r.cache
    full = await refused(r.uncached().verify(token))
    assert (hit.value.detail, hit.value.description, hit.value.status) == (full.detail, full.description, full.status)
    assert hit.value.detail == detail
    assert r.cache.stats.evictions == 1


async def test_capacity_zero_verifies_every_time(signatures: SignatureChecks) -> None:
    r = rig(capacity=0)
    token = EC_A.token(logto_claims())
    await r.verifier.verify(token)
    assert r.verifier.cached(token) is None
    await r.verifier.verify(token)
    await asyncio.gather(*(r.verifier.verify(token) for _ in range(5)))
    assert signatures.count == 7
    assert r.verifier.cache_stats == CacheStats(capacity=0, entries=0, hits=0, misses=0, evictions=0)


async def test_no_cache_given_means_no_caching(signatures: SignatureChecks) -> None:
    r = rig()
    verifier = r.uncached()
    token = EC_A.token(logto_claims())
    await verifier.verify(token)
    await verifier.verify(token)
    assert signatures.count == 2
    assert verifier.cached(token) is None


async def test_the_verifier_keeps_its_cache_within_capacity_and_a_hot_token_stays(signatures: SignatureChecks) -> None:
    r = rig(capacity=4)
    hot = EC_A.token(logto_claims(jti="hot"))
    await r.verifier.verify(hot)
    others = [EC_A.token(logto_claims(jti=f"jti-{index}")) for index in range(30)]
    for token in others:
        await r.verifier.verify(token)
        assert len(r.cache) <= 4
        assert r.verifier.cached(hot) is not None
    assert signatures.count == 1 + len(others)
    assert [token in r.cache for token in others[-4:]] == [False, True, True, True]


async def test_retiring_a_key_flushes_exactly_the_tokens_it_verified(signatures: SignatureChecks) -> None:
    r = rig(EC_A.jwk())
    tokens_a = [EC_A.token(logto_claims(jti=f"a-{index}")) for index in range(3)]
    for token in tokens_a:
        await r.verifier.verify(token)
    r.issuer.keys = [EC_A.jwk(), EC_B.jwk()]  # rotation, step 1: the new key is published beside the old
    assert await r.keys.refresh()
    tokens_b = [EC_B.token(logto_claims(jti=f"b-{index}")) for index in range(2)]
    for token in tokens_b:
        await r.verifier.verify(token)
    assert all(token in r.cache for token in tokens_a + tokens_b)

    r.issuer.keys = [EC_B.jwk()]  # step 2: the old key is retired
    assert await r.keys.refresh()
    assert [token in r.cache for token in tokens_a + tokens_b] == [False] * 3 + [True] * 2
    assert r.cache.stats.evictions == 3
    assert r.verifier.cached(tokens_a[0]) is None
    assert (await refused(r.verifier.verify(tokens_a[0]))).detail == "unknown_kid"
    checks = signatures.count
    assert r.verifier.cached(tokens_b[0]) is not None
    assert signatures.count == checks


async def test_a_refresh_that_publishes_the_same_keys_flushes_nothing(signatures: SignatureChecks) -> None:
    r = rig(EC_A.jwk(), EC_B.jwk())
    tokens = [EC_A.token(logto_claims()), EC_B.token(logto_claims())]
    for token in tokens:
        await r.verifier.verify(token)
    for _ in range(3):
        assert await r.keys.refresh()  # every refresh re-parses every key into new objects
    assert all(token in r.cache for token in tokens)
    assert r.cache.stats.evictions == 0
    for token in tokens:
        await r.verifier.verify(token)
    assert signatures.count == 2


async def test_a_kid_rebound_to_another_key_flushes_the_tokens_of_the_old_key() -> None:
    r = rig(EC_A.jwk())
    token = EC_A.token(logto_claims())
    await r.verifier.verify(token)
    r.issuer.keys = [EC_B.jwk(kid=EC_A.kid)]
    assert await r.keys.refresh()
    assert token not in r.cache
    assert (await refused(r.verifier.verify(token))).detail == "bad_signature"


async def test_concurrent_verifications_of_a_new_token_share_one_signature_check(signatures: SignatureChecks) -> None:
    r = rig()
    r.issuer.gate = asyncio.Event()  # no keys yet: every caller arrives while the first verification waits on them
    token = EC_A.token(logto_claims())
    callers = [asyncio.create_task(r.verifier.verify(token)) for _ in range(50)]
    await settle()
    r.issuer.gate.set()
    results = await asyncio.gather(*callers)
    assert all(claims is results[0] for claims in results)
    assert (signatures.count, r.lookups.lookups, r.issuer.fetches) == (1, 1, 1)
    assert token in r.cache


async def test_a_failed_shared_verification_fails_every_caller_and_is_not_remembered(
    signatures: SignatureChecks,
) -> None:
    r = rig()
    r.issuer.gate = asyncio.Event()
    token = tampered(EC_A.token(logto_claims()))
    callers = [asyncio.create_task(r.verifier.verify(token)) for _ in range(20)]
    await settle()
    r.issuer.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert {result.detail for result in results if isinstance(result, InvalidToken)} == {"bad_signature"}
    assert len(results) == 20
    assert signatures.count == 1
    assert len(r.cache) == 0
    assert (await refused(r.verifier.verify(token))).detail == "bad_signature"
    assert signatures.count == 2


async def test_no_signing_keys_fails_every_waiting_caller() -> None:
    r = rig()
    r.issuer.up = False
    r.issuer.gate = asyncio.Event()
    token = EC_A.token(logto_claims())
    callers = [asyncio.create_task(r.verifier.verify(token)) for _ in range(10)]
    await settle()
    r.issuer.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, JwksUnavailable) for result in results)
    assert (r.issuer.fetches, len(r.cache)) == (1, 0)


async def test_a_cancelled_request_does_not_cancel_the_verification_another_waits_on() -> None:
    r = rig()
    r.issuer.gate = asyncio.Event()
    token = EC_A.token(logto_claims())
    impatient, patient = (asyncio.create_task(r.verifier.verify(token)) for _ in range(2))
    await settle()
    impatient.cancel()
    await settle()
    r.issuer.gate.set()
    assert (await patient).subject == "user-123"
    assert impatient.cancelled()
    assert token in r.cache


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        pytest.param(EC_A.token(logto_claims(exp=NOW - LEEWAY - 1)), "expired", id="expired"),
        pytest.param(EC_A.token(logto_claims(nbf=NOW + LEEWAY + 1)), "not_yet_valid", id="not-yet-valid"),
        pytest.param(tampered(EC_A.token(logto_claims())), "bad_signature", id="bad-signature"),
        pytest.param(EC_A.token(logto_claims(iss="https://evil.example/oidc")), "wrong_issuer", id="wrong-issuer"),
        pytest.param(EC_A.token(logto_claims(), kid="no-such-kid"), "unknown_kid", id="unknown-kid"),
        pytest.param("opaque-token", "not_a_jwt", id="opaque"),
    ],
)
async def test_a_token_that_fails_verification_is_never_remembered(token: str, detail: str) -> None:
    r = rig()
    for _ in range(2):
        assert (await refused(r.verifier.verify(token))).detail == detail
        assert r.verifier.cached(token) is None
    assert len(r.cache) == 0


async def test_two_spellings_of_the_same_claims_are_separate_entries(signatures: SignatureChecks) -> None:
    r = rig()
    first, second = EC_A.token(logto_claims()), EC_A.token(logto_claims())
    assert first != second  # ECDSA signatures are randomized
    assert parts(first)[:2] == parts(second)[:2]
    claims_first, claims_second = await r.verifier.verify(first), await r.verifier.verify(second)
    assert claims_first == claims_second
    assert claims_first is not claims_second
    assert (len(r.cache), signatures.count) == (2, 2)
    assert r.verifier.cached(second) is claims_second


async def test_clear_cache_makes_the_next_request_verify_again(signatures: SignatureChecks) -> None:
    r = rig()
    token = EC_A.token(logto_claims())
    await r.verifier.verify(token)
    r.verifier.clear_cache()
    assert r.verifier.cached(token) is None
    await r.verifier.verify(token)
    assert signatures.count == 2


# --- build_verifier -------------------------------------------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 whose keys a test changes."""

    def __init__(self) -> None:
        self.keys: list[Json] = [EC_A.jwk()]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        return app

    async def _jwks(self, _: web.Request) -> web.Response:
        return web.json_response(jwks(*self.keys))


@pytest.fixture
async def jwks_server(aiohttp_server: AiohttpServer) -> tuple[JwksServer, str]:
    fake = JwksServer()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("/jwks"))


def auth_config(jwks_uri: str, extra: str = "") -> AuthConfig:
    text = f"""
upstream: http://127.0.0.1:3000
auth:
  issuer: {ISSUER}
  jwks_uri: {jwks_uri}
{extra}
routes:
  - name: r
    match: {{ path: /r }}
    resource: https://api.example.com
"""
    return parse_config(text).auth


async def test_build_verifier_sizes_the_cache_from_the_config_and_wires_key_removal(
    jwks_server: tuple[JwksServer, str],
) -> None:
    server, jwks_uri = jwks_server
    auth = auth_config(jwks_uri, "  token_cache_entries: 2")
    token = EC_A.token(logto_claims(now=time.time()))
    async with aiohttp.ClientSession() as session:
        keys, verifier = build_verifier(auth, session)
        claims = await verifier.verify(token)
        assert verifier.cached(token) is claims
        assert verifier.cache_stats.capacity == 2
        server.keys = [EC_B.jwk()]
        assert await keys.refresh()
        assert verifier.cached(token) is None
        assert verifier.cache_stats.entries == 0


async def test_build_verifier_with_zero_entries_caches_nothing(jwks_server: tuple[JwksServer, str]) -> None:
    _, jwks_uri = jwks_server
    token = EC_A.token(logto_claims(now=time.time()))
    async with aiohttp.ClientSession() as session:
        _, verifier = build_verifier(auth_config(jwks_uri, "  token_cache_entries: 0"), session)
        await verifier.verify(token)
        assert verifier.cached(token) is None
        assert verifier.cache_stats.entries == 0
