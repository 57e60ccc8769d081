"""Wiring: the one place that builds the stages, owns their resources and serves the admin port.

`Gateway` owns what lives as long as the process: the session key fetches go over, the JWKS cache and its
background refresh, the token verifier and its cache, the metrics, the rules in force (the pipeline) and the
readiness state. The proxy port itself is `http1.Http1Server` around the gateway's pipeline (see `serve.py`);
`create_admin_app` serves the admin port (`/healthz`, `/readyz`, `/metrics`), which is never the proxy port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scopegate.config import AuthConfig, Config
from scopegate.decision import DecisionDoor
from scopegate.discovery import HttpJwksFetcher, new_session
from scopegate.frontdoor import FrontDoor, Ruleset
from scopegate.gate import BearerCredentials
from scopegate.issuers import IssuerVerifiers, KeyCaches, Verifier
from scopegate.jwks import JwksCache
from scopegate.limits import Limits
from scopegate.observability import Metrics
from scopegate.pipeline import Pipeline
from scopegate.tokencache import TokenCache
from scopegate.tokens import TokenVerifier, VerifiedToken

log = structlog.get_logger("scopegate")

# Settings bound to listeners or to the key cache: a reload reports a change to them and keeps the old values.
RESTART_ONLY = ("listen", "admin_listen", "auth", "decision_listen")


def build_verifier(
    auth: AuthConfig,
    session: aiohttp.ClientSession,
    *,
    on_refresh: Callable[[bool, int], None] | None = None,
    max_token_bytes: int = Limits().max_token_bytes,
) -> tuple[KeyCaches, Verifier]:
    """The issuers' key caches (fetching over `session`) and the token verifier that uses them, from `auth`.

    The verifier remembers up to `auth.token_cache_entries` verified tokens, whatever their issuer; each key cache
    flushes those of a key its issuer stops publishing. One issuer gets its `TokenVerifier` itself.
    """
    verified: TokenCache[VerifiedToken] = TokenCache(auth.token_cache_entries)
    caches, verifiers = [], []
    for trusted in auth.issuers:
        keys = JwksCache(
            fetch=HttpJwksFetcher(session, issuer=trusted.issuer, jwks_uri=trusted.jwks_uri),
            algorithms=trusted.algorithms,
            refresh_seconds=trusted.jwks_refresh_seconds,
            refetch_cooldown_seconds=trusted.jwks_refetch_cooldown_seconds,
            on_refresh=on_refresh,
            on_keys_removed=verified.forget_keys,
        )
        caches.append(keys)
        verifiers.append(
            TokenVerifier(
                issuer=trusted.issuer,
                algorithms=trusted.algorithms,
                leeway_seconds=trusted.leeway_seconds,
                keys=keys,
                cache=verified,
                max_token_bytes=max_token_bytes,
            )
        )
    verifier: Verifier = verifiers[0] if len(verifiers) == 1 else IssuerVerifiers(verifiers)
    return KeyCaches(caches), verifier


# How often the token cache's counters reach the metrics: they count in plain ints so a lookup costs nothing more.
_CACHE_METRICS_SECONDS = 1.0


class Gateway:
    """The long-lived state of one scopegate process."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.draining = False
        self._pipeline: Pipeline | None = None
        self._decisions: DecisionDoor | None = None
        self._keys: KeyCaches | None = None
        self._verifier: Verifier | None = None
        self._credentials: BearerCredentials | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.keys_loaded = asyncio.Event()  # set once every issuer has keys (a worker waits for it to listen)

    @property
    def ready(self) -> bool:
        return not self.draining and self._keys is not None and self._keys.has_keys

    @property
    def pipeline(self) -> Pipeline:
        """The proxy port's front door."""
        if self._pipeline is None:
            raise RuntimeError("the gateway is not started")
        return self._pipeline

    @property
    def decisions(self) -> DecisionDoor:
        """The decision endpoint's front door: the same rules, decided the same way."""
        if self._decisions is None:
            raise RuntimeError("the gateway is not started")
        return self._decisions

    @property
    def doors(self) -> tuple[FrontDoor, ...]:
        return tuple(door for door in (self._pipeline, self._decisions) if door is not None)

    async def start(self) -> None:
        self._session = new_session()
        self._keys, self._verifier = build_verifier(
            self.config.auth,
            self._session,
            on_refresh=self._keys_refreshed,
            max_token_bytes=self.config.limits.max_token_bytes,
        )
        self._credentials = BearerCredentials(self._verifier)
        rules = Ruleset.build(self.config, self._credentials)
        self._pipeline = Pipeline(rules=rules, metrics=self.metrics)
        self._decisions = DecisionDoor(rules=rules, metrics=self.metrics)
        self._tasks = [
            asyncio.create_task(self._keys.run(), name="jwks-refresh"),
            asyncio.create_task(self._sync_cache_metrics(), name="token-cache-metrics"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for door in self.doors:
            await door.stop()
        if self._pipeline is not None:
            self._pipeline.rules.retire()
        if self._session is not None:
            await self._session.close()

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.worker_ready.set(0)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        if self.ready:
            return True, {}
        return False, {"why": "draining" if self.draining else "no signing keys loaded yet"}

    def use_config(self, config: Config) -> list[str]:
        """Swap in new rules and upstream; returns the settings that only a restart can change (kept as they were).

        Requests already running keep the ruleset they started with.
        """
        kept = [name for name in RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if (config.upstream is None) != (self.config.upstream is None):
            kept.append("upstream")  # the proxy port is served, or not, from the start
        if kept:
            config = replace(config, **{name: getattr(self.config, name) for name in kept})
        if self._pipeline is not None and self._credentials is not None:
            old = self._pipeline.rules
            rules = Ruleset.build(config, self._credentials)
            for door in self.doors:
                door.rules = rules
            old.retire()
        self.config = config
        return kept

    def _keys_refreshed(self, success: bool, keys: int) -> None:
        self.metrics.jwks_refreshed(success, self._keys.key_count if self._keys is not None else keys)
        if self._keys is not None and self._keys.has_keys:
            self.keys_loaded.set()
        self.metrics.worker_ready.set(1 if self.ready else 0)

    async def _sync_cache_metrics(self) -> None:
        while True:
            if self._verifier is not None:
                self.metrics.token_cache_now(self._verifier.cache_stats)
            await asyncio.sleep(_CACHE_METRICS_SECONDS)


Readiness = Callable[[], tuple[bool, dict[str, object]]]


def create_admin_app(
    registry: CollectorRegistry, readiness: Readiness, liveness: Callable[[], dict[str, object]] = dict
) -> web.Application:
    """The admin port: liveness, readiness and Prometheus metrics, for one process or a worker supervisor.

    `readiness` says whether to answer 200 and what to add to the body (why not, how many workers ready).
    """
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive", **liveness()})

    async def readyz(_: web.Request) -> web.Response:
        ready, details = readiness()
        return web.json_response({"status": "ready" if ready else "not ready", **details}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
