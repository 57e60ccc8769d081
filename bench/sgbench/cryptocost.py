"""What one signature verification costs in-process, the floor under any fresh-token request in Python.

Timed with pyjwt's own algorithm objects over cryptography (what scopegate and the aiohttp-pyjwt baseline call):
`verify` is the signature check alone (ES384 includes pyjwt's raw-to-DER signature conversion); `decode` is a
whole `jwt.decode` (parse, verify, claim checks). Each figure is the median of many single timings.
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from .keys import SigningKey
from .layout import AUDIENCE


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _median_us(call: Callable[[], object], samples: int) -> float:
    timings = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        call()
        timings.append(time.perf_counter_ns() - started)
    return statistics.median(timings) / 1000


def verify_costs(keys: dict[str, SigningKey], warm: dict[str, str], issuer: str, samples: int = 2000) -> dict[str, Any]:
    """Median µs per signature verification and per whole `jwt.decode`, by algorithm."""
    return {alg: _costs(key, warm[alg], issuer, samples) for alg, key in keys.items()}


def _costs(key: SigningKey, token: str, issuer: str, samples: int) -> dict[str, Any]:
    signing_input, _, signature = token.rpartition(".")
    message, raw_signature = signing_input.encode(), _b64decode(signature)
    algorithm = jwt.algorithms.get_default_algorithms()[key.alg]
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_key = algorithm.prepare_key(public_pem)
    if not algorithm.verify(message, public_key, raw_signature):
        raise ValueError(f"{key.alg}: the warm token does not verify with its own key")

    def verify() -> object:
        return algorithm.verify(message, public_key, raw_signature)

    def decode() -> object:
        return jwt.decode(token, public_key, algorithms=[key.alg], audience=AUDIENCE, issuer=issuer)

    return {"verify_us": _median_us(verify, samples), "decode_us": _median_us(decode, samples), "samples": samples}
