"""The key cache serves rotation without floods, keeps its keys through outages, and fetches over real HTTP safely.

Cache behaviour is driven by a counting in-memory issuer and a fake clock; the HTTP fetcher talks to a small aiohttp
issuer on 127.0.0.1 whose behaviour each test controls. Nothing sleeps for real beyond a few tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from scopegate.errors import InvalidToken, JwksUnavailable
from scopegate.jwks import MAX_KEYS, JwksCache
from scopegate.tokens import TokenVerifier

from jwkstools import COOLDOWN, FakeClock, FakeIssuer, Refreshes, Removals, Sleeps, make_cache, run_until
from tokenlib import EC_A, EC_B, EC_P256, ED, ISSUER, NOW, RSA, Json, logto_claims


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


# --- removed keys ---------------------------------------------------------------------------------------------

A_WITHOUT_KID = {name: value for name, value in EC_A.jwk().items() if name != "kid"}
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


@pytest.mark.parametrize(
    ("before", "after", "removed"),
    [
        pytest.param([EC_A.jwk()], [EC_A.jwk()], set(), id="same-keys"),
        pytest.param([EC_A.jwk()], [EC_A.jwk(), EC_B.jwk()], set(), id="new-key-published-beside-the-old"),
        pytest.param([EC_A.jwk(), EC_B.jwk()], [EC_B.jwk()], {(EC_A.kid, "ES384")}, id="old-key-retired"),
        pytest.param([EC_A.jwk()], [EC_B.jwk(kid=EC_A.kid)], {(EC_A.kid, "ES384")}, id="kid-rebound-to-another-key"),
        pytest.param([A_WITHOUT_KID, EC_B.jwk()], [EC_B.jwk()], {(None, "ES384")}, id="key-without-kid-retired"),
        pytest.param(
            [RSA.jwk(with_alg=False)],
            [RSA.jwk(alg="RS256")],
            {(RSA.kid, alg) for alg in RSA_ALGORITHMS if alg != "RS256"},
            id="rsa-key-pinned-to-one-alg",
        ),
    ],
)
async def test_a_refresh_reports_exactly_the_keys_it_no_longer_publishes(
    before: list[Json], after: list[Json], removed: set[tuple[str | None, str]]
) -> None:
    issuer, removals = FakeIssuer(*before), Removals()
    cache = make_cache(issuer, on_keys_removed=removals)
    assert await cache.refresh()
    issuer.keys = after
    assert await cache.refresh()
    reported = {(key.kid, key.alg) for key in removals[0]} if removals else set()
    assert reported == removed
    assert len(removals) == (1 if removed else 0)  # nothing removed: not called at all


async def test_key_ids_survive_the_reparse_of_every_refresh() -> None:
    cache = make_cache(FakeIssuer(EC_A.jwk()))
    assert await cache.refresh()
    first = await cache.key_for(EC_A.kid, "ES384")
    assert await cache.refresh()
    second = await cache.key_for(EC_A.kid, "ES384")
    assert second is not first
    assert second.identity == first.identity


async def test_a_rebound_kid_is_told_apart_by_its_key_material() -> None:
    issuer, removals = FakeIssuer(EC_A.jwk()), Removals()
    cache = make_cache(issuer, on_keys_removed=removals)
    assert await cache.refresh()
    old = (await cache.key_for(EC_A.kid, "ES384")).identity
    issuer.keys = [EC_B.jwk(kid=EC_A.kid)]
    assert await cache.refresh()
    new = (await cache.key_for(EC_A.kid, "ES384")).identity
    assert (new.kid, new.alg) == (old.kid, old.alg)
    assert new.fingerprint != old.fingerprint
    assert removals == [frozenset({old})]


def take_down(issuer: FakeIssuer) -> None:
    issuer.up = False


def serve_only_unusable_keys(issuer: FakeIssuer) -> None:
    issuer.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}


@pytest.mark.parametrize(
    "break_issuer",
    [pytest.param(take_down, id="issuer-down"), pytest.param(serve_only_unusable_keys, id="no-usable-keys")],
)
async def test_a_failed_refresh_removes_no_key(break_issuer: Callable[[FakeIssuer], None]) -> None:
    """Stale-on-error: the old keys keep serving, and so do the tokens they verified."""
    issuer, removals = FakeIssuer(EC_A.jwk()), Removals()
    cache = make_cache(issuer, on_keys_removed=removals)
    assert await cache.refresh()
    break_issuer(issuer)
    assert await cache.refresh() is False
    assert removals == []


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
