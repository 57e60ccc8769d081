"""`scopegate run --workers N`: N processes, each with its own event loop, sharing the proxy port.

Each worker binds the proxy port with SO_REUSEPORT, so the kernel spreads connections across them, and serves the
whole pipeline on its own. The supervisor (this process) serves the admin port for all of them: `/metrics` sums the
workers' metrics through prometheus-client's multiprocess mode (each worker writes its values to files in a private
directory), and `/readyz` is 200 only while every worker is ready. SIGTERM drains all workers; SIGHUP reaches each
worker, and each also watches the config file itself. A worker that dies unexpectedly is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, multiprocess

from scopegate.app import create_admin_app
from scopegate.config import Config, load_config
from scopegate.observability import Metrics, configure_logging, tag_worker

log = structlog.get_logger("scopegate")

_RESTART_DELAY_SECONDS = 1.0
_SUPERVISE_INTERVAL_SECONDS = 0.2


def worker_main(config_path: str) -> None:
    """Entry point of one worker process (started with the spawn method: a fresh interpreter)."""
    from scopegate.cli import use_uvloop
    from scopegate.serve import Server, run_until_signalled

    config = load_config(config_path)
    configure_logging(config.log_level)
    tag_worker(os.getpid())  # which worker wrote each log line
    use_uvloop()
    server = Server(config, Metrics(process=False), admin=False, reuse_port=True)
    asyncio.run(run_until_signalled(server))


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        if config.source is None:
            raise ValueError("workers need a config file to load")
        self._config = config
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._draining = False
        self._registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]

    def ready_workers(self) -> float:
        for family in self._registry.collect():
            if family.name == "scopegate_worker_ready":
                return sum(sample.value for sample in family.samples)
        return 0.0

    def _start_worker(self) -> BaseProcess:
        process = self._context.Process(target=worker_main, args=(str(self._config.source),), daemon=False)
        process.start()
        log.info("worker_started", pid=process.pid)
        return process

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_workers(signal.SIGHUP))
        self._workers = [self._start_worker() for _ in range(self._count)]
        admin_app = create_admin_app(self._registry, self._readiness, lambda: {"workers": len(self._workers)})
        admin = web.AppRunner(admin_app, access_log=None, shutdown_timeout=1.0)
        await admin.setup()
        where = self._config.admin_listen
        await web.TCPSite(admin, where.host, where.port, reuse_address=True).start()
        watch = asyncio.create_task(self._keep_workers_alive(stop))
        try:
            await stop.wait()
        finally:
            await self._drain(watch, admin)
        return 0

    async def _drain(self, watch: asyncio.Task[None], admin: web.AppRunner) -> None:
        self._draining = True
        log.info("draining", workers=len(self._workers))
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        self._signal_workers(signal.SIGTERM)
        deadline = self._config.shutdown_grace_seconds + 5
        for process in self._workers:
            await asyncio.to_thread(process.join, deadline)
            if process.is_alive():
                process.kill()
        await admin.cleanup()
        log.info("stopped")

    def _signal_workers(self, sig: signal.Signals) -> None:
        for process in self._workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    async def _keep_workers_alive(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(_SUPERVISE_INTERVAL_SECONDS)
            for index, process in enumerate(self._workers):
                if process.is_alive() or self._draining:
                    continue
                log.error("worker_died", pid=process.pid, exitcode=process.exitcode)
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                await asyncio.sleep(_RESTART_DELAY_SECONDS)
                self._workers[index] = self._start_worker()

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
