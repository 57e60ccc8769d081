"""The issuer's signing keys (ES384 on P-384, RS256 on RSA-2048), cached under bench/.cache/keys.

Generated once and kept so reruns reuse the minted tokens; each has a `kid` (its RFC 7638 thumbprint). From them
come the JWKS and the discovery document the harness's issuer (static files served by nginx) publishes.
`./bench/run --memory` adds a third, EdDSA on Ed25519 (`MEMORY_ALGORITHM`: cheap to sign a million tokens with),
to the JWKS of its own runs only, so the rounds' JWKS and cached tokens stay as they are.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES384", "RS256")
MEMORY_ALGORITHM = "EdDSA"  # Ed25519: the --memory mode's tokens


@dataclass(frozen=True)
class SigningKey:
    """One private key, its algorithm and kid; the PEM is what crosses process boundaries when minting."""

    alg: str
    pem: bytes

    @cached_property
    def private_key(self) -> PrivateKeyTypes:
        return serialization.load_pem_private_key(self.pem, password=None)

    @cached_property
    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if self.alg == "ES384":
            assert isinstance(public, ec.EllipticCurvePublicKey)
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg == "EdDSA":
            assert isinstance(public, ed25519.Ed25519PublicKey)
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": _thumbprint(jwk), "alg": self.alg, "use": "sig"}

    @property
    def kid(self) -> str:
        return str(self.public_jwk["kid"])


def load_or_create(directory: Path, algorithms: Sequence[str] = ALGORITHMS) -> dict[str, SigningKey]:
    """The cached keys of `algorithms`, by algorithm, generating (and caching) any that are missing."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for alg in algorithms:
        path = directory / f"{alg.lower()}.pem"
        if not path.exists():
            path.write_bytes(_generate_pem(alg))
            path.chmod(0o600)
        keys[alg] = SigningKey(alg, path.read_bytes())
    return keys


def jwks_document(keys: dict[str, SigningKey]) -> dict[str, Any]:
    return {"keys": [key.public_jwk for key in keys.values()]}


def discovery_document(issuer: str, keys: dict[str, SigningKey]) -> dict[str, Any]:
    """The parts of Logto's OIDC discovery document a resource server reads."""
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "id_token_signing_alg_values_supported": list(keys),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
    }


def _generate_pem(alg: str) -> bytes:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if alg == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, base64url without padding."""
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
