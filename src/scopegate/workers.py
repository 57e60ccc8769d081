"""`scopegate run --workers N`: N processes, each with its own event loop, sharing the proxy port.

Each worker binds the proxy port with SO_REUSEPORT, so the kernel spreads connections across them, and serves the
whole pipeline on its own. The supervisor (this process) serves the admin port for all of them: `/metrics` sums the
workers' metrics through prometheus-client's multiprocess mode (each worker writes its values to files in a private
directory), and `/readyz` is 200 only while every worker is ready. SIGTERM drains all workers at once; SIGHUP
reaches each worker, and each also watches the config file itself. A worker that dies unexpectedly is started again,
with the config file as it is then if it is valid, else with the last valid one the supervisor read (so a broken
edit cannot turn one crash into a crash loop), and after a back-off that grows while it keeps dying young.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, multiprocess

from scopegate.app import create_admin_app
from scopegate.config import Config, config_from_bytes, read_config_bytes
from scopegate.errors import ConfigError
from scopegate.observability import Metrics, configure_logging, tag_worker

log = structlog.get_logger("scopegate")

_SUPERVISE_INTERVAL_SECONDS = 0.2
# A worker that dies is restarted after 1 s, then 2, 4 ... up to 30 s while it keeps dying within a minute of start.
_RESTART_DELAY_SECONDS = 1.0
_RESTART_DELAY_MAX_SECONDS = 30.0
_HEALTHY_AFTER_SECONDS = 60.0
# A worker's exit status when it cannot bind the proxy port: restarting it cannot help, so the supervisor stops.
EXIT_CANNOT_LISTEN = 3


def worker_main(config_path: str, config_bytes: bytes) -> None:
    """Entry point of one worker process (started with the spawn method: a fresh interpreter).

    The config comes as the bytes the supervisor validated: the file may have changed (or broken) since.
    """
    from scopegate.serve import Server, run_until_signalled, use_uvloop

    config = config_from_bytes(config_bytes, Path(config_path))
    configure_logging(config.log_level)
    tag_worker(os.getpid())  # which worker wrote each log line
    use_uvloop()
    server = Server(config, Metrics(process=False), admin=False, reuse_port=True)
    try:
        asyncio.run(run_until_signalled(server))
    except OSError as exc:
        log.error("cannot_listen", error=str(exc))
        sys.exit(EXIT_CANNOT_LISTEN)


@dataclass(slots=True)
class _Slot:
    """One worker position: its current process, and when and how soon it is restarted after dying."""

    process: BaseProcess
    started: float
    delay: float = _RESTART_DELAY_SECONDS
    restart_at: float | None = None


class _WorkerFiles(multiprocess.MultiProcessCollector):
    """The workers' metric files, summed; a file still empty is skipped instead of failing every collection.

    prometheus-client creates a worker's file empty and sizes it a moment later (prometheus/client_python#1199): a
    scrape in between, or a worker killed in between, would make /metrics and /readyz answer 500 until a restart.
    """

    def collect(self) -> Any:
        files = glob.glob(os.path.join(self._path, "*.db"))
        ready = [path for path in files if os.path.getsize(path) >= _MIN_METRICS_FILE]
        return self.merge(ready, accumulate=True)  # type: ignore[no-untyped-call]


# An mmap'ed metrics file starts with its 4-byte used-size and 4 bytes of padding; shorter, it holds nothing yet.
_MIN_METRICS_FILE = 8


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        if config.source is None:
            raise ValueError("workers need a config file to load")
        self._config = config
        self._good = read_config_bytes(config.source)  # the last config file content known to be valid
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self.failed = False  # a worker could not listen: the whole run fails
        self._draining = False
        self._registry = CollectorRegistry()
        _WorkerFiles(self._registry)  # type: ignore[no-untyped-call]

    def ready_workers(self) -> float:
        for family in self._registry.collect():
            if family.name == "scopegate_worker_ready":
                return sum(sample.value for sample in family.samples)
        return 0.0

    def _start_worker(self) -> BaseProcess:
        process = self._context.Process(
            target=worker_main, args=(str(self._config.source), self._config_now()), daemon=False
        )
        process.start()
        log.info("worker_started", pid=process.pid)
        return process

    def _config_now(self) -> bytes:
        """The config file's content when it is valid now, else the last valid content read."""
        assert self._config.source is not None
        try:
            raw = read_config_bytes(self._config.source)
            config_from_bytes(raw, self._config.source)
        except ConfigError as exc:
            log.warning("worker_config_kept", file=str(self._config.source), problems=list(exc.problems))
            return self._good
        self._good = raw
        return raw

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        admin_app = create_admin_app(self._registry, self._readiness, lambda: {"workers": len(self._slots)})
        admin = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
        await admin.setup()
        where = self._config.admin_listen
        try:  # before any worker starts: a port that cannot be bound fails the run instead of leaving workers behind
            await web.TCPSite(admin, where.host, where.port, reuse_address=True).start()
        except OSError:
            await admin.cleanup()
            raise
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_workers(signal.SIGHUP))
        now = time.monotonic()
        self._slots = [_Slot(self._start_worker(), now) for _ in range(self._count)]
        watch = asyncio.create_task(self._keep_workers_alive(stop))
        try:
            await stop.wait()
        finally:
            await self._drain(watch, admin)
        return 1 if self.failed else 0

    async def _drain(self, watch: asyncio.Task[None], admin: web.AppRunner) -> None:
        self._draining = True
        log.info("draining", workers=len(self._slots))
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        self._signal_workers(signal.SIGTERM)
        deadline = self._config.shutdown_grace_seconds + 5
        processes = [slot.process for slot in self._slots]
        # Joined together: each worker drains within the same grace period, so the whole drain takes one of them.
        await asyncio.gather(*(asyncio.to_thread(process.join, deadline) for process in processes))
        for process in processes:
            if process.is_alive():
                process.kill()
        await admin.cleanup()
        log.info("stopped")

    def _signal_workers(self, sig: signal.Signals) -> None:
        for slot in self._slots:
            process = slot.process
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    async def _keep_workers_alive(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(_SUPERVISE_INTERVAL_SECONDS)
            now = time.monotonic()
            for slot in self._slots:
                if slot.process.is_alive() or self._draining:
                    continue
                if slot.restart_at is None:
                    self._buried(slot, now, stop)
                elif now >= slot.restart_at:
                    slot.process, slot.started, slot.restart_at = self._start_worker(), now, None

    def _buried(self, slot: _Slot, now: float, stop: asyncio.Event) -> None:
        """A worker died: schedule its restart, sooner when it had lived long, later while it keeps dying young."""
        process = slot.process
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
        if process.exitcode == EXIT_CANNOT_LISTEN:
            log.error("worker_cannot_listen", pid=process.pid, note="stopping: a restart cannot bind the port either")
            self.failed = True
            stop.set()
            return
        if now - slot.started >= _HEALTHY_AFTER_SECONDS:
            slot.delay = _RESTART_DELAY_SECONDS
        log.error("worker_died", pid=process.pid, exitcode=process.exitcode, restart_in_seconds=slot.delay)
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, _RESTART_DELAY_MAX_SECONDS)

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        ready = self.ready_workers()
        if not self._draining and ready >= self._count:
            return True, {"workers": ready}
        return False, {"why": "draining" if self._draining else f"{ready:g} of {self._count} workers ready"}


def run_workers(config: Config, count: int) -> int:
    """Run `count` workers under a supervisor; the metrics directory lives exactly as long as they do."""
    directory = tempfile.mkdtemp(prefix="scopegate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # inherited by the spawned workers before they import
    try:
        return asyncio.run(Supervisor(config, count).run())
    finally:
        shutil.rmtree(Path(directory), ignore_errors=True)
