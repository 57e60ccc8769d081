"""`scopegate run`: serve the proxy and admin ports until SIGTERM/SIGINT, then drain and exit 0.

On SIGTERM readiness turns 503 at once, the listener closes, and in-flight requests get `shutdown_grace_seconds` to
finish (Kubernetes sends SIGTERM and waits for terminationGracePeriodSeconds). SIGHUP reloads the config file: the
new file is validated in full before it is swapped in; an invalid one is logged and counted and the old rules stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from scopegate.app import Gateway, create_admin_app, create_proxy_server
from scopegate.config import Config, HostPort, load_config
from scopegate.errors import ConfigError
from scopegate.observability import Metrics

log = structlog.get_logger("scopegate")


def config_digest(path: Path | None) -> str:
    if path is None:
        return "none"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "unreadable"


class Server:
    """The two listeners of one process and their lifecycle."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.gateway = Gateway(config, metrics)
        self._runners: list[web.BaseRunner] = []  # admin first, proxy second; made in start(), inside the loop
        self.bound: dict[str, HostPort] = {}

    async def start(self) -> None:
        config = self.gateway.config
        await self.gateway.start()
        admin = web.AppRunner(create_admin_app(self.gateway), access_log=None, shutdown_timeout=1.0)
        proxy = web.ServerRunner(create_proxy_server(self.gateway), shutdown_timeout=config.shutdown_grace_seconds)
        self._runners = [admin, proxy]
        await admin.setup()
        self.bound["admin"] = await _bind(admin, config.admin_listen)
        await proxy.setup()
        self.bound["proxy"] = await _bind(proxy, config.listen)
        self.gateway.metrics.config_loaded(config_digest(config.source))
        log.info(
            "started",
            listen=str(self.bound["proxy"]),
            admin_listen=str(self.bound["admin"]),
            upstream=config.upstream,
            issuer=config.auth.issuer,
            routes=len(config.routes),
        )

    async def drain(self) -> None:
        """Readiness 503 first, then stop accepting and let in-flight requests finish within the grace period."""
        self.gateway.draining = True
        log.info("draining", grace_seconds=self.gateway.config.shutdown_grace_seconds)
        for runner in reversed(self._runners):  # the proxy drains while the admin port still answers 503
            await runner.cleanup()
        await self.gateway.stop()
        log.info("stopped")

    def reload(self) -> bool:
        """Re-read the config file; keep the old rules when the new file is invalid."""
        source = self.gateway.config.source
        if source is None:
            return False
        metrics = self.gateway.metrics
        try:
            config = load_config(source)
        except ConfigError as exc:
            metrics.config_reloads.labels("failure").inc()
            log.error("config_reload_failed", file=str(source), problems=list(exc.problems))
            return False
        self.gateway.use_config(config)
        metrics.config_reloads.labels("success").inc()
        metrics.config_loaded(config_digest(source))
        log.info("config_reloaded", file=str(source), routes=len(config.routes))
        return True


async def _bind(runner: web.BaseRunner, where: HostPort) -> HostPort:
    site = web.TCPSite(runner, where.host, where.port, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp keeps the asyncio server here; we need it for the port chosen for port 0
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else where.port
    return HostPort(host=where.host, port=port)


async def run_until_signalled(server: Server, *, on_started: Callable[[Server], Awaitable[None]] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
        if on_started is not None:
            await on_started(server)
        await stop.wait()
    finally:
        await server.drain()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
