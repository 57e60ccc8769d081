"""Test keys and tokens: the PEM files under tests/keys, their public JWKs, Logto-shaped tokens signed with them, and
hostile tokens built byte by byte (a duplicate JSON member, `alg: none`, HMAC keyed with a public key ...).

The keys are test-only and committed on purpose, so that a failing test can be replayed exactly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

KEYS_DIR = Path(__file__).parent / "keys"

# Shaped like a Logto tenant: the issuer has a path, API resources are URLs.
ISSUER = "https://tenant.logto.app/oidc"
API = "https://api.example.com"
NOW = 1_750_000_000.0

Json = Mapping[str, Any]
SigningKey = EllipticCurvePrivateKey | RSAPrivateKey | Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class TestKey:
    """A private key from tests/keys with the kid and algorithm the fake issuer publishes it under."""

    __test__ = False  # not a pytest test class

    file: str
    kid: str
    alg: str
    private: SigningKey

    def jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        """The public JWK, as an issuer would publish it; `with_alg=False` drops `alg` (Logto's RSA keys)."""
        jwk: dict[str, Any] = {**_public_jwk(self.private), "kid": self.kid, "use": "sig"}
        jwk.pop("key_ops", None)  # pyjwt adds it to RSA keys; Logto's JWKs carry none
        if with_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, claims: Json, *, alg: str | None = None, **headers: Any) -> str:
        """A token signed by pyjwt, with `typ: at+jwt` and this key's kid unless `headers` say otherwise."""
        header = {"typ": "at+jwt", "kid": self.kid, **headers}
        return jwt.encode(dict(claims), self.private, algorithm=alg or self.alg, headers=header)

    def sign_raw(self, header: bytes | Json, payload: bytes | Json, *, alg: str | None = None) -> str:
        """A correctly signed token over exactly these header and payload bytes (dicts are JSON-encoded)."""
        signing_input = f"{b64(as_bytes(header))}.{b64(as_bytes(payload))}"
        algorithm = jwt.get_algorithm_by_name(alg or self.alg)
        return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), self.private))}"


def _public_jwk(private: SigningKey) -> dict[str, Any]:
    if isinstance(private, EllipticCurvePrivateKey):
        return ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    if isinstance(private, RSAPrivateKey):
        return RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)


@cache
def load_key(file: str, kid: str, alg: str) -> TestKey:
    private = serialization.load_pem_private_key((KEYS_DIR / file).read_bytes(), password=None)
    assert isinstance(private, EllipticCurvePrivateKey | RSAPrivateKey | Ed25519PrivateKey)
    return TestKey(file=file, kid=kid, alg=alg, private=private)


EC_A = load_key("ec-p384-a.pem", "logto-ec-a", "ES384")  # Logto's default key type
EC_B = load_key("ec-p384-b.pem", "logto-ec-b", "ES384")  # the key a rotation introduces
EC_P256 = load_key("ec-p256.pem", "ec-p256", "ES256")
RSA = load_key("rsa-2048.pem", "logto-rsa", "RS256")
ED = load_key("ed25519.pem", "ed25519", "EdDSA")


def jwks(*keys: Json) -> dict[str, Any]:
    return {"keys": [dict(key) for key in keys]}


def logto_claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """An access token payload as Logto issues it for an API resource; `None` in overrides removes a claim."""
    claims: dict[str, Any] = {
        "jti": "jti-0123456789",
        "sub": "user-123",
        "iat": int(now),
        "exp": int(now) + 3600,
        "scope": "read:items write:items",
        "client_id": "app-456",
        "iss": ISSUER,
        "aud": API,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def as_bytes(part: bytes | Json) -> bytes:
    return part if isinstance(part, bytes) else json.dumps(part).encode()


def raw_token(header: bytes | Json, payload: bytes | Json, signature: bytes = b"") -> str:
    """An unsigned (or arbitrarily signed) token from exactly these parts."""
    return f"{b64(as_bytes(header))}.{b64(as_bytes(payload))}.{b64(signature)}"


def hmac_token(secret: bytes, header: Json, payload: Json) -> str:
    """An HS256 token keyed with `secret`: the classic attack keys it with the issuer's *public* key."""
    signing_input = f"{b64(as_bytes(header))}.{b64(as_bytes(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def parts(token: str) -> tuple[bytes, bytes, bytes]:
    """The three decoded parts of a compact token."""
    header, payload, signature = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.split("."))
    return header, payload, signature


def with_signature(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64(signature)


def flip_signature_byte(token: str) -> str:
    signature = bytearray(parts(token)[2])
    signature[10] ^= 0x01
    return with_signature(token, bytes(signature))


def tamper_payload(token: str) -> str:
    """The same signature over a payload that grants one more scope."""
    head, _, signature = token.split(".")
    claims = json.loads(parts(token)[1]) | {"scope": "read:items write:items admin"}
    return f"{head}.{b64(as_bytes(claims))}.{signature}"
