"""Test doubles for the key cache: a fake clock, a scripted issuer, recorded refreshes, removals and sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from scopegate.config import ASYMMETRIC_ALGORITHMS
from scopegate.errors import JwksFetchError
from scopegate.jwks import JwksCache, KeyId, KeysRemoved

from tokenlib import Json, jwks

COOLDOWN = 5.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIssuer:
    """A JWKS source that counts its fetches; it can be taken down, and can hold fetches until released."""

    def __init__(self, *keys: Json) -> None:
        self.keys: list[Json] = list(keys)
        self.document: Mapping[str, Any] | None = None  # served instead of {"keys": ...} when set
        self.up = True
        self.fetches = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if not self.up:
            raise JwksFetchError("GET https://tenant.logto.app/oidc/jwks: HTTP 503 (expected 200)")
        return self.document if self.document is not None else jwks(*self.keys)


class Refreshes(list[tuple[bool, int]]):
    """The on_refresh hook: every (success, key_count) report in order."""

    def __call__(self, success: bool, keys: int) -> None:
        self.append((success, keys))


class Removals(list[frozenset[KeyId]]):
    """The on_keys_removed hook: every set of removed key ids, in order."""

    def __call__(self, removed: frozenset[KeyId]) -> None:
        self.append(removed)


def make_cache(
    issuer: Callable[[], Awaitable[Mapping[str, Any]]],
    *,
    clock: FakeClock | None = None,
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
    on_refresh: Refreshes | None = None,
    on_keys_removed: KeysRemoved | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    refresh_seconds: float = 300,
) -> JwksCache:
    return JwksCache(
        fetch=issuer,
        algorithms=algorithms,
        refresh_seconds=refresh_seconds,
        refetch_cooldown_seconds=COOLDOWN,
        clock=clock or FakeClock(),
        sleep=sleep,
        on_refresh=on_refresh,
        on_keys_removed=on_keys_removed,
    )


class Sleeps:
    """An injected sleep that records each delay, runs a scripted action after some of them, and parks at the end."""

    def __init__(self, stop_after: int, actions: Mapping[int, Callable[[], Awaitable[None] | None]]) -> None:
        self.delays: list[float] = []
        self.done = asyncio.Event()
        self._stop_after = stop_after
        self._actions = actions

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        action = self._actions.get(len(self.delays))
        if action is not None:
            result = action()
            if result is not None:
                await result
        if len(self.delays) >= self._stop_after:
            self.done.set()
            await asyncio.Event().wait()  # parked until the test cancels run()
        await asyncio.sleep(0)


async def run_until(cache: JwksCache, sleeps: Sleeps) -> None:
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(sleeps.done.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
