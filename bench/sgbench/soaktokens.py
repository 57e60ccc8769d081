"""The soak's keys and tokens: a key rotation's worth of signing keys, Logto-shaped tokens for every route, and
the malformed tokens an attacker would try.

Three keys, fresh for every run (generated with keys.py into the run's work directory, so each run rotates to a key
no earlier run ever used): `old` (ES384), the one the issuer publishes at the start; `new` (RS256), published
beside it mid-run and then alone; `rogue` (ES384), never published. Every profile is minted with both published
keys, a few distinct tokens each (so the verified-token cache both hits and misses), with `exp` an hour away,
except the `expiring` profile, whose `exp` falls inside the run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from . import keys
from .keys import SigningKey
from .layout import AUDIENCE, CLIENT_ID

ORG = "org-acme"
OTHER_ORG = "org-globex"
ORG_AUDIENCE = f"urn:logto:organization:{ORG}"
OTHER_ORG_AUDIENCE = f"urn:logto:organization:{OTHER_ORG}"
TOKENS_PER_PROFILE = 4
TOKEN_TTL_SECONDS = 3600

# What each profile's tokens claim besides iss, sub, client_id, iat, exp and jti.
PROFILES: Mapping[str, Mapping[str, Any]] = {
    "global-read": {"aud": AUDIENCE, "scope": "read:report"},
    "global-weak": {"aud": AUDIENCE, "scope": "read:other"},
    "global-project": {"aud": AUDIENCE, "scope": "read:project"},
    "global-with-org": {"aud": AUDIENCE, "scope": "read:report", "organization_id": ORG},
    "org-invite": {"aud": ORG_AUDIENCE, "scope": "invite:member"},
    "org-invite-other": {"aud": OTHER_ORG_AUDIENCE, "scope": "invite:member"},
    "org-no-scope": {"aud": ORG_AUDIENCE, "scope": "read:member"},
    "orgres-read": {"aud": AUDIENCE, "organization_id": ORG, "scope": "read:project"},
    "orgres-settings": {"aud": AUDIENCE, "organization_id": ORG, "scope": "manage:settings admin:project"},
    "orgres-other": {"aud": AUDIENCE, "organization_id": OTHER_ORG, "scope": "read:project"},
    "admin": {"aud": AUDIENCE, "scope": "manage:tenant", "roles": ["ops", "admin"], "email_verified": True},
    "admin-string-flag": {"aud": AUDIENCE, "scope": "manage:tenant", "roles": ["admin"], "email_verified": "true"},
    "admin-viewer": {"aud": AUDIENCE, "scope": "manage:tenant", "roles": ["viewer"], "email_verified": True},
    "beta": {"aud": AUDIENCE, "scope": "beta read:report"},
    "wrong-issuer": {"aud": AUDIENCE, "scope": "read:report"},  # minted with another `iss`
    "expired": {"aud": AUDIENCE, "scope": "read:report"},  # minted with `exp` ten minutes ago
    "expiring": {"aud": AUDIENCE, "scope": "read:report"},  # minted with `exp` inside the run
    "bad-typ": {"aud": AUDIENCE, "scope": "read:report"},  # minted with `typ: dpop+jwt`
}

# Malformed bearer values: built from a valid token of the key in use, or from nothing at all.
MALFORMED = (
    "bad-signature",
    "alg-none",
    "hs256-public-key",
    "unknown-kid",
    "garbage-parts",
    "not-b64token",
    "opaque",
    "oversized",
)


@dataclass(frozen=True)
class KeyRing:
    old: SigningKey
    new: SigningKey
    rogue: SigningKey

    def published(self, label: str) -> SigningKey:
        return self.old if label == "old" else self.new


def make_keys(directory: Path) -> KeyRing:
    """Three fresh keys under `directory` (keys.py caches a key per algorithm and directory)."""
    return KeyRing(
        old=keys.load_or_create(directory / "old", ("ES384",))["ES384"],
        new=keys.load_or_create(directory / "new", ("RS256",))["RS256"],
        rogue=keys.load_or_create(directory / "rogue", ("ES384",))["ES384"],
    )


@dataclass(frozen=True)
class Minted:
    token: str
    claims: Mapping[str, Any]


class TokenBook:
    """Every token of the run, by key label (`old`, `new`) and profile; malformed values by key label and name."""

    def __init__(self, ring: KeyRing, issuer: str, expiring_at: int) -> None:
        self.ring = ring
        self.issuer = issuer
        self.expiring_at = expiring_at
        self.current = "old"  # the key the issuer signs with now: the rotation switches it to "new"
        self._turn = 0
        self._pools = {label: self._mint_pools(ring.published(label)) for label in ("old", "new")}
        self._malformed = {label: self._mint_malformed(label) for label in ("old", "new")}

    def pick(self, label: str, profile: str) -> Minted:
        """The next token of the profile's pool (round robin: repeats hit the verified-token cache)."""
        pool = self._pools[label][profile]
        self._turn += 1
        return pool[self._turn % len(pool)]

    def malformed(self, label: str, name: str) -> str:
        return self._malformed[label][name]

    def _mint_pools(self, key: SigningKey) -> dict[str, list[Minted]]:
        return {
            profile: [self._mint(key, profile, index) for index in range(TOKENS_PER_PROFILE)] for profile in PROFILES
        }

    def _mint(self, key: SigningKey, profile: str, index: int) -> Minted:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"soak-{profile}-{index}",
            "client_id": CLIENT_ID,
            **PROFILES[profile],
            "iat": now,
            "exp": now + TOKEN_TTL_SECONDS,
            "jti": secrets.token_hex(8),
        }
        headers = {"typ": "at+jwt", "kid": key.kid}
        if profile == "wrong-issuer":
            claims["iss"] = self.issuer + "-elsewhere"
        elif profile == "expired":
            claims["iat"], claims["exp"] = now - 1200, now - 600
        elif profile == "expiring":
            claims["exp"] = self.expiring_at
        elif profile == "bad-typ":
            headers["typ"] = "dpop+jwt"
        return Minted(_sign(key, headers, claims), claims)

    def _mint_malformed(self, label: str) -> dict[str, str]:
        key = self.ring.published(label)
        valid = self.pick(label, "global-read")
        header, payload, signature = valid.token.split(".")
        claims = dict(valid.claims)
        middle = len(signature) // 2
        flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
        rogue = self.ring.rogue
        return {
            "bad-signature": f"{header}.{payload}.{flipped}",
            "alg-none": _unsigned({"alg": "none", "typ": "at+jwt", "kid": key.kid}, claims),
            "hs256-public-key": _hs256_with_public_key(key, claims),
            "unknown-kid": _sign(rogue, {"typ": "at+jwt", "kid": "soak-rogue-kid"}, claims),
            "garbage-parts": "eyJhbGciOiJFUzM4NCJ9.bm90IGpzb24.c2lnbmF0dXJl",
            "not-b64token": "not a token at all",
            "opaque": secrets.token_urlsafe(32),
            "oversized": "eyJ" + "A" * 20000,
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_part(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _unsigned(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return f"{_json_part(header)}.{_json_part(claims)}."


def _sign(key: SigningKey, headers: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A token with exactly these JOSE headers, signed with the key as loaded once (tokens.mint loads the PEM on
    every call, which costs ~30 ms per RSA token: fine for its pools, minted in parallel, not for this start-up)."""
    algorithm = jwt.algorithms.get_default_algorithms()[key.alg]
    signing_input = f"{_json_part({'alg': key.alg, **headers})}.{_json_part(claims)}"
    signature = algorithm.sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{_b64(signature)}"


def _hs256_with_public_key(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """The algorithm-confusion attack: HMAC keyed with the issuer's public key, which anyone can fetch."""
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_json_part({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{_json_part(claims)}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
