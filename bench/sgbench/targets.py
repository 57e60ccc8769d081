"""The targets under test: how each is configured, started fresh, and known to be ready.

Each is pinned to one core where it allows it: nginx with one worker, Envoy with --concurrency 1, the aiohttp
baselines and scopegate as one process; `scopegate-2` is scopegate with --workers 2 (the one multi-core target).
`identity` targets forward the caller's identity headers and write one JSON line per request to a file (scopegate's
decision log on its stdout; `envoy-jwt-logged`'s access log), as the checks verify.
Configs are rendered from bench/templates/ into the run's work directory with fresh ports on every start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import net
from .fixtures import Fixtures, nginx_argv
from .layout import AUDIENCE, SCOPE, TARGETS_DIR, VENV_BIN
from .procs import HarnessError, Proc, ProcessSet
from .templates import render

START_TIMEOUT_SECONDS = 30.0
ALL_SCENARIOS = ("warm", "rs256", "fresh-es384", "fresh-rs256")


@dataclass
class Context:
    """What starting a target needs: the process registry, a work directory, the upstream and issuer."""

    procs: ProcessSet
    work: Path
    fixtures: Fixtures
    validated: set[str] = field(default_factory=set)  # Envoy configs already checked with --mode validate
    scopegate_src: Path | None = None  # run scopegate from this source tree (--scopegate-ref) instead of the venv's


@dataclass(frozen=True)
class Running:
    """A started, ready target: its process (session leader) and the port wrk loads."""

    name: str
    proc: Proc
    port: int
    request_log: Path | None = None  # where it writes one JSON line per request (identity targets)
    admin_port: int | None = None  # scopegate's admin listener (/readyz, /metrics)


Launcher = Callable[[Context, Path], Running]


@dataclass(frozen=True)
class Target:
    name: str
    auth: bool  # enforces tokens: 401 without one, 403 without the scope
    scenarios: tuple[str, ...]
    python: bool  # a Python process tree py-spy can profile
    launch: Launcher
    identity: bool = False  # forwards X-Auth-* and X-Request-Id upstream, logs one JSON line per request

    def start(self, context: Context) -> Running:
        directory = context.work / self.name
        directory.mkdir(parents=True, exist_ok=True)
        return self.launch(context, directory)


def _nginx_proxy(context: Context, directory: Path) -> Running:
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "nginx-proxy-tmp" / name).mkdir(parents=True, exist_ok=True)
    port = net.free_port()
    values = {"WORK": directory, "PROXY_PORT": port, "UPSTREAM_PORT": context.fixtures.upstream_port}
    config = render("nginx-proxy.conf", values, directory / "nginx-proxy.conf")
    proc = context.procs.start("nginx-proxy", nginx_argv(config, directory), directory / "nginx-proxy.log")
    net.wait_ready(proc, lambda: net.answers(port), "serving", START_TIMEOUT_SECONDS)
    return Running("nginx-proxy", proc, port)


def _envoy(name: str, template: str, cache_config: str | None, access_log: bool = False) -> Launcher:
    def launch(context: Context, directory: Path) -> Running:
        port, admin = net.free_port(), net.free_port()
        values: dict[str, object] = {
            "ADMIN_PORT": admin,
            "PROXY_PORT": port,
            "UPSTREAM_PORT": context.fixtures.upstream_port,
        }
        request_log = directory / f"{name}.access.log" if access_log else None
        if request_log is not None:
            request_log.unlink(missing_ok=True)  # a fresh file for every start, as scopegate's stdout log
            values["ACCESS_LOG"] = request_log
        if cache_config is not None:
            values.update(
                ISSUER=context.fixtures.issuer,
                ISSUER_PORT=context.fixtures.issuer_port,
                JWKS_URI=context.fixtures.jwks_uri,
                AUDIENCE=AUDIENCE,
                SCOPE=SCOPE,
                JWT_CACHE_CONFIG=cache_config,
            )
        config = render(template, values, directory / f"{name}.yaml")
        _validate_envoy(context, name, config)
        argv = [str(VENV_BIN / "envoy"), "-c", str(config), "--concurrency", "1", "-l", "warning"]
        argv.append("--disable-hot-restart")
        if request_log is not None:
            # Envoy flushes access logs from its own thread every 64 KiB or every this often (default 10 s): under
            # load the 64 KiB come first; 1 s only spares the checks a 10 s wait for their few lines.
            argv += ["--file-flush-interval-msec", "1000"]
        proc = context.procs.start(name, argv, directory / f"{name}.log")
        ready = lambda: net.answers(admin, "/ready", 200) and net.answers(port)  # noqa: E731
        net.wait_ready(proc, ready, "ready (admin /ready, then the listener)", START_TIMEOUT_SECONDS)
        return Running(name, proc, port, request_log)

    return launch


def _validate_envoy(context: Context, name: str, config: Path) -> None:
    """`envoy --mode validate` once per target and run: a config error says so before anything is measured."""
    if name in context.validated:
        return
    argv = [str(VENV_BIN / "envoy"), "--mode", "validate", "-c", str(config), "-l", "warning", "--disable-hot-restart"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise HarnessError(f"{name}: envoy --mode validate {config} failed:\n{output[-3000:]}")
    if "warning" in output.lower():
        print(f"bench: {name}: envoy --mode validate warns:\n{output[-3000:]}", flush=True)
    context.validated.add(name)


def _aiohttp(name: str, auth: bool) -> Launcher:
    def launch(context: Context, directory: Path) -> Running:
        port = net.free_port()
        upstream = f"http://127.0.0.1:{context.fixtures.upstream_port}"
        argv = [sys.executable, str(TARGETS_DIR / "aioproxy.py"), "--port", str(port), "--upstream", upstream]
        if auth:
            argv += ["--issuer", context.fixtures.issuer, "--audience", AUDIENCE, "--scope", SCOPE]
        proc = context.procs.start(name, argv, directory / f"{name}.log")
        net.wait_ready(proc, lambda: net.answers(port), "serving", START_TIMEOUT_SECONDS)
        return Running(name, proc, port)

    return launch


def scopegate_launcher(
    name: str,
    workers: int,
    template: str = "scopegate.yaml",
    extra_values: Mapping[str, object] | None = None,
    truncatable_log: bool = False,
) -> Launcher:
    """scopegate with the config rendered from `template` (with `extra_values` for its own placeholders);
    `truncatable_log`: its stdout file is opened O_APPEND, so the harness may truncate it during a long run."""

    def launch(context: Context, directory: Path) -> Running:
        port, admin = net.free_port(), net.free_port()
        values = {
            "PROXY_PORT": port,
            "ADMIN_PORT": admin,
            "UPSTREAM_PORT": context.fixtures.upstream_port,
            "ISSUER": context.fixtures.issuer,
            "AUDIENCE": AUDIENCE,
            "SCOPE": SCOPE,
            **(extra_values or {}),
        }
        config = render(template, values, directory / "scopegate.yaml")
        argv = [sys.executable, "-m", "scopegate", "run", "--config", str(config)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        env = dict(os.environ)
        if context.scopegate_src is not None:  # ahead of the venv's editable install of the working tree
            env["PYTHONPATH"] = str(context.scopegate_src)
        # stdout (one JSON decision log line per request) goes to a file, as a container runtime would keep it.
        log = directory / f"{name}.log"
        proc = context.procs.start(name, argv, log, env=env, append=truncatable_log)
        net.wait_ready(proc, lambda: net.answers(admin, "/readyz", 200), "ready (admin /readyz)", START_TIMEOUT_SECONDS)
        net.wait_ready(proc, lambda: net.answers(port), "serving", START_TIMEOUT_SECONDS)
        return Running(name, proc, port, log, admin)

    return launch


_JWT_CACHE = "jwt_cache_config: { jwt_cache_size: 1000 }"
_NO_JWT_CACHE = "# no jwt_cache_config: every request verifies its token's signature"

TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("nginx-proxy", False, ("warm",), False, _nginx_proxy),
        Target("envoy-plain", False, ("warm",), False, _envoy("envoy-plain", "envoy-plain.yaml", None)),
        Target("envoy-jwt", True, ALL_SCENARIOS, False, _envoy("envoy-jwt", "envoy-jwt.yaml", _JWT_CACHE)),
        Target(
            "envoy-jwt-logged",
            True,
            ALL_SCENARIOS,
            False,
            _envoy("envoy-jwt-logged", "envoy-jwt-logged.yaml", _JWT_CACHE, access_log=True),
            identity=True,
        ),
        Target(
            "envoy-jwt-nocache",
            True,
            ("warm", "fresh-es384", "fresh-rs256"),
            False,
            _envoy("envoy-jwt-nocache", "envoy-jwt.yaml", _NO_JWT_CACHE),
        ),
        Target("aiohttp-minimal", False, ("warm",), True, _aiohttp("aiohttp-minimal", auth=False)),
        Target("aiohttp-pyjwt", True, ("warm", "fresh-es384", "fresh-rs256"), True, _aiohttp("aiohttp-pyjwt", True)),
        Target("scopegate", True, ALL_SCENARIOS, True, scopegate_launcher("scopegate", workers=1), identity=True),
        Target("scopegate-2", True, ("warm",), True, scopegate_launcher("scopegate-2", workers=2), identity=True),
    )
}
