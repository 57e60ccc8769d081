"""One measured run, and the interleaved rounds of them.

A measured run: start the target fresh (empty caches), read its idle RSS, check its answers, warm it up with the
same scenario, then run wrk while reading the CPU time of the target's whole process tree before and after, and
its RSS at the end; stop it. Rounds interleave: round 1 runs every target x scenario once, then round 2, ...
so a slow drift of the machine spreads over all targets instead of landing on one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import checks, profiling
from .load import SCENARIOS, Load, WrkResult, run_wrk
from .procs import HarnessError, session_cpu_seconds, session_rss_bytes
from .targets import Context, Running, Target


@dataclass(frozen=True)
class Settings:
    seconds: int
    warmup: int
    rounds: int


def plan(targets: Sequence[Target], scenarios: Sequence[str] | None) -> list[tuple[Target, str]]:
    """Every selected target x its scenarios (only those in `scenarios` when given), in a fixed order."""
    pairs = []
    for target in targets:
        for scenario in target.scenarios:
            if scenarios is None or scenario in scenarios:
                pairs.append((target, scenario))
    return pairs


def run_rounds(
    context: Context, load: Load, pairs: Sequence[tuple[Target, str]], settings: Settings
) -> list[dict[str, Any]]:
    runs = []
    for round_number in range(1, settings.rounds + 1):
        for index, (target, scenario) in enumerate(pairs, start=1):
            label = f"round {round_number}/{settings.rounds}, run {index}/{len(pairs)}: {target.name} {scenario}"
            print(f"bench: {label} ...", flush=True)
            run = measure(context, load, target, scenario, settings)
            run["round"] = round_number
            runs.append(run)
            print(f"bench:   {describe(run)}", flush=True)
    return runs


def measure(
    context: Context,
    load: Load,
    target: Target,
    scenario_name: str,
    settings: Settings,
    profile: Callable[[Running], profiling.Recorder] | None = None,
) -> dict[str, Any]:
    scenario = SCENARIOS[scenario_name]
    running = target.start(context)
    wrk_log = context.work / target.name / "wrk.log"
    try:
        rss_idle = session_rss_bytes(running.proc.pid)
        checks.check(target, running, load.tokens)
        start = 0
        if settings.warmup > 0:
            warmup = run_wrk(context.procs, wrk_log, running.port, scenario, load, settings.warmup)
            start = warmup.consumed
        recorder = profile(running) if profile is not None else None
        cpu_before, clock_before = session_cpu_seconds(running.proc.pid), time.monotonic()
        result = run_wrk(context.procs, wrk_log, running.port, scenario, load, settings.seconds, start)
        cpu_after, clock_after = session_cpu_seconds(running.proc.pid), time.monotonic()
        rss_end = session_rss_bytes(running.proc.pid)
        if recorder is not None:
            recorder.finish()
        if not running.proc.alive():
            raise HarnessError(f"{target.name} died during the {scenario_name} run:\n{running.proc.log_tail()}")
    finally:
        context.procs.stop(running.proc)
    return _record(target, scenario_name, result, cpu_after - cpu_before, clock_after - clock_before, rss_idle, rss_end)


def _record(
    target: Target,
    scenario: str,
    result: WrkResult,
    cpu_seconds: float,
    wall_seconds: float,
    rss_idle: int,
    rss_end: int,
) -> dict[str, Any]:
    requests = max(result.requests, 1)
    return {
        "target": target.name,
        "scenario": scenario,
        **result.as_dict(),
        "cpu_seconds": cpu_seconds,
        "cpu_us_per_request": cpu_seconds * 1e6 / requests,
        "cpu_cores_used": cpu_seconds / result.duration_s if result.duration_s > 0 else 0.0,
        "cpu_window_s": wall_seconds,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "clean": result.non2xx == 0 and result.socket_errors == 0 and result.wraps == 0,
    }


def describe(run: dict[str, Any]) -> str:
    latency = run["latency_us"]
    text = (
        f"{run['rps']:,.0f} req/s, p50 {latency['p50'] / 1000:.2f} ms, p99 {latency['p99'] / 1000:.2f} ms, "
        f"{run['cpu_us_per_request']:.0f} µs CPU/req ({run['cpu_cores_used']:.2f} cores), "
        f"RSS {run['rss_idle_mb']:.0f} -> {run['rss_end_mb']:.0f} MB"
    )
    problems = []
    if run["non2xx"]:
        problems.append(f"{run['non2xx']} non-2xx")
    if run["socket_errors"]:
        problems.append(f"{run['socket_errors']} socket errors {run['errors']}")
    if run["pool_wraps"]:
        problems.append(f"token pool wrapped {run['pool_wraps']}x")
    return text + (f"  !! {', '.join(problems)}" if problems else "")
