"""The issuer's signing keys, cached in memory and refreshed in the background: verifying never waits on HTTP.

Logto serves its JWKS with `Cache-Control: no-cache` and rotates keys by publishing the new key next to the old one,
so the cache does its own timing:

- a background task (`run`) loads the keys at start (retrying with backoff) and refreshes them periodically;
- every fetch is single-flight: concurrent callers share one request;
- a token naming an unknown `kid` triggers at most one refetch per cooldown, so a flood of made-up kids cannot turn
  into a flood of JWKS requests;
- a failed fetch keeps the old keys (stale-on-error): an issuer outage must not turn every request into a 401;
- a new key set that no longer publishes a key is reported (`on_keys_removed`), so tokens verified with that key stop
  being served from the verified-token cache.

Keys are parsed once per fetch into `PublishedKey` objects (a `jwt.PyJWK` plus a `KeyId`) indexed by (kid, alg); a
JWK that cannot be used safely is skipped with a warning rather than failing the whole set. Only the `kid` of a key is
ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scopegate.config import require_asymmetric
from scopegate.errors import InvalidToken, JwksFetchError, JwksUnavailable

FetchJwks = Callable[[], Awaitable[Mapping[str, Any]]]

MAX_KEYS = 100
_FIRST_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0

# Which algorithms each key type can serve (RFC 7518 section 3.1, RFC 8037 section 3.1).
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})

_log = structlog.get_logger("scopegate.jwks")


# --- the key set ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyId:
    """Which published key verified a token, comparable across refreshes (every refresh re-parses every key).

    The fingerprint is part of it because a `kid` alone can be re-bound to other key material.
    """

    kid: str | None
    alg: str
    fingerprint: str  # SHA-256 of the public key's DER SubjectPublicKeyInfo, hex


class PublishedKey(jwt.PyJWK):
    """A `jwt.PyJWK` serving one algorithm, with its `KeyId` computed once, when the JWKS is parsed."""

    def __init__(self, jwk: dict[str, Any], algorithm: str) -> None:
        super().__init__(jwk, algorithm=algorithm)
        spki = self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.identity = KeyId(kid=self.key_id, alg=algorithm, fingerprint=hashlib.sha256(spki).hexdigest())


KeysRemoved = Callable[[frozenset[KeyId]], None]


@dataclass(frozen=True, slots=True)
class _KeySet:
    """One JWKS, parsed; replaced as a whole, so a lookup never sees half of an old and half of a new set."""

    by_kid: Mapping[str, Mapping[str, PublishedKey]]  # kid -> alg -> key
    by_alg: Mapping[str, tuple[PublishedKey, ...]]  # alg -> every key serving it, for tokens without a kid
    count: int

    @property
    def identities(self) -> frozenset[KeyId]:
        return frozenset(key.identity for keys in self.by_alg.values() for key in keys)

    def find(self, kid: str | None, alg: str) -> PublishedKey | None:
        """The key, None when the kid is unknown (a refetch may help), or InvalidToken when no refetch can help."""
        if kid is None:
            candidates = self.by_alg.get(alg, ())
            if len(candidates) > 1:
                raise InvalidToken("unknown_kid", "the access token names no key id and the issuer has several keys")
            return candidates[0] if candidates else None
        keys = self.by_kid.get(kid)
        if keys is None:
            return None
        if alg not in keys:
            raise InvalidToken("alg_key_mismatch", "the access token algorithm does not fit its signing key")
        return keys[alg]


_NO_KEYS = _KeySet(by_kid={}, by_alg={}, count=0)


class _Unusable(Exception):
    """A JWK this cache will not use; `why` is a short fixed token for the log."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _parse_jwks(document: Mapping[str, Any], algorithms: frozenset[str]) -> _KeySet:
    """The usable keys of a JWKS document; raises JwksFetchError when it is not a JWKS or has no usable key."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JwksFetchError('the JWKS document has no "keys" array')
    if len(entries) > MAX_KEYS:
        _log.warning("jwks_truncated", keys=len(entries), kept=MAX_KEYS)
    by_kid: dict[str, dict[str, PublishedKey]] = {}
    by_alg: dict[str, list[PublishedKey]] = {}
    count = 0
    for entry in entries[:MAX_KEYS]:
        kid, keys = _usable_key(entry, algorithms, by_kid)
        if not keys:
            continue
        count += 1
        if kid is not None:
            by_kid[kid] = keys
        for alg, key in keys.items():
            by_alg.setdefault(alg, []).append(key)
    if count == 0:
        raise JwksFetchError(f"the JWKS has no key usable with the allowed algorithms {', '.join(sorted(algorithms))}")
    return _KeySet(by_kid=by_kid, by_alg={alg: tuple(keys) for alg, keys in by_alg.items()}, count=count)


def _usable_key(
    entry: object, algorithms: frozenset[str], seen: Mapping[str, object]
) -> tuple[str | None, dict[str, PublishedKey]]:
    """(kid, alg -> key) for one JWK; an unusable JWK is logged and yields no keys."""
    kid = entry.get("kid") if isinstance(entry, dict) else None
    try:
        if kid is not None and not isinstance(kid, str):
            raise _Unusable("kid_not_a_string")
        if kid in seen:
            raise _Unusable("duplicate_kid")  # which of the two would the issuer sign with? use the first
        return kid, _keys_for(entry, algorithms)
    except _Unusable as exc:
        _log.warning("jwk_skipped", kid=kid[:100] if isinstance(kid, str) else None, why=exc.why)
        return None, {}


def judge_key(entry: object, algorithms: frozenset[str]) -> tuple[frozenset[str], str | None]:
    """What the cache makes of one JWK: the allowed algorithms it verifies, or why it skips it (`jwk_skipped`'s `why`).

    For `scopegate check --online`, which reports every key; a kid used twice is for the caller to spot.
    """
    try:
        return frozenset(_keys_for(entry, algorithms)), None
    except _Unusable as exc:
        return frozenset(), exc.why


def _keys_for(entry: object, algorithms: frozenset[str]) -> dict[str, PublishedKey]:
    if not isinstance(entry, dict):
        raise _Unusable("not_an_object")
    _check_purpose(entry)
    served = _algorithms_of(entry) & algorithms
    if not served:
        raise _Unusable("no_allowed_algorithm")
    try:
        keys = {alg: PublishedKey(dict(entry), algorithm=alg) for alg in sorted(served)}
    except Exception as exc:  # pyjwt and cryptography raise many types for a broken JWK
        raise _Unusable("unparseable") from exc
    if any(key.Algorithm.check_key_length(key.key) for key in keys.values()):
        raise _Unusable("key_too_short")  # RSA below 2048 bits
    return keys


def _check_purpose(entry: Mapping[str, Any]) -> None:
    """A key published for encryption, or with private parts, is not one to verify signatures with."""
    if entry.get("kty") == "oct":
        raise _Unusable("symmetric")  # a shared secret in a public JWKS: never
    if "use" in entry and entry["use"] != "sig":
        raise _Unusable("not_for_signatures")
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _Unusable("not_for_verification")
    if "d" in entry:
        raise _Unusable("private_key")  # the issuer has published its private key: trust none of its tokens


def _algorithms_of(entry: Mapping[str, Any]) -> frozenset[str]:
    """The JWK's `alg` when it names one its key type supports; else every algorithm the key type can serve."""
    kty, crv = entry.get("kty"), entry.get("crv")
    if kty == "EC" and isinstance(crv, str) and crv in _EC_ALGORITHMS:
        possible = frozenset({_EC_ALGORITHMS[crv]})
    elif kty == "RSA":
        possible = _RSA_ALGORITHMS
    elif kty == "OKP" and isinstance(crv, str) and crv in _OKP_CURVES:
        possible = frozenset({"EdDSA"})
    else:
        raise _Unusable("unsupported_key_type")
    alg = entry.get("alg")
    if alg is None:
        return possible  # Logto's RSA keys carry no `alg`
    if not isinstance(alg, str) or alg not in possible:
        raise _Unusable("alg_does_not_fit_key")
    return frozenset({alg})


# --- the cache ------------------------------------------------------------------------------------------------


class JwksCache:
    """The issuer's keys for `TokenVerifier` (a `KeySource`): refreshed in the background, refetched on rotation.

    `on_refresh(success, key_count)` hears of every fetch; `on_keys_removed(ids)` of every swap that drops keys. It
    is called in the same step as the swap, so no request can be answered on a removed key's word in between.
    """

    def __init__(
        self,
        *,
        fetch: FetchJwks,
        algorithms: frozenset[str],
        refresh_seconds: float,
        refetch_cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_refresh: Callable[[bool, int], None] | None = None,
        on_keys_removed: KeysRemoved | None = None,
    ) -> None:
        require_asymmetric(algorithms)
        self._fetch = fetch
        self._algorithms = algorithms
        self._refresh_seconds = refresh_seconds
        self._cooldown = refetch_cooldown_seconds
        self._clock = clock
        self._sleep = sleep
        self._on_refresh = on_refresh
        self._on_keys_removed = on_keys_removed
        self._keys = _NO_KEYS
        self._in_flight: asyncio.Task[bool] | None = None
        self._last_fetch_started: float | None = None

    @property
    def has_keys(self) -> bool:
        return self._keys.count > 0

    @property
    def key_count(self) -> int:
        return self._keys.count

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already running; False (old keys kept) when it fails."""
        if self._in_flight is None or self._in_flight.done():
            self._last_fetch_started = self._clock()
            self._in_flight = asyncio.create_task(self._fetch_and_swap(), name="jwks-fetch")
        # shield: a caller that gives up (a cancelled request) must not cancel the fetch others are waiting on
        return await asyncio.shield(self._in_flight)

    def key_at_hand(self, kid: str | None, alg: str) -> PublishedKey | None:
        """The key for (kid, alg) among the keys cached now; None when the kid is unknown (a refetch may help)."""
        if alg not in self._algorithms:
            raise InvalidToken(
                "alg_not_allowed", "the access token is signed with an algorithm this gateway does not accept"
            )
        return self._keys.find(kid, alg)

    async def key_for(self, kid: str | None, alg: str) -> PublishedKey:
        """The key for (kid, alg); an unknown kid triggers at most one refetch per cooldown."""
        key = self.key_at_hand(kid, alg)
        if key is None:
            await self._refetch_after_miss()
            if not self.has_keys:
                raise JwksUnavailable("no_signing_keys")
            key = self._keys.find(kid, alg)
        if key is None:
            raise InvalidToken("unknown_kid", "the access token is signed with a key the issuer does not publish")
        return key

    async def run(self) -> None:
        """Load the keys (retrying with backoff), then refresh them every `refresh_seconds`, until cancelled."""
        cap = min(_MAX_BACKOFF_SECONDS, self._refresh_seconds)
        backoff = min(_FIRST_BACKOFF_SECONDS, cap)
        while True:
            if await self.refresh():
                delay, backoff = self._refresh_seconds, min(_FIRST_BACKOFF_SECONDS, cap)
            else:
                delay, backoff = backoff, min(backoff * 2, cap)
            await self._sleep(delay)

    async def _refetch_after_miss(self) -> None:
        """Join a fetch in flight, or start one unless the last one started less than a cooldown ago."""
        last = self._last_fetch_started
        if self._in_flight is None and last is not None and self._clock() - last < self._cooldown:
            return
        await self.refresh()

    async def _fetch_and_swap(self) -> bool:
        try:
            success = await self._load()
            if self._on_refresh is not None:
                self._on_refresh(success, self.key_count)
            return success
        finally:
            self._in_flight = None

    async def _load(self) -> bool:
        try:
            keys = _parse_jwks(await self._fetch(), self._algorithms)
        except Exception as exc:  # whatever the fetcher raises, the old keys keep serving
            # A fetcher that knows its URL (HttpJwksFetcher) names it: the error of a JWKS that is no key set has none.
            where = getattr(self._fetch, "url", None)
            url = {"url": where} if isinstance(where, str) else {}
            _log.warning("jwks_refresh_failed", error=str(exc) or type(exc).__name__, keys=self.key_count, **url)
            return False
        self._swap(keys)
        _log.info("jwks_refreshed", keys=keys.count)
        return True

    def _swap(self, keys: _KeySet) -> None:
        removed = self._keys.identities - keys.identities
        self._keys = keys
        if removed and self._on_keys_removed is not None:
            self._on_keys_removed(removed)
