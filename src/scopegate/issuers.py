"""Several trusted issuers: a token is verified only with the keys of the issuer its `iss` names.

A Logto tenant moving to a custom domain issues tokens under two issuer URLs for a while, and some teams accept two
tenants. Each issuer keeps its own key cache, algorithm allow-list and leeway (a `TokenVerifier` each); they share
one verified-token cache, whose entries carry their issuer's leeway. Reading `iss` before the signature is checked
only picks whose keys to try: the chosen verifier checks `iss` again, exactly, after the signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from scopegate.errors import InvalidToken
from scopegate.jwks import JwksCache
from scopegate.tokencache import CacheStats
from scopegate.tokens import Claims, TokenVerifier


class Verifier(Protocol):
    """What the gate's credentials need: one issuer's `TokenVerifier`, or several behind `IssuerVerifiers`."""

    @property
    def cache_stats(self) -> CacheStats: ...

    def cached(self, token: str) -> Claims | None: ...

    def verify_now(self, token: str) -> Claims | None: ...

    async def verify(self, token: str) -> Claims: ...


class IssuerVerifiers:
    """Verifiers of several issuers over one token cache, each token sent to the verifier of its own issuer."""

    __slots__ = ("_any", "_by_issuer")

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._by_issuer = {verifier.issuer: verifier for verifier in verifiers}
        self._any = verifiers[0]  # the cache is shared: any verifier answers a hit, with the entry's own leeway

    @property
    def cache_stats(self) -> CacheStats:
        return self._any.cache_stats

    def cached(self, token: str) -> Claims | None:
        return self._any.cached(token)

    def verify_now(self, token: str) -> Claims | None:
        return self._for(token).verify_now(token)

    async def verify(self, token: str) -> Claims:
        return await self._for(token).verify(token)

    def _for(self, token: str) -> TokenVerifier:
        verifier = self._by_issuer.get(self._any.issuer_of(token) or "")
        if verifier is None:
            raise InvalidToken("wrong_issuer", "the access token was issued by another issuer")
        return verifier


class KeyCaches:
    """The issuers' key caches as one: ready when every issuer has keys, refreshed and run together."""

    __slots__ = ("caches",)

    def __init__(self, caches: Sequence[JwksCache]) -> None:
        self.caches = tuple(caches)

    @property
    def has_keys(self) -> bool:
        return all(cache.has_keys for cache in self.caches)

    @property
    def key_count(self) -> int:
        return sum(cache.key_count for cache in self.caches)

    async def refresh(self) -> bool:
        """Refresh every issuer's keys now; True when every refresh succeeded."""
        return all(await asyncio.gather(*(cache.refresh() for cache in self.caches)))

    async def run(self) -> None:
        """Keep every issuer's keys fresh (until cancelled); an issuer that is down delays no other."""
        await asyncio.gather(*(cache.run() for cache in self.caches))
