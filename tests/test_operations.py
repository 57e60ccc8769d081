"""Operating scopegate: what an operator sees on the admin port, on SIGTERM, in audit mode and on a terminal.

The helpers at the top run the real `scopegate run` in a subprocess (PYTHONPATH=src, as `tests/test_cli.py` does),
collect its stdout and stderr while it runs, and read `/metrics` the way Prometheus does; `test_reload.py`,
`test_workers.py` and `test_logs.py` use them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import select
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    API,
    ROOT,
    RULES,
    GatedUpstream,
    IssuerServer,
    Proxy,
    ProxyFactory,
    Running,
    free_port,
    make_config,
)

# --- helpers shared by the operations tests ---------------------------------------------------------------------

READY_LIMIT_SECONDS = 20.0
EXIT_LIMIT_SECONDS = 15.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SCOPEGATE_CONFIG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def config_text(
    issuer: str,
    upstream: str,
    *,
    port: int,
    admin_port: int,
    rules: str = RULES,
    extra: str = "",
    timeout: float = 2,
    grace: float = 5,
) -> str:
    """A complete config for `scopegate run` on fixed loopback ports."""
    return (
        f"listen: 127.0.0.1:{port}\n"
        f"admin_listen: 127.0.0.1:{admin_port}\n"
        f"upstream: {upstream}\n"
        f"upstream_timeout_seconds: {timeout}\n"
        f"shutdown_grace_seconds: {grace}\n"
        f"{extra}\n"
        f"auth:\n  issuer: {issuer}\n"
        f"{rules}"
    )


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; 0.0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


async def scrape(session: aiohttp.ClientSession, admin: str) -> Samples:
    async with session.get(admin + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return parse_metrics(await response.text())


async def eventually(check: Callable[[], Any], limit: float = 5.0, interval: float = 0.02) -> Any:
    """Awaits `check()` (sync or async) until it returns something truthy; fails after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"condition not met within {limit} s"
        await asyncio.sleep(interval)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> int:
    async with session.request(method, url, headers=headers) as response:
        await response.read()
        return response.status


async def slow_request_in_flight(session: aiohttp.ClientSession, cli: RunningCli, token: str) -> asyncio.Task[int]:
    """A /slow/2 request through the proxy, returned once the admin port counts it in flight."""
    slow = asyncio.create_task(status_of(session, cli.proxy + "/slow/2", bearer(token)))

    async def one_in_flight() -> bool:
        return metric(await scrape(session, cli.admin), "scopegate_inflight_requests") == 1

    await eventually(one_in_flight, limit=1.5)
    return slow


@dataclass
class RunningCli:
    """A `scopegate run` subprocess, its ports, and everything it has written so far."""

    process: asyncio.subprocess.Process
    config: Path
    proxy: str
    admin: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    terminated: bool = False

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log objects on stdout so far (those with `event == name` when given).

        Read as a stream of objects rather than line by line: worker processes share stdout, and their lines may
        interleave (see `test_workers.py::test_a_log_line_is_written_in_one_piece`).
        """
        text, decoder, objects, at = "".join(self.stdout), json.JSONDecoder(), [], 0
        while (at := _skip_space(text, at)) < len(text):
            obj, at = decoder.raw_decode(text, at)
            objects.append(obj)
        return [obj for obj in objects if name is None or obj.get("event") == name]

    def signal(self, sig: signal.Signals) -> None:
        self.terminated |= sig == signal.SIGTERM
        self.process.send_signal(sig)

    async def stop(self, limit: float = EXIT_LIMIT_SECONDS) -> int:
        """SIGTERM (once), then the exit code within `limit` seconds; all output is collected afterwards."""
        if not self.terminated:
            self.signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=limit)
        await asyncio.wait_for(asyncio.gather(*self.readers), timeout=5)
        return code


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


async def _collect(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    while line := await stream.readline():
        into.append(line.decode(errors="replace"))


async def wait_ready(session: aiohttp.ClientSession, cli: RunningCli, limit: float = READY_LIMIT_SECONDS) -> None:
    deadline = time.monotonic() + limit
    while True:
        if cli.process.returncode is not None:
            raise AssertionError(f"scopegate run exited with {cli.process.returncode}:\n{cli.output()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(cli.admin + "/readyz") as response:
                if response.status == 200:
                    return
        assert time.monotonic() < deadline, f"/readyz never answered 200:\n{cli.output()}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def scopegate_run(
    config: Path, port: int, admin_port: int, *args: str, ready: bool = True
) -> AsyncIterator[RunningCli]:
    """`scopegate run --config CONFIG ARGS...` in its own process group; killed (group and all) if left running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "run", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(), start_new_session=True,
    )  # fmt: skip
    cli = RunningCli(process, config, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
    cli.readers = [
        asyncio.create_task(_collect(process.stdout, cli.stdout)),
        asyncio.create_task(_collect(process.stderr, cli.stderr)),
    ]
    try:
        if ready:
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, cli)
        yield cli
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group: --workers children too
            await process.wait()
        for reader in cli.readers:
            reader.cancel()
        await asyncio.gather(*cli.readers, return_exceptions=True)


@dataclass
class Site:
    """A config file on fixed free ports, in front of the test's issuer and upstream."""

    path: Path
    port: int
    admin_port: int
    issuer: str
    upstream: str

    def write(self, **kwargs: Any) -> str:
        text = config_text(self.issuer, self.upstream, port=self.port, admin_port=self.admin_port, **kwargs)
        self.path.write_text(text)
        return text

    def run(self, *args: str, ready: bool = True) -> contextlib.AbstractAsyncContextManager[RunningCli]:
        return scopegate_run(self.path, self.port, self.admin_port, *args, ready=ready)


def new_site(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> Site:
    return Site(tmp_path / "config.yaml", free_port(), free_port(), issuer.issuer.issuer, upstream.url)


@pytest.fixture
def site(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> Site:
    return new_site(tmp_path, issuer, upstream)


# --- metrics ----------------------------------------------------------------------------------------------------


async def test_request_metrics_count_each_decision_and_reason(proxy: Proxy, issuer: IssuerServer) -> None:
    mint = issuer.issuer.mint
    good = mint(resource=API, scopes=["read:report"])
    weak = mint(resource=API, scopes=["read:other"])
    expired = mint(resource=API, scopes=["read:report"], ttl_seconds=-600)
    session, url = proxy.session, proxy.url
    before = await scrape(session, proxy.admin)
    statuses = [await status_of(session, f"{url}/api/reports/{n}", bearer(good)) for n in range(3)]
    statuses += [await status_of(session, f"{url}/api/reports/{n}") for n in range(2)]
    statuses += [await status_of(session, f"{url}/api/reports/1", bearer(weak))]
    statuses += [await status_of(session, f"{url}/api/reports/1", bearer(expired))]
    statuses += [await status_of(session, f"{url}/public/page")]
    statuses += [await status_of(session, f"{url}/nowhere")]
    assert statuses == [200, 200, 200, 401, 401, 403, 401, 200, 404]

    after = await scrape(session, proxy.admin)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    total = "scopegate_requests_total"
    assert grew(total, route="reports-read", decision="allow", reason="ok") == 3
    assert grew(total, route="reports-read", decision="deny", reason="missing_token") == 2
    assert grew(total, route="reports-read", decision="deny", reason="insufficient_scope") == 1
    assert grew(total, route="reports-read", decision="deny", reason="invalid_token") == 1
    assert grew(total, route="public", decision="allow", reason="public") == 1
    assert grew(total, route="", decision="deny", reason="no_route") == 1
    assert sum(series(after, total).values()) - sum(series(before, total).values()) == 9
    duration = "scopegate_request_duration_seconds_count"
    assert (grew(duration, route="reports-read"), grew(duration, route="public"), grew(duration, route="")) == (7, 1, 1)
    upstream = "scopegate_upstream_duration_seconds_count"
    assert grew(upstream, route="reports-read") == 3, "only forwarded requests time the upstream"
    assert grew(upstream, route="public") == 1
    assert grew(upstream, route="") == 0
    assert metric(after, "scopegate_jwks_keys") == 1.0
    assert metric(after, "scopegate_jwks_refresh_total", result="success") >= 1
    assert metric(after, "scopegate_jwks_refresh_total", result="failure") == 0
    info = series(after, "scopegate_config_info")
    assert list(info.values()) == [1.0]
    assert [dict(labels) for labels in info] == [{"hash": "none"}], "a config parsed from text has no file to hash"


async def test_inflight_gauge_counts_a_request_while_the_upstream_is_slow(
    issuer: IssuerServer, gated_upstream: tuple[GatedUpstream, Running], start_proxy: ProxyFactory
) -> None:
    gated, running = gated_upstream
    rules = 'routes: [{name: held, match: {path: "/hold"}, resource: "https://api.example.com"}]'
    proxy = await start_proxy(make_config(issuer.issuer.issuer, running.url, rules=rules))
    token = issuer.issuer.mint(resource=API)
    inflight = "scopegate_inflight_requests"
    assert metric(await scrape(proxy.session, proxy.admin), inflight) == 0
    held = asyncio.create_task(status_of(proxy.session, proxy.url + "/hold", bearer(token)))
    await asyncio.wait_for(gated.entered.wait(), 20)  # the upstream has the request and holds it
    assert metric(await scrape(proxy.session, proxy.admin), inflight) == 1
    gated.release.set()
    assert await asyncio.wait_for(held, timeout=20) == 200
    assert metric(await scrape(proxy.session, proxy.admin), inflight) == 0


async def test_metric_labels_stay_bounded_whatever_the_paths(proxy: Proxy) -> None:
    session = proxy.session
    assert await status_of(session, proxy.url + "/warm-up-no-route") == 404
    assert await status_of(session, proxy.url + "/api/reports/warm-up") == 401
    before = await scrape(session, proxy.admin)
    randoms = [uuid.uuid4().hex for _ in range(50)]
    for n, value in enumerate(randoms):
        path = f"/nowhere-{value}/x" if n % 2 else f"/api/reports/{value}"
        assert await status_of(session, proxy.url + path) in (401, 404)
    async with session.get(proxy.admin + "/metrics") as response:
        text = await response.text()
    after = parse_metrics(text)
    for name in ("scopegate_requests_total", "scopegate_request_duration_seconds_count"):
        assert series(after, name).keys() == series(before, name).keys(), name
    assert metric(after, "scopegate_requests_total", route="", decision="deny", reason="no_route") == 26
    leaked = [value for value in randoms if value in text]
    assert not leaked, "a path reached a metric label"


# --- SIGTERM drain ----------------------------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_requests_then_exits_0(site: Site, issuer: IssuerServer) -> None:
    site.write(grace=5, timeout=10)
    token = issuer.issuer.mint(resource=API)
    async with site.run() as cli, aiohttp.ClientSession() as session:
        slow = await slow_request_in_flight(session, cli, token)
        cli.signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def not_ready() -> bool:
            try:
                return await status_of(session, cli.admin + "/readyz") == 503
            except aiohttp.ClientError:
                return True  # the admin port is already gone: not ready either

        await eventually(not_ready, limit=1.0)

        async def refused() -> bool:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                try:
                    await status_of(fresh, cli.proxy + "/public/x")
                except aiohttp.ClientConnectionError:
                    return True
                return False

        await eventually(refused, limit=1.0)
        assert not slow.done(), "the slow request was still in flight while the listener closed"
        assert await asyncio.wait_for(slow, timeout=5) == 200
        assert await cli.stop(limit=5 + 3) == 0
        assert time.monotonic() - signalled < 5 + 3
    decision = next(line for line in cli.events("decision") if line["path"] == "/slow/2")
    assert (decision["status"], decision["reason"]) == (200, "ok")
    assert [line["event"] for line in cli.events() if line["event"] in ("draining", "stopped")] == [
        "draining",
        "stopped",
    ]


async def test_the_drain_ends_at_the_grace_period_and_logs_what_it_cut(site: Site, issuer: IssuerServer) -> None:
    """An upstream that never answers cannot hold the drain past `shutdown_grace_seconds`: the request is cut and
    logged, the process exits 0 (the stop limit is far below the 30 s the upstream would take)."""
    site.write(grace=1, timeout=60)
    token = issuer.issuer.mint(resource=API)
    async with site.run() as cli, aiohttp.ClientSession() as session:
        hung = asyncio.create_task(status_of(session, cli.proxy + "/slow/30", bearer(token)))

        async def one_in_flight() -> bool:
            return metric(await scrape(session, cli.admin), "scopegate_inflight_requests") == 1

        await eventually(one_in_flight, limit=5)
        cli.signal(signal.SIGTERM)
        assert await cli.stop(limit=15) == 0
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(hung, timeout=5)
    cut = [line for line in cli.events("decision") if line["path"] == "/slow/30"]
    assert [(line["route"], line["status"], line["detail"]) for line in cut] == [("echo-slow", 499, "cut_at_shutdown")]
    assert cut[0]["request_id"]
    assert [line["connections"] for line in cli.events("drain_cut")] == [1]


# --- audit mode -------------------------------------------------------------------------------------------------


async def test_global_audit_mode_forwards_denials_and_counts_them(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(make_config(issuer.issuer.issuer, upstream.url, extra="mode: audit"))
    weak = issuer.issuer.mint(subject="carol", resource=API, scopes=["read:other"])
    with structlog.testing.capture_logs() as logs:
        async with proxy.session.get(proxy.url + "/api/reports/1") as response:
            assert response.status == 200
            no_token = await response.json()
        async with proxy.session.get(proxy.url + "/api/reports/2", headers=bearer(weak)) as response:
            assert response.status == 200
            weak_seen = await response.json()
    assert no_token["path"] == "/api/reports/1", "forwarded to the echo upstream"
    assert "X-Auth-Subject" not in no_token["headers"], "no identity without a verified token"
    assert weak_seen["headers"]["X-Auth-Subject"] == "carol", "identity when the token verified"
    decisions = [(e["path"], e["decision"], e["reason"], e["status"]) for e in logs if e["event"] == "decision"]
    assert decisions == [
        ("/api/reports/1", "audit_deny", "missing_token", 200),
        ("/api/reports/2", "audit_deny", "insufficient_scope", 200),
    ]
    samples = await scrape(proxy.session, proxy.admin)
    total = "scopegate_requests_total"
    assert metric(samples, total, route="reports-read", decision="audit_deny", reason="missing_token") == 1
    assert metric(samples, total, route="reports-read", decision="audit_deny", reason="insufficient_scope") == 1
    assert metric(samples, total, route="reports-read", decision="deny", reason="missing_token") == 0


async def test_per_route_audit_mode_forwards_only_on_that_route(proxy: Proxy, issuer: IssuerServer) -> None:
    weak = issuer.issuer.mint(resource=API, scopes=["read:other"])
    with structlog.testing.capture_logs() as logs:
        beta = await status_of(proxy.session, proxy.url + "/beta/feature", bearer(weak))
        enforced = await status_of(proxy.session, proxy.url + "/api/reports/1", bearer(weak))
    assert (beta, enforced) == (200, 403)
    decisions = [(e["route"], e["decision"], e["reason"], e["detail"]) for e in logs if e["event"] == "decision"]
    assert decisions == [
        ("audited", "audit_deny", "insufficient_scope", "missing: beta"),
        ("reports-read", "deny", "insufficient_scope", "missing: read:report"),
    ]
    samples = await scrape(proxy.session, proxy.admin)
    assert metric(samples, "scopegate_requests_total", route="audited", decision="audit_deny",
                  reason="insufficient_scope") == 1  # fmt: skip
    assert metric(samples, "scopegate_upstream_duration_seconds_count", route="audited") == 1


async def test_audit_mode_never_forwards_hostile_or_ambiguous_requests(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(make_config(issuer.issuer.issuer, upstream.url, extra="mode: audit"))
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    bad_path = aiohttp.client.URL(proxy.url + "/public/%2F", encoded=True)
    async with proxy.session.get(bad_path) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"
    twice = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=twice) as response:
        assert response.status == 400
    samples = await scrape(proxy.session, proxy.admin)
    assert metric(samples, "scopegate_requests_total", route="", decision="deny", reason="bad_path") == 1
    assert metric(samples, "scopegate_requests_total", route="reports-read", decision="deny", reason="bad_request") == 1
    assert metric(samples, "scopegate_upstream_duration_seconds_count", route="reports-read") == 0


async def test_audit_mode_never_forwards_a_token_without_signing_keys(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/oidc"  # an issuer that never answers: no keys are ever loaded
    proxy = await start_proxy(make_config(nobody, upstream.url, extra="mode: audit"), wait_ready=False)
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])  # well-formed, but nothing to check it with
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=bearer(token)) as response:
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert (await response.json())["error"] == "temporarily_unavailable"
    assert await status_of(proxy.session, proxy.url + "/public/x") == 200, "public routes are still served"
    samples = await scrape(proxy.session, proxy.admin)
    assert metric(samples, "scopegate_requests_total", route="reports-read", decision="deny",
                  reason="jwks_unavailable") == 1  # fmt: skip
    assert metric(samples, "scopegate_upstream_duration_seconds_count", route="reports-read") == 0


async def test_audit_mode_without_signing_keys_still_audits_what_needs_no_key(
    upstream: Running, start_proxy: ProxyFactory
) -> None:
    """A tokenless request's decision (missing_token) needs no key, so audit forwards it like any audit denial;
    a token that would need a key to verify gets 503 (the test above)."""
    nobody = f"http://127.0.0.1:{free_port()}/oidc"
    proxy = await start_proxy(make_config(nobody, upstream.url, extra="mode: audit"), wait_ready=False)
    assert not proxy.server.gateway.ready
    assert await status_of(proxy.session, proxy.url + "/api/reports/1") == 200
    samples = await scrape(proxy.session, proxy.admin)
    assert metric(samples, "scopegate_requests_total", route="reports-read", decision="audit_deny",
                  reason="missing_token") == 1  # fmt: skip


# --- console rendering ------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _read_terminal(fd: int, until: Callable[[str], bool], limit: float) -> str:
    """Reads the pseudo-terminal until `until(text)` holds or `limit` seconds pass."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    while not until(_ANSI.sub("", b"".join(chunks).decode(errors="replace"))) and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.05)
        if readable:
            try:
                chunks.append(os.read(fd, 65536))
            except OSError:  # EIO: the terminal's other end is closed
                break
    return b"".join(chunks).decode(errors="replace")


async def test_logs_render_for_humans_when_stdout_is_a_terminal(site: Site) -> None:
    site.write()
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "run", "--config", str(site.path),
        stdout=terminal, stderr=asyncio.subprocess.DEVNULL, env=cli_env(),
    )  # fmt: skip
    os.close(terminal)
    try:
        started = await asyncio.to_thread(_read_terminal, controller, lambda text: "listen=" in text, 15.0)
        assert "started" in started, started
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, f"http://127.0.0.1:{site.port}/public/x") == 200
        more = await asyncio.to_thread(_read_terminal, controller, lambda text: "decision" in text, 5.0)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=EXIT_LIMIT_SECONDS)
        os.close(controller)
    assert code == 0
    text = _ANSI.sub("", started + more)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert any("decision" in line and "route=public" in line and "status=200" in line for line in lines), lines
