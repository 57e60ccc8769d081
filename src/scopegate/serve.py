"""`scopegate run`: serve the proxy and admin ports until SIGTERM/SIGINT, then drain and exit 0.

On SIGTERM readiness turns 503 at once, the listener closes, and in-flight requests get `shutdown_grace_seconds` to
finish (Kubernetes sends SIGTERM and waits for terminationGracePeriodSeconds). The config file is reloaded on SIGHUP
and whenever it changes on disk, Kubernetes ConfigMap updates included: the new file is validated in full before it
is swapped in; an invalid one is logged and counted and the old rules keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from scopegate.app import Gateway, create_admin_app
from scopegate.config import Config, HostPort, config_from_bytes, content_digest, read_config_bytes
from scopegate.errors import ConfigError
from scopegate.listener import Http1Server
from scopegate.observability import Metrics, batch_logs_in, configure_logging
from scopegate.upstream import MAX_CONNECTIONS as UPSTREAM_POOL_MAX

log = structlog.get_logger("scopegate")

WATCH_INTERVAL_SECONDS = 0.5
WORKER_KEYS_WAIT_SECONDS = 30.0


def config_digest(path: Path | None) -> str:
    """What the file holds now, to compare with what was last tried."""
    if path is None:
        return "none"
    try:
        return content_digest(path.read_bytes())
    except OSError:
        return "unreadable"


class Server:
    """The listeners of one process and their lifecycle. Worker processes serve the proxy port only."""

    def __init__(
        self, config: Config, metrics: Metrics | None = None, *, admin: bool = True, reuse_port: bool = False
    ) -> None:
        self.gateway = Gateway(config, metrics)
        self._admin = admin
        self._reuse_port = reuse_port
        self._runners: list[web.BaseRunner] = []  # made in start(), inside the event loop
        self._proxy: Http1Server | None = None
        self._decisions: Http1Server | None = None
        self.bound: dict[str, HostPort] = {}
        # The content last tried, loaded or not: SIGHUP and the watcher both reload, and neither repeats the other.
        self.attempted_digest = config.digest

    async def start(self) -> None:
        config = self.gateway.config
        _raise_open_file_limit(config.limits.max_connections)
        await self.gateway.start()
        if self._reuse_port:
            # A worker shares the port with others: until it has keys it would answer its share of the requests 503
            # while they could serve them, so it joins once it has keys (or after a bound, to fail closed itself).
            await self._keys_or_timeout(WORKER_KEYS_WAIT_SECONDS)
        if self._admin:
            admin_app = create_admin_app(self.gateway.metrics.registry, self.gateway.readiness)
            admin = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
            self._runners.append(admin)
            await admin.setup()
            self.bound["admin"] = await _bind(admin, config.admin_listen)
        if config.upstream is not None:
            self._proxy = Http1Server(self.gateway.pipeline, config.limits)
            self.bound["proxy"] = await self._serve(self._proxy, config.listen)
        elif config.listen_given:
            log.warning("listen_ignored", listen=str(config.listen), why="no upstream: only decisions are served")
        if config.decision_listen is not None:
            self._decisions = Http1Server(self.gateway.decisions, config.limits)
            self.bound["decision"] = await self._serve(self._decisions, config.decision_listen)
        self.gateway.metrics.config_loaded(config.digest)
        # What start-up made lives as long as the process: out of the collector's way, every collection is shorter.
        gc.freeze()
        log.info(
            "started",
            listen=str(self.bound.get("proxy", "-")),
            admin_listen=str(self.bound.get("admin", "-")),
            decision_listen=str(self.bound.get("decision", "-")),
            upstream=config.upstream,
            issuer=config.auth.issuer,
            routes=len(config.routes),
            pid=os.getpid(),
        )

    async def _keys_or_timeout(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.gateway.keys_loaded.wait(), seconds)
        except TimeoutError:
            log.warning("listening_without_keys", waited_seconds=seconds)

    async def _serve(self, server: Http1Server, where: HostPort) -> HostPort:
        port = await server.listen(where.host, where.port, reuse_port=self._reuse_port)
        return HostPort(host=where.host, port=port)

    async def drain(self) -> None:
        """Readiness 503 first, then stop accepting and let in-flight requests finish within the grace period."""
        self.gateway.start_draining()
        grace = self.gateway.config.shutdown_grace_seconds
        log.info("draining", grace_seconds=grace)
        listeners = [server for server in (self._proxy, self._decisions) if server is not None]
        cuts = await asyncio.gather(*(server.drain(grace) for server in listeners))
        cut = sum(len(connections) for connections in cuts)
        if cut:
            log.warning("drain_cut", connections=cut, grace_seconds=grace)
        for runner in self._runners:  # the admin port answered 503 while the proxy drained
            await runner.cleanup()
        await self.gateway.stop()
        log.info("stopped")

    def reload(self) -> bool:
        """Re-read the config file; keep the old rules when the new file is invalid."""
        source = self.gateway.config.source
        if source is None:
            return False
        metrics = self.gateway.metrics
        self.attempted_digest = "unreadable"
        try:
            # Read once: the digest logged and exported names exactly the bytes that were (or failed to be) loaded.
            raw = read_config_bytes(source)
            self.attempted_digest = content_digest(raw)
            config = config_from_bytes(raw, source)
        except ConfigError as exc:
            metrics.config_reloads.labels("failure").inc()
            log.error("config_reload_failed", file=str(source), problems=list(exc.problems))
            return False
        kept = self.gateway.use_config(config)
        configure_logging(config.log_level)
        for door in self.gateway.doors:
            door.relog()
        for server in (self._proxy, self._decisions):
            if server is not None:
                server.limits = config.limits  # for connections from now on
        metrics.config_reloads.labels("success").inc()
        metrics.config_loaded(config.digest)
        log.info("config_reloaded", file=str(source), routes=len(config.routes))
        if kept:
            log.warning("config_restart_required", settings=kept, note="these keep their old values until a restart")
        return True


class ConfigWatcher:
    """Polls the config file and reloads once a change has settled.

    Polling `stat` (which follows symlinks) sees both an in-place rewrite and a Kubernetes ConfigMap update, which
    swaps the `..data` symlink to a new directory. A change is acted on only when the file looks the same on two
    polls in a row, so a half-written file is not loaded; a reload happens only when the content differs from what
    the server last tried (`attempted`), so a file already reloaded by SIGHUP is not reloaded again.
    """

    def __init__(
        self,
        path: Path,
        reload: Callable[[], bool],
        attempted: Callable[[], str],
        interval: float = WATCH_INTERVAL_SECONDS,
    ) -> None:
        self._path = path
        self._reload = reload
        self._attempted = attempted
        self._interval = interval
        self._seen = self._signature()
        self._pending: tuple[int, int, int, int] | None = None

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None  # mid-swap or removed: wait for it to come back
        return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def poll(self) -> None:
        signature = self._signature()
        if signature is None or signature == self._seen:
            return
        if signature != self._pending:
            self._pending = signature  # changed since the last poll: let it settle for one more
            return
        self._seen = signature
        if config_digest(self._path) != self._attempted():
            self._reload()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.poll()


def _raise_open_file_limit(max_connections: int) -> None:
    """Make room for `max_connections` clients, the upstream pool's connections and the process's own files.

    The usual soft limit (1024) would make accept() fail long before the connection limit answers 503.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + UPSTREAM_POOL_MAX + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning("open_file_limit", limit=target, wanted=wanted, note="lower limits.max_connections")


async def _bind(runner: web.BaseRunner, where: HostPort, *, reuse_port: bool = False) -> HostPort:
    site = web.TCPSite(runner, where.host, where.port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    server = site._server  # aiohttp keeps the asyncio server here; we need it for the port chosen for port 0
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else where.port
    return HostPort(host=where.host, port=port)


def use_uvloop() -> None:
    """uvloop when installed: a faster event loop, same behaviour."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_until_signalled(server: Server, *, on_started: Callable[[Server], Awaitable[None]] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    source = server.gateway.config.source
    watcher = None
    if source is not None:
        watcher = asyncio.create_task(ConfigWatcher(source, server.reload, lambda: server.attempted_digest).run())
    batch_logs_in(loop)
    try:
        await server.start()
        if on_started is not None:
            await on_started(server)
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await server.drain()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        # Drained: a second SIGTERM (a process group and its members both signalled) must not turn exit 0 into 143.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        batch_logs_in(None)
    return 0
