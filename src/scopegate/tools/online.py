"""`scopegate check --online`: fetch each issuer's discovery document and JWKS as `run` does, and say what came back.

A config can be valid and still serve nothing but 503s: a mistyped issuer, a JWKS behind a redirect, keys of a type
the allow-list excludes. `run` finds out at start-up and keeps `/readyz` at 503; this finds out before deploying. The
fetch is `run`'s own (`HttpJwksFetcher`: discovery only without `jwks_uri`, the discovered issuer compared exactly,
no redirects, bounded body and time) and each key is judged by the key cache's own rules (`jwks.judge_key`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from scopegate.config import AuthConfig, IssuerConfig
from scopegate.discovery import HttpJwksFetcher, new_session
from scopegate.errors import JwksFetchError
from scopegate.jwks import MAX_KEYS, judge_key


@dataclass(frozen=True, slots=True)
class KeyReport:
    """One published key: what it says about itself and what the cache would make of it."""

    kid: str | None
    kty: str | None
    crv: str | None
    alg: str | None  # as published; Logto's RSA keys carry none
    verifies: frozenset[str]  # the allowed algorithms it serves
    skipped: str | None  # why the cache would not use it

    def line(self) -> str:
        said = [f"kid={self.kid!r}" if self.kid is not None else "no kid", f"kty={self.kty}"]
        said += [f"{name}={value}" for name, value in (("crv", self.crv), ("alg", self.alg)) if value is not None]
        outcome = f"skipped ({self.skipped})" if self.skipped else f"verifies {', '.join(sorted(self.verifies))}"
        return f"key {' '.join(said)}: {outcome}"


@dataclass(slots=True)
class IssuerReport:
    issuer: str
    allowed: frozenset[str]
    discovery_url: str | None  # None: jwks_uri is configured, discovery is not used
    jwks_uri: str | None = None  # None: never learnt (discovery failed)
    keys: list[KeyReport] = field(default_factory=list)
    error: str | None = None

    @property
    def usable(self) -> frozenset[str]:
        return frozenset(alg for key in self.keys for alg in key.verifies)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.usable)

    def lines(self) -> list[str]:
        out = [f"issuer {self.issuer}: {'OK' if self.ok else 'FAILED'}"]
        if self.discovery_url is not None:
            out.append(f"  discovery: {self.discovery_url}")
        if self.jwks_uri is not None:
            out.append(f"  jwks_uri:  {self.jwks_uri}" + ("" if self.discovery_url else " (configured)"))
        out += [f"  {key.line()}" for key in self.keys]
        if self.error is not None:
            out.append(f"  error: {self.error}")
        elif self.keys or self.jwks_uri is not None:
            usable = ", ".join(sorted(self.usable)) or "none: no token of this issuer can be verified"
            out.append(f"  algorithms usable with the allow-list ({', '.join(sorted(self.allowed))}): {usable}")
        return out


async def probe(auth: AuthConfig, *, timeout_seconds: float = 5.0) -> list[IssuerReport]:
    """Fetch every issuer's keys at once, over one session like `run`'s; never raises for a failed fetch."""
    async with new_session() as session:
        return list(await asyncio.gather(*(_probe(session, one, timeout_seconds) for one in auth.issuers)))


async def _probe(session: aiohttp.ClientSession, trusted: IssuerConfig, timeout_seconds: float) -> IssuerReport:
    fetch = HttpJwksFetcher(session, issuer=trusted.issuer, jwks_uri=trusted.jwks_uri, timeout_seconds=timeout_seconds)
    report = IssuerReport(
        issuer=trusted.issuer,
        allowed=trusted.algorithms,
        discovery_url=None if trusted.jwks_uri else fetch.url,
        jwks_uri=trusted.jwks_uri,
    )
    try:
        document = await fetch()
    except JwksFetchError as exc:
        report.error = str(exc)
        if fetch.url != report.discovery_url:
            report.jwks_uri = fetch.url  # discovery worked; the JWKS did not
        return report
    report.jwks_uri = fetch.url
    entries = document.get("keys")
    if not isinstance(entries, list):
        report.error = f'GET {fetch.url}: the JWKS document has no "keys" array'
        return report
    report.keys = judge_keys(entries, trusted.algorithms)
    if not report.usable:
        allowed = ", ".join(sorted(trusted.algorithms))
        report.error = f"GET {fetch.url}: the JWKS has no key usable with the allowed algorithms {allowed}"
    return report


def judge_keys(entries: Sequence[object], algorithms: frozenset[str]) -> list[KeyReport]:
    """Every key of a JWKS as the cache would take it: the first of a repeated kid, the first MAX_KEYS keys."""
    seen: set[str] = set()
    reports = []
    for index, entry in enumerate(entries):
        said: Mapping[str, Any] = entry if isinstance(entry, dict) else {}
        kid = said.get("kid")
        verifies, skipped = judge_key(entry, algorithms)
        if index >= MAX_KEYS:
            verifies, skipped = frozenset(), f"beyond the first {MAX_KEYS} keys"
        elif kid is not None and not isinstance(kid, str):
            verifies, skipped = frozenset(), "kid_not_a_string"
        elif isinstance(kid, str) and kid in seen:
            verifies, skipped = frozenset(), "duplicate_kid: the first key with this kid is used"
        if isinstance(kid, str) and verifies:
            seen.add(kid)  # only a key the cache took holds its kid
        reports.append(
            KeyReport(
                kid=str(kid)[:100] if kid is not None else None,
                kty=_text(said.get("kty")),
                crv=_text(said.get("crv")),
                alg=_text(said.get("alg")),
                verifies=verifies,
                skipped=skipped,
            )
        )
    return reports


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:40]
