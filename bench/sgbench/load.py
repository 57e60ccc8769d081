"""Load with wrk: one thread, N connections, a Lua script from bench/wrk/ that sets the Authorization header and
prints one machine-readable result line (see bench/wrk/report.lua), parsed here.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import LOOPBACK, REQUEST_PATH, WRK_DIR
from .procs import HarnessError, ProcessSet
from .tokens import TokenSet

WRK = "wrk"
_MARKER = "SGBENCH_RESULT "


@dataclass(frozen=True)
class Scenario:
    name: str
    alg: str
    fresh: bool  # a distinct token on every request, from the pool


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("warm", "ES384", fresh=False),
        Scenario("rs256", "RS256", fresh=False),
        Scenario("fresh-es384", "ES384", fresh=True),
        Scenario("fresh-rs256", "RS256", fresh=True),
    )
}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    consumed: int
    wraps: int

    @property
    def non2xx(self) -> int:
        """Responses with status >= 400 (wrk's `status` errors; no target here answers 1xx or 3xx)."""
        return self.errors["status"]

    @property
    def socket_errors(self) -> int:
        return sum(count for kind, count in self.errors.items() if kind != "status")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "errors": self.errors,
            "non2xx": self.non2xx,
            "socket_errors": self.socket_errors,
            "latency_us": self.latency_us,
            "pool_consumed": self.consumed,
            "pool_wraps": self.wraps,
        }


@dataclass(frozen=True)
class Load:
    """How to load: duration, connections, and which tokens a scenario sends."""

    connections: int
    tokens: TokenSet
    pool_limit: dict[str, int]


def run_wrk(
    procs: ProcessSet, log: Path, port: int, scenario: Scenario, load: Load, seconds: int, start: int = 0
) -> WrkResult:
    """One wrk run; `start` is the first pool line a fresh scenario sends."""
    url = f"http://{LOOPBACK}:{port}{REQUEST_PATH}"
    if scenario.fresh:
        script = WRK_DIR / "fresh.lua"
        pool = load.tokens.pools[scenario.alg]
        script_args = [str(pool), str(start), str(load.pool_limit[scenario.alg])]
    else:
        script = WRK_DIR / "warm.lua"
        script_args = [load.tokens.warm[scenario.alg]]
    argv = [WRK, "-t1", f"-c{load.connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url]
    proc = procs.start("wrk", [*argv, "--", *script_args], log)
    try:
        proc.popen.wait(timeout=seconds + 90)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"wrk did not finish a {seconds} s run in {seconds + 90} s:\n{proc.log_tail()}") from exc
    finally:
        procs.stop(proc)
    if proc.popen.returncode != 0:
        raise HarnessError(f"wrk exited with {proc.popen.returncode}:\n{proc.log_tail()}")
    return _parse(log.read_text(errors="replace"), proc.log_tail())


def _parse(output: str, tail: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(_MARKER):
            data = json.loads(line[len(_MARKER) :])
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=float(data["duration_s"]),
                rps=float(data["rps"]),
                errors={kind: int(count) for kind, count in data["errors"].items()},
                latency_us={name: float(value) for name, value in data["latency_us"].items()},
                consumed=int(data["consumed"]),
                wraps=int(data["wraps"]),
            )
    raise HarnessError(f"wrk printed no {_MARKER.strip()} line:\n{tail}")
