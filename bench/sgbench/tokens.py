"""Logto-shaped access tokens for the benchmark, minted once and cached under bench/.cache.

- warm tokens: one per algorithm, the same on every request of the `warm` / `rs256` scenarios;
- a weak token (scope `read:other`) that must get 403;
- pools: many distinct tokens per algorithm (one per request of the `fresh-*` scenarios, so no cache can hit),
  one per line in `pool-<ALG>.txt`, minted in parallel and only extended when a run needs more;
- the memory pool (`./bench/run --memory`): a million or so EdDSA tokens in `memory-pool-EdDSA.txt`, each sent
  once, with a manifest of its own (`memory-pool.json`), so the rounds' tokens are never re-minted for it.

All carry `typ: at+jwt`, the issuer URL (so the issuer's port is part of the cache key), the API audience,
`sub`, `client_id`, `scope`, `iat`, `exp` (7 days; re-minted when less than a day is left; the memory pool: 6 hours,
re-minted when less than 2 are left) and a unique `jti`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .keys import SigningKey
from .layout import AUDIENCE, CLIENT_ID, SCOPE, WARM_SUB, WEAK_SCOPE

TOKEN_TTL_SECONDS = 7 * 24 * 3600
MIN_REMAINING_SECONDS = 24 * 3600
MEMORY_TOKEN_TTL_SECONDS = 6 * 3600
MEMORY_MIN_REMAINING_SECONDS = 2 * 3600  # a --memory run stops after at most --max-minutes
_CHUNK = 2000
_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TokenSet:
    """What one benchmark needs: warm tokens by algorithm, the weak token, and the pool files."""

    warm: dict[str, str]
    weak: str
    pools: dict[str, Path]
    pool_sizes: dict[str, int]


def mint(key_alg: str, key_pem: bytes, kid: str, claims: dict[str, Any]) -> str:
    private_key = jwt.algorithms.get_default_algorithms()[key_alg].prepare_key(key_pem)
    return jwt.encode(claims, private_key, algorithm=key_alg, headers={"typ": "at+jwt", "kid": kid})


def claims_for(
    issuer: str, *, sub: str, scope: str, now: int, jti: str, ttl: int = TOKEN_TTL_SECONDS
) -> dict[str, Any]:
    return {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": sub,
        "client_id": CLIENT_ID,
        "scope": scope,
        "iat": now,
        "exp": now + ttl,
        "jti": jti,
    }


def ensure_tokens(cache: Path, keys: dict[str, SigningKey], issuer: str, pool_size: dict[str, int]) -> TokenSet:
    """Reuse what the cache holds when it is for this issuer and these keys and far from expiry; mint the rest."""
    manifest = _load_manifest(cache, keys, issuer)
    now = int(time.time())
    if not _fresh(manifest.get("single_exp", 0), now):
        manifest["single"] = _mint_singles(keys, issuer, now)
        manifest["single_exp"] = now + TOKEN_TTL_SECONDS
        _save_manifest(cache, manifest)
    pools = {}
    for alg, wanted in pool_size.items():
        pools[alg] = _ensure_pool(cache, keys[alg], issuer, wanted, manifest)
        _save_manifest(cache, manifest)
    single = manifest["single"]
    return TokenSet(
        warm={alg: single[f"warm-{alg}"] for alg in keys},
        weak=single["weak"],
        pools=pools,
        pool_sizes={alg: manifest["pools"][alg]["count"] for alg in pool_size},
    )


def _fresh(exp: int, now: int) -> bool:
    return exp - now > MIN_REMAINING_SECONDS


def _load_manifest(cache: Path, keys: dict[str, SigningKey], issuer: str) -> dict[str, Any]:
    """The cached manifest, or a new empty one when the issuer or a key changed (then every token is stale)."""
    identity = {"version": _MANIFEST_VERSION, "issuer": issuer, "kids": {alg: key.kid for alg, key in keys.items()}}
    path = cache / "tokens.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("identity") != identity:
        manifest = {"identity": identity, "pools": {}}
    return manifest


def _save_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    path = cache / "tokens.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    temporary.replace(path)


def _mint_singles(keys: dict[str, SigningKey], issuer: str, now: int) -> dict[str, str]:
    single = {}
    for alg, key in keys.items():
        claims = claims_for(issuer, sub=WARM_SUB, scope=SCOPE, now=now, jti=f"warm-{alg}-{secrets.token_hex(8)}")
        single[f"warm-{alg}"] = mint(alg, key.pem, key.kid, claims)
    es384 = keys["ES384"]
    weak = claims_for(issuer, sub="bench-weak-user", scope=WEAK_SCOPE, now=now, jti=f"weak-{secrets.token_hex(8)}")
    single["weak"] = mint("ES384", es384.pem, es384.kid, weak)
    return single


def _ensure_pool(cache: Path, key: SigningKey, issuer: str, wanted: int, manifest: dict[str, Any]) -> Path:
    """Make `pool-<ALG>.txt` hold at least `wanted` valid tokens: extend it, or start over when near expiry."""
    path = cache / f"pool-{key.alg}.txt"
    entry = manifest["pools"].get(key.alg)
    now = int(time.time())
    if entry is None or not path.exists() or not _fresh(entry["exp"], now):
        path.unlink(missing_ok=True)
        entry = {"count": 0, "exp": now + TOKEN_TTL_SECONDS}
    if entry["count"] < wanted:
        started = time.monotonic()
        missing = wanted - entry["count"]
        print(f"bench: minting {missing} {key.alg} tokens for the fresh-token pool (cached in {path}) ...", flush=True)
        with path.open("a") as out:
            size = out.tell()
            try:
                for chunk in _mint_parallel(key, issuer, entry["count"], wanted, now):
                    out.write("\n".join(chunk) + "\n")
            except BaseException:
                out.truncate(size)  # interrupted: the file keeps exactly what the manifest counts
                raise
        entry = {"count": wanted, "exp": min(entry["exp"], now + TOKEN_TTL_SECONDS)}
        print(f"bench: minted {missing} {key.alg} tokens in {time.monotonic() - started:.1f} s", flush=True)
    manifest["pools"][key.alg] = entry
    return path


def ensure_memory_pool(cache: Path, key: SigningKey, issuer: str, wanted: int) -> Path:
    """Make `memory-pool-<ALG>.txt` hold at least `wanted` tokens with 2+ hours left: extend it, or start over.

    Minted in parallel and written chunk by chunk, never held in one list; a run reads only its first `wanted` lines.
    """
    path = cache / f"memory-pool-{key.alg}.txt"
    manifest_path = cache / "memory-pool.json"
    identity = {"version": _MANIFEST_VERSION, "issuer": issuer, "alg": key.alg, "kid": key.kid}
    try:
        entry: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        entry = {}
    now = int(time.time())
    stale = entry.get("exp", 0) - now < MEMORY_MIN_REMAINING_SECONDS
    if entry.get("identity") != identity or not path.exists() or stale:
        path.unlink(missing_ok=True)
        entry = {"identity": identity, "count": 0, "iat": now, "exp": now + MEMORY_TOKEN_TTL_SECONDS}
    if entry["count"] < wanted:
        started = time.monotonic()
        missing = wanted - entry["count"]
        print(f"bench: minting {missing:,} {key.alg} tokens for the memory run (cached in {path}) ...", flush=True)
        minted, step = entry["count"], max(wanted // 10, _CHUNK)
        next_report = minted + step
        with path.open("a") as out:
            size = out.tell()
            try:
                # iat from the manifest: every token of the file shares one exp, the one the manifest keeps
                chunks = _mint_parallel(key, issuer, minted, wanted, entry["iat"], MEMORY_TOKEN_TTL_SECONDS)
                for chunk in chunks:
                    out.write("\n".join(chunk) + "\n")
                    minted += len(chunk)
                    if next_report <= minted < wanted:
                        print(f"bench:   {minted:,}/{wanted:,} minted", flush=True)
                        next_report += step
            except BaseException:
                out.truncate(size)  # interrupted: the file keeps exactly what the manifest counts
                raise
        entry["count"] = wanted
        temporary = manifest_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(entry, indent=1))
        temporary.replace(manifest_path)
        print(f"bench: minted {missing:,} {key.alg} tokens in {time.monotonic() - started:.1f} s", flush=True)
    return path


def _mint_parallel(
    key: SigningKey, issuer: str, start: int, stop: int, now: int, ttl: int = TOKEN_TTL_SECONDS
) -> Iterator[list[str]]:
    ranges = [(lo, min(lo + _CHUNK, stop)) for lo in range(start, stop, _CHUNK)]
    jobs = [(key.alg, key.pem, key.kid, issuer, lo, hi, now, ttl) for lo, hi in ranges]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        yield from pool.map(_mint_range, jobs)


def _mint_range(job: tuple[str, bytes, str, str, int, int, int, int]) -> list[str]:
    """One worker's share: tokens `lo`..`hi` of the pool, each with its own `sub` and `jti`."""
    alg, pem, kid, issuer, lo, hi, now, ttl = job
    private_key = jwt.algorithms.get_default_algorithms()[alg].prepare_key(pem)
    headers = {"typ": "at+jwt", "kid": kid}
    tokens = []
    for index in range(lo, hi):
        claims = claims_for(
            issuer,
            sub=f"bench-user-{index:07d}",
            scope=SCOPE,
            now=now,
            jti=f"{alg}-{index}-{secrets.token_hex(6)}",
            ttl=ttl,
        )
        tokens.append(jwt.encode(claims, private_key, algorithm=alg, headers=headers))
    return tokens
