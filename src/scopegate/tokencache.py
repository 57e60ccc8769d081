"""Verified tokens remembered by their exact string, so a client's repeat token costs a dict lookup, not ~0.7 ms.

A client sends the same access token with every request until it expires, and verifying it (base64, strict JSON,
an ES384 signature) is most of scopegate's own time per request. `TokenCache` holds the outcome of successful
verifications only — a failure is never remembered, so the cache cannot be used to pin a rejection — and bounds
itself three ways:

- size: a least-recently-used bound on the number of entries (`capacity`; 0 turns caching off);
- keys: `forget_keys` drops every entry verified with a key the issuer no longer publishes (wired to
  `JwksCache(on_keys_removed=...)`); a verification that was running while keys were removed is not stored, since
  it may have used one of them;
- time: the cache holds entries, the verifier re-applies the time checks on every hit (`TokenVerifier.cached`) and
  `evict`s what fails them.

`share` makes concurrent misses of one token wait on a single verification, run as its own task so that a caller
that gives up (a cancelled request) cannot cancel it for the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from scopegate.jwks import KeyId


class Verified(Protocol):
    """What the cache needs to know of an entry: the key that verified it."""

    @property
    def key(self) -> KeyId: ...


_E = TypeVar("_E", bound=Verified)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """A snapshot of the cache's counters, for metrics. Evictions count entries dropped for room, for failing the
    time checks on a hit, or because their key was removed; `clear` counts none."""

    capacity: int
    entries: int
    hits: int
    misses: int
    evictions: int


class TokenCache(Generic[_E]):
    """A bounded LRU of verified tokens, keyed by the exact token string; see the module docstring."""

    __slots__ = ("_capacity", "_entries", "_epoch", "_evictions", "_hits", "_in_flight", "_misses")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be at least 0; got {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[str, _E] = OrderedDict()  # least recently used first
        self._in_flight: dict[str, asyncio.Task[_E]] = {}
        self._epoch = 0  # bumped whenever entries are invalidated, so a verification that overlapped it is not stored
        self._hits = self._misses = self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(
            capacity=self._capacity,
            entries=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, token: object) -> bool:
        """Whether `token` has an entry; unlike `get`, neither counts nor refreshes its recency."""
        return token in self._entries

    def get(self, token: str) -> _E | None:
        """The entry for `token`, now the most recently used, or None."""
        entry = self._entries.get(token)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(token)
        return entry

    def put(self, token: str, entry: _E) -> None:
        """Remember `entry` as the most recently used, dropping the least recently used entries beyond capacity."""
        if not self.enabled:
            return
        self._entries[token] = entry
        self._entries.move_to_end(token)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self._evictions += 1

    def evict(self, token: str) -> None:
        """Drop `token`'s entry (one that no longer passes the time checks)."""
        if self._entries.pop(token, None) is not None:
            self._evictions += 1

    def forget_keys(self, removed: Set[KeyId]) -> None:
        """Drop every entry verified with one of the `removed` keys: the issuer no longer vouches for them."""
        self._epoch += 1
        doomed = [token for token, entry in self._entries.items() if entry.key in removed]
        for token in doomed:
            del self._entries[token]
        self._evictions += len(doomed)

    def clear(self) -> None:
        """Forget every entry, and the result of every verification still running."""
        self._epoch += 1
        self._entries.clear()

    async def share(self, token: str, verify: Callable[[], Awaitable[_E]]) -> _E:
        """`verify()`'s result for `token`, computed once for every concurrent caller and remembered on success."""
        task = self._in_flight.get(token)
        if task is None:
            task = asyncio.create_task(self._verify_and_put(token, verify), name="token-verify")
            self._in_flight[token] = task
            task.add_done_callback(partial(self._landed, token))
        # shield: a caller that gives up (a cancelled request) must not cancel the verification others wait on
        return await asyncio.shield(task)

    async def _verify_and_put(self, token: str, verify: Callable[[], Awaitable[_E]]) -> _E:
        epoch = self._epoch
        entry = await verify()
        if epoch == self._epoch:
            self.put(token, entry)
        return entry

    def _landed(self, token: str, task: asyncio.Task[_E]) -> None:
        if self._in_flight.get(token) is task:
            del self._in_flight[token]
        if not task.cancelled():
            task.exception()  # marks a failure as seen even when every caller has gone: no "never retrieved" warning
