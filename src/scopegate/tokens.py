"""Bearer token -> verified `Claims`, strictly, because the upstream may parse the same token differently.

scopegate authorizes a request on its reading of the token and then forwards the very same bytes. Anything a lenient
parser would "fix" (padding, duplicate JSON members, NaN, an `exp` given as a string) is a place where the upstream's
reading could differ from ours, so it is refused here instead of being interpreted. The checks run in a fixed order —
syntax, header, key, signature, claims — and every failure is an `InvalidToken` whose `detail` comes from a closed set
(it is the log's `detail` field) and whose `description` is a short sentence for the client: never a `"` or `\\`
(it travels inside a WWW-Authenticate quoted string) and never any token content.

pyjwt parses keys and checks signatures; `jwt.decode` is deliberately not used, because its claim checks would fold
several distinct failures into one exception and accept types this module refuses.

A successful verification is remembered in a `TokenCache` (tokencache.py) with what the time checks need and the key
that verified it. A hit skips everything but the time checks, which are the very function a full verification runs,
so a remembered token is refused exactly when, and exactly as, re-verifying it would be.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, NoReturn, Protocol

from scopegate.config import FORBIDDEN_ALGORITHMS, require_asymmetric
from scopegate.errors import InvalidToken
from scopegate.jwks import KeyId, PublishedKey
from scopegate.tokencache import CacheStats, TokenCache

DEFAULT_MAX_TOKEN_BYTES = 16384

# RFC 9068 section 2.1 names `at+jwt`; Logto and others still send plain `JWT`.
_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt", "jwt"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# A \uD800-\uDFFF escape: the only way a JSON text that is valid UTF-8 can still smuggle in a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# The closed set of `InvalidToken.detail` values this module raises, with the client-facing description of each.
_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "oversized": "the access token is too large",
        "not_a_jwt": (
            "the access token is opaque, not a JWT; request a JWT access token for an API resource "
            "by passing the resource parameter (RFC 8707) to the token endpoint"
        ),
        "malformed": "the access token is not a well-formed JWT",
        "duplicate_member": "the access token repeats a JSON member name",
        "alg_not_allowed": "the access token is signed with an algorithm this gateway does not accept",
        "bad_typ": "the access token has an unexpected typ header",
        "unsupported_crit": "the access token requires JWS extensions this gateway does not support",
        "bad_signature": "the access token signature is invalid",
        "wrong_issuer": "the access token was issued by another issuer",
        "missing_exp": "the access token has no expiry time",
        "bad_claim_type": "the access token has a claim of the wrong type",
        "expired": "the access token has expired",
        "not_yet_valid": "the access token is not valid yet",
    }
)


def _reject(detail: str, description: str | None = None) -> NoReturn:
    raise InvalidToken(detail, description or _DESCRIPTIONS[detail])


def _bad_claim(name: str) -> NoReturn:
    _reject("bad_claim_type", f"the access token claim {name} has the wrong type")


@dataclass(frozen=True, slots=True)
class Claims:
    """What policy needs from a verified token; `raw` keeps every claim (read-only) for custom-claim conditions."""

    subject: str | None
    client_id: str | None
    audiences: tuple[str, ...]
    scope: str  # the granted scope string exactly as in the token ("" when absent)
    scopes: frozenset[str]
    organization_id: str | None
    expires_at: float
    raw: Mapping[str, Any]
    issuer: str | None = None  # `iss`; verified against the configured issuers unless the claims were given


class KeySource(Protocol):
    """Where verification gets its public keys (the JWKS cache in production)."""

    async def key_for(self, kid: str | None, alg: str) -> PublishedKey:
        """The key for `kid` usable with `alg`; raises `InvalidToken` (unknown_kid, alg_key_mismatch) or
        `JwksUnavailable`."""
        ...

    def key_at_hand(self, kid: str | None, alg: str) -> PublishedKey | None:
        """The key when it is known now, without fetching; None when only a fetch could find it (then `key_for`).
        Raises `InvalidToken` as `key_for` does where no fetch could help."""
        ...


@dataclass(frozen=True, slots=True)
class _Jws:
    """A token split and decoded once: everything later checks read comes from here."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedToken:
    """A token's verification as the cache keeps it: the claims, what the time checks need, the key that signed it."""

    claims: Claims
    not_before: float | None  # nbf
    issued_at: float | None  # iat
    key: KeyId
    leeway: float  # the issuer's, for the time checks on every hit of a cache several issuers may share


class TokenVerifier:
    """Verifies compact JWS access tokens (RFC 9068) against one issuer and an algorithm allow-list.

    With a `cache` (`TokenCache(capacity)`, whose `forget_keys` the key source calls when keys leave the JWKS), a
    token verified before is answered from memory; without one every call verifies in full.
    """

    __slots__ = ("_algorithms", "_cache", "_clock", "_headers", "_issuer", "_keys", "_leeway", "_max_token_bytes")

    def __init__(
        self,
        *,
        issuer: str,
        algorithms: frozenset[str],
        leeway_seconds: float,
        keys: KeySource,
        clock: Callable[[], float] = time.time,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        cache: TokenCache[VerifiedToken] | None = None,
    ) -> None:
        require_asymmetric(algorithms)
        self._issuer = issuer
        self._algorithms = algorithms
        self._leeway = leeway_seconds
        self._keys = keys
        self._clock = clock
        self._max_token_bytes = max_token_bytes
        self._cache: TokenCache[VerifiedToken] = cache if cache is not None else TokenCache(0)
        # Decoded JOSE headers by their base64url text: an issuer's tokens share a handful of headers (one per key).
        self._headers: dict[str, dict[str, Any]] = {}

    @property
    def cache_stats(self) -> CacheStats:
        return self._cache.stats

    def clear_cache(self) -> None:
        self._cache.clear()

    def cached(self, token: str) -> Claims | None:
        """Sync fast path: the claims of a token verified before (time checks re-applied; raises InvalidToken when
        they now fail), or None on a miss (or when caching is off)."""
        if not self._cache.enabled:
            return None
        entry = self._cache.get(token)
        if entry is None:
            return None
        try:
            _check_times(entry.claims.expires_at, entry.not_before, entry.issued_at, entry.leeway, self._clock())
        except InvalidToken:
            self._cache.evict(token)
            raise
        return entry.claims

    def verify_now(self, token: str) -> Claims | None:
        """A new token verified without waiting when its key is known (every check is CPU work, so nothing waits):
        its claims, now remembered; None when only a JWKS fetch could find its key (then `verify`).

        No task, no future: on the event loop nothing else runs meanwhile, so two requests with the same new token
        are verified once all the same (the second finds the first's entry).
        """
        jws = _parse(token, self._max_token_bytes, self._headers)
        alg, kid = _check_header(jws.header, self._algorithms)
        key = self._keys.key_at_hand(kid, alg)
        if key is None:
            return None
        verified = self._checked(jws, key)
        if self._cache.enabled:
            self._cache.put(token, verified)
        return verified.claims

    async def verify(self, token: str) -> Claims:
        """Full verification (consults the cache first; single-flight; caches success)."""
        claims = self.cached(token)
        if claims is not None:
            return claims
        if not self._cache.enabled:
            return (await self._verify(token)).claims
        return (await self._cache.share(token, partial(self._verify, token))).claims

    async def _verify(self, token: str) -> VerifiedToken:
        """Syntax, header, key, signature and registered claims, in that order."""
        jws = _parse(token, self._max_token_bytes, self._headers)
        alg, kid = _check_header(jws.header, self._algorithms)
        return self._checked(jws, await self._keys.key_for(kid, alg))

    def _checked(self, jws: _Jws, key: PublishedKey) -> VerifiedToken:
        """Signature, then the registered claims."""
        _check_signature(key, jws)
        exp, nbf, iat = _check_registered_claims(jws.payload, self._issuer, self._leeway, self._clock())
        return VerifiedToken(
            claims=_claims(jws.payload, exp), not_before=nbf, issued_at=iat, key=key.identity, leeway=self._leeway
        )

    @property
    def issuer(self) -> str:
        return self._issuer

    def issuer_of(self, token: str) -> str | None:
        """The `iss` a token names, read before anything is verified, to choose whose keys verify it."""
        issuer = _parse(token, self._max_token_bytes, self._headers).payload.get("iss")
        return issuer if isinstance(issuer, str) else None


def claims_from_payload(payload: Mapping[str, Any]) -> Claims:
    """`Claims` from a payload whose signature, issuer and times are taken on trust (`scopegate explain --claims`).

    Only the types are checked. A payload without `exp` gets `expires_at = inf`; `TokenVerifier` never lets one
    through.
    """
    _optional_numeric_date(payload, "nbf")
    _optional_numeric_date(payload, "iat")
    exp = _optional_numeric_date(payload, "exp")
    return _claims(dict(payload), math.inf if exp is None else exp)


def _claims(payload: dict[str, Any], expires_at: float) -> Claims:
    """`payload` must be a dict nobody else holds: `raw` is a read-only view of it, not a copy."""
    scope = _optional_string(payload, "scope") or ""
    _optional_string(payload, "jti")  # RFC 7519 section 4.1.7: a string; an upstream may read it as one
    return Claims(
        subject=_optional_string(payload, "sub"),
        client_id=_optional_string(payload, "client_id"),
        audiences=_audiences(payload),
        scope=scope,
        scopes=frozenset(item for item in scope.split(" ") if item),
        organization_id=_optional_string(payload, "organization_id"),
        expires_at=expires_at,
        raw=MappingProxyType(payload),
        issuer=payload.get("iss") if isinstance(payload.get("iss"), str) else None,
    )


# --- syntax ---------------------------------------------------------------------------------------------------


def _parse(token: str, max_bytes: int, headers: dict[str, dict[str, Any]]) -> _Jws:
    """Split the compact serialization and decode each part exactly once; `headers` remembers decoded headers."""
    if len(token) > max_bytes:  # only ASCII survives `_base64url`, so characters are bytes here
        _reject("oversized")
    parts = token.split(".")
    if len(parts) == 1:
        _reject("not_a_jwt")
    if len(parts) != 3:
        _reject("malformed")
    header_b64, payload_b64, signature_b64 = parts
    header = headers.get(header_b64)
    if header is None:
        header = _json_object(_base64url(header_b64))
        if len(headers) >= _HEADERS_KEPT:
            headers.clear()  # made-up headers are many; an issuer's real ones come back at once
        headers[header_b64] = header
    return _Jws(
        header=header,  # only read, never changed: one decoded header serves every token that carries it
        payload=_json_object(_base64url(payload_b64)),
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=_base64url(signature_b64),
    )


def _base64url(part: str) -> bytes:
    """Unpadded, canonical base64url only, so one token has exactly one spelling (RFC 7515 section 2)."""
    if len(part) % 4 == 1 or not _BASE64URL.fullmatch(part):
        _reject("malformed")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error:
        _reject("malformed")
    # Non-zero spare bits in the last character decode to the same bytes; refuse the second spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part.encode("ascii"):
        _reject("malformed")
    return raw


class _DuplicateMember(Exception):
    """A JSON object repeats a member name; parsers disagree on which value wins, so neither may."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _DuplicateMember
    return members


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"JSON has no {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constants)
_HEADERS_KEPT = 64


def _json_object(raw: bytes) -> dict[str, Any]:
    """A UTF-8 JSON object (RFC 7493 I-JSON rules): no duplicate members, no NaN/Infinity, no lone surrogates."""
    try:
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except _DuplicateMember:
        _reject("duplicate_member")
    except (ValueError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        _reject("malformed")
    if not isinstance(value, dict):
        _reject("malformed")
    return value


# --- header, key and signature --------------------------------------------------------------------------------


def _check_header(header: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, str | None]:
    """The algorithm and key id, once the header asks for nothing this gateway refuses or does not understand."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg in FORBIDDEN_ALGORITHMS or alg not in allowed:
        _reject("alg_not_allowed")
    typ = header.get("typ")
    if "typ" in header and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        _reject("bad_typ")
    if "crit" in header:  # RFC 7515 section 4.1.11: we understand no extensions, so any `crit` must fail
        _reject("unsupported_crit")
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        _reject("malformed")
    return alg, kid


def _check_signature(key: PublishedKey, jws: _Jws) -> None:
    try:
        valid = key.Algorithm.verify(jws.signing_input, key.key, jws.signature)
    except Exception:  # pyjwt and cryptography raise many types on hostile input; all mean "not verified"
        valid = False
    if not valid:
        _reject("bad_signature")


# --- claims ---------------------------------------------------------------------------------------------------


def _check_registered_claims(
    payload: Mapping[str, Any], issuer: str, leeway: float, now: float
) -> tuple[float, float | None, float | None]:
    """Issuer and validity window, checked only after the signature; returns (exp, nbf, iat)."""
    iss = payload.get("iss")
    if not isinstance(iss, str) or iss != issuer:
        _reject("wrong_issuer")
    if "exp" not in payload:
        _reject("missing_exp")
    exp = _numeric_date(payload["exp"], "exp")
    nbf, iat = _optional_numeric_date(payload, "nbf"), _optional_numeric_date(payload, "iat")
    _check_times(exp, nbf, iat, leeway, now)
    return exp, nbf, iat


def _check_times(exp: float, nbf: float | None, iat: float | None, leeway: float, now: float) -> None:
    """The validity window; also run on every cache hit, so a remembered token expires exactly like a fresh one."""
    if now > exp + leeway:
        _reject("expired")
    if (nbf is not None and now + leeway < nbf) or (iat is not None and iat > now + leeway):
        _reject("not_yet_valid")


def _optional_numeric_date(payload: Mapping[str, Any], name: str) -> float | None:
    return _numeric_date(payload[name], name) if name in payload else None


def _numeric_date(value: object, name: str) -> float:
    """A JSON number (not a boolean, not a string) that is finite as a float: 1e400 would never expire."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad_claim(name)
    try:
        number = float(value)
    except OverflowError:
        _bad_claim(name)
    if not math.isfinite(number):
        _bad_claim(name)
    return number


def _optional_string(payload: Mapping[str, Any], name: str) -> str | None:
    """None when absent; an explicit null is refused, since the upstream may not read it as absent."""
    if name not in payload:
        return None
    value = payload[name]
    if not isinstance(value, str):
        _bad_claim(name)
    return value


def _audiences(payload: Mapping[str, Any]) -> tuple[str, ...]:
    """RFC 7519 section 4.1.3: one string or an array of strings."""
    if "aud" not in payload:
        return ()
    value = payload["aud"]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    _bad_claim("aud")
