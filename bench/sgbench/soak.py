"""`./bench/soak`: a bounded mixed load against a real `scopegate run`, every answer checked, while keys rotate and
the config reloads underneath it.

    keys (fresh) -> issuer (JWKS, a thread here) -> upstream (echo + request record, a process) -> scopegate (a
    process, config file in the work directory) -> tokens -> load || timeline (rotation, reloads) || RSS/fd samples
    -> stop scopegate (SIGTERM, must exit 0) -> upstream record and decision log against every answer -> table,
    bench/results/soak.{json,md}

The plan (soakplan.py) is every route kind of the README with allowed, denied and malformed requests: global API
resource, organization, organization-level API resource (path and header), claim conditions, audit mode, public,
no route, bad tokens, hostile paths, refused HTTP framing, tokens of the rotated-out key, a token expiring mid-run,
and injected upstream faults (500/503 passed through, a reset upstream connection -> 502, a slow upstream -> 504).
`soakcheck.py` says what "right" means. Loopback only; everything bounded: the load by `--seconds` (plus at most
OVERRUN_SECONDS while a timeline step is confirmed) and MAX_RATE requests a second, each request and each step by
its own timeout. Exit status 1 on any wrong decision, unexplained 5xx, unconfirmed step, unexercised kind, fds
not back near the start, or an unclean shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from . import net, soakreport
from .layout import BENCH_DIR, RESULTS_DIR
from .procs import HarnessError, Proc, ProcessSet, session_cpu_seconds
from .soakcheck import Clocks, CrossCheck, RequestIds, cross_check
from .soakcontrol import Control, Issuer, Resources, requests_total, scrape
from .soakload import REQUEST_TIMEOUT_SECONDS, Load, Schedule
from .soakplan import Plan
from .soakrules import UPSTREAM_TIMEOUT_SECONDS, config_texts
from .soaktokens import TokenBook, make_keys

DEFAULT_SECONDS = 120
DEFAULT_CONNECTIONS = 8
OVERRUN_SECONDS = 60.0  # the load goes on past --seconds at most this long, for a timeline step still confirming
TAIL_SECONDS = 1.0  # the load goes on at least this long after the last timeline step
MAX_RATE = 20000  # with --seconds, the bound on the request count (this machine does ~5,000 a second)
EXPIRY_FRACTION = 0.75  # the expiring token's exp, as a fraction of the run
SETTLE_SECONDS = 2.0  # after the load, how long the fds get to come back near the start
START_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 15.0  # after SIGTERM: the config's shutdown_grace_seconds (5) and a margin


@dataclass(frozen=True)
class Settings:
    seconds: float = DEFAULT_SECONDS
    connections: int = DEFAULT_CONNECTIONS
    results_dir: Path = RESULTS_DIR
    keep_work: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class World:
    """What the soak started before the load: the processes, their ports, the config files."""

    issuer: Issuer
    upstream: Proc
    scopegate: Proc
    proxy_port: int
    admin_port: int
    config_path: Path
    configs: dict[str, str]


@dataclass
class Outcome:
    """What a run leaves behind for the report."""

    load: Load
    control: Control
    resources: Resources
    cross: CrossCheck
    seconds: float
    exit_status: int | None
    requests_counted: int | None  # by scopegate's /metrics over the load (None: it was gone by then)
    cpu_seconds: float | None  # scopegate's over the load (None: it was gone by then)
    jwks_fetches: dict[str, int]


def run(settings: Settings) -> dict[str, Any]:
    """One soak; returns the results document (also written to `settings.results_dir`)."""
    procs = ProcessSet()
    work = Path(tempfile.mkdtemp(prefix="sgsoak-"))
    keep = settings.keep_work
    issuer: Issuer | None = None
    try:
        issuer = Issuer(make_keys(work / "keys"))
        issuer.start()
        world = _start(settings, procs, work, issuer)
        outcome = _soak(settings, procs, world)
        document = soakreport.document(settings, outcome, meta=soakreport.meta(settings))
        soakreport.write(document, settings.results_dir, quiet=settings.quiet)
        keep = keep or not document["verdict"]["clean"]
        return document
    except BaseException:
        keep = True
        raise
    finally:
        procs.stop_all()
        if issuer is not None:
            issuer.stop()
        if keep:
            print(f"soak: work directory (configs, logs) kept in {work}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _say(settings: Settings, text: str) -> None:
    if not settings.quiet:
        print(f"soak: {text}", flush=True)


def _start(settings: Settings, procs: ProcessSet, work: Path, issuer: Issuer) -> World:
    """The upstream and scopegate, started side by side; back once both serve (scopegate: /readyz, keys loaded)."""
    upstream_port, proxy_port, admin_port = net.free_port(), net.free_port(), net.free_port()
    configs = config_texts(proxy_port=proxy_port, admin_port=admin_port, upstream_port=upstream_port, issuer=issuer.url)
    config_path = work / "scopegate.yaml"
    config_path.write_text(configs["A"])
    path = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    upstream = procs.start(
        "upstream (echo)",
        [sys.executable, "-m", "sgbench.soakupstream", "--port", str(upstream_port)],
        work / "upstream.log",
        env={**os.environ, "PYTHONPATH": path},
    )
    argv = [sys.executable, "-m", "scopegate", "run", "--config", str(config_path)]
    scopegate = procs.start("scopegate", argv, work / "scopegate.log")
    net.wait_ready(upstream, lambda: net.answers(upstream_port, "/public/ready"), "serving", START_TIMEOUT_SECONDS)
    ready = lambda: net.answers(admin_port, "/readyz", 200)  # noqa: E731
    net.wait_ready(scopegate, ready, "ready (admin /readyz)", START_TIMEOUT_SECONDS)
    _say(settings, f"scopegate (pid {scopegate.pid}) ready on :{proxy_port}; upstream :{upstream_port}; {issuer.url}")
    return World(issuer, upstream, scopegate, proxy_port, admin_port, config_path, configs)


def _soak(settings: Settings, procs: ProcessSet, world: World) -> Outcome:
    load, control, resources = _prepare(settings, world)
    if resources.sample() is None:
        raise HarnessError(f"scopegate exited before the load:\n{world.scopegate.log_tail()}")
    counted_before = requests_total(scrape(world.admin_port))
    cpu_before = session_cpu_seconds(world.scopegate.pid)
    _say(settings, f"{settings.seconds:g} s of load on {settings.connections} connections, {len(load.cases)} cases ...")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_drive(load, control, resources, settings))
    seconds = time.monotonic() - control.started
    cpu_seconds, counted = None, None
    if world.scopegate.alive():
        cpu_seconds = session_cpu_seconds(world.scopegate.pid) - cpu_before
        _settle(resources, resources.fd_bound(settings.connections))
        counted = requests_total(scrape(world.admin_port)) - counted_before
    _say(settings, f"load done after {seconds:.1f} s, {load.schedule.issued:,} requests; SIGTERM to scopegate ...")
    exit_status = _terminate(procs, world.scopegate)
    procs.stop(world.upstream)
    smuggled = {case.smuggled_id for case in load.cases if case.smuggled_id}
    tally = load.tally
    cross = cross_check(
        load.cases, tally.answers, load.ids, tally.framing_answered, smuggled, world.upstream.log, world.scopegate.log
    )
    fetches = dict(world.issuer.fetches)
    return Outcome(load, control, resources, cross, seconds, exit_status, counted, cpu_seconds, fetches)


def _prepare(settings: Settings, world: World) -> tuple[Load, Control, Resources]:
    """The tokens (the expiring one's exp EXPIRY_FRACTION into the run), the load, the timeline, the sampler."""
    plan = Plan.default()
    expiring_at = math.ceil(time.time() + 1 + EXPIRY_FRACTION * settings.seconds)
    book = TokenBook(world.issuer.ring, world.issuer.url, expiring_at)
    started, started_wall = time.monotonic(), time.time()
    clocks = Clocks()
    clocks.begin("expiry", started + (expiring_at - started_wall) - 0.25)
    clocks.confirm("expiry", started + (expiring_at - started_wall) + 0.25)
    schedule = Schedule(
        plan.cases,
        stop_at=started + settings.seconds + OVERRUN_SECONDS,  # brought forward once the timeline is done
        max_requests=int(MAX_RATE * settings.seconds),
        long_until=started + settings.seconds - UPSTREAM_TIMEOUT_SECONDS - 1,  # the slow case: a 504 after 5 s
    )
    ids = RequestIds(f"soak-{secrets.token_hex(3)}-")
    load = Load(world.proxy_port, plan.cases, book, clocks, schedule, ids)
    control = Control(
        issuer=world.issuer,
        book=book,
        clocks=clocks,
        scopegate=world.scopegate,
        admin_port=world.admin_port,
        config_path=world.config_path,
        configs=world.configs,
        started=started,
        seconds=settings.seconds,
    )
    return load, control, Resources(world.scopegate, started)


async def _drive(load: Load, control: Control, resources: Resources, settings: Settings) -> None:
    schedule = load.schedule

    def stop_now() -> None:
        schedule.stop_at = min(schedule.stop_at, time.monotonic())

    sampler = asyncio.create_task(resources.run(schedule.stop_at + REQUEST_TIMEOUT_SECONDS, stop_now))
    timeline = asyncio.create_task(_timeline(control, schedule, settings.seconds))
    try:
        await load.run(settings.connections)
    finally:
        timeline.cancel()
        sampler.cancel()
        for task in (timeline, sampler):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _timeline(control: Control, schedule: Schedule, seconds: float) -> None:
    """The steps; then let the load run on to --seconds, or TAIL_SECONDS past the last step when that is later."""
    try:
        await control.run()
    finally:
        schedule.stop_at = min(schedule.stop_at, max(control.started + seconds, time.monotonic() + TAIL_SECONDS))


def _settle(resources: Resources, bound: float) -> None:
    """Give scopegate up to SETTLE_SECONDS to close what the load left open; the last sample is the end."""
    deadline = time.monotonic() + SETTLE_SECONDS
    time.sleep(0.5)
    while (sample := resources.sample()) is not None and sample["fds"] > bound and time.monotonic() < deadline:
        time.sleep(0.2)


def _terminate(procs: ProcessSet, proc: Proc) -> int | None:
    """One SIGTERM, as Kubernetes sends it, and the exit status once scopegate has drained. (ProcessSet.stop signals
    the session and then each member, so a process can get two; scopegate's second one may land after its drain has
    put the default handler back and end it with -15 instead of 0.)"""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=SHUTDOWN_TIMEOUT_SECONDS)
    status = proc.popen.returncode
    procs.stop(proc)  # whatever is left of its session (nothing, normally)
    return status


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description="Soak scopegate: mixed allowed/denied/malformed load, key rotation and reloads, every answer "
        "checked (see bench/README.md).",
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="load duration (default 120)")
    parser.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, help="concurrent client connections (default 8)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where soak.json and soak.md go")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    if not 5 <= args.seconds <= 3600:
        parser.error("--seconds: between 5 and 3600")
    if not 1 <= args.connections <= 256:
        parser.error("--connections: between 1 and 256")
    return Settings(args.seconds, args.connections, args.results_dir, args.keep_work)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        document = run(settings)
    except HarnessError as exc:
        print(f"\nsoak: FAILED: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\nsoak: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0 if document["verdict"]["clean"] else 1


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    print(f"\nsoak: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    raise SystemExit(main())
