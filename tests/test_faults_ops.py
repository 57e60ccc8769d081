"""Operating a loaded `scopegate run`: a SIGHUP storm with config edits good and bad, a worker killed with SIGKILL,
and the supervisor's promises around starting, restarting and stopping workers.

Each test runs the real CLI in a subprocess (the main ones under a bounded load, `opslib.Load`) and checks every
answer against the rules that could have been in force, that no traceback reaches the logs, and (under load) that
the processes' descriptors return to their baseline. Waits are on events (log lines, `/metrics`, `/readyz`),
bounded by EVENT_LIMIT_SECONDS. The supervisor bugs of issue #8 are pinned too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scopegate.config import content_digest
from scopegate.serve import config_digest
from test_operations import (
    RunningCli,
    Site,
    bearer,
    config_text,
    eventually,
    metric,
    parse_metrics,
    scrape,
    series,
    status_of,
)

from conftest import RULES, free_port
from opslib import (
    EVENT_LIMIT_SECONDS,
    EventTail,
    JwksServer,
    Load,
    Probe,
    assert_no_crash_in_logs,
    auth_settings,
    echo_upstream,
    fd_baseline,
    fds_return_to,
    tally,
    write_atomically,
)
from tokenlib import EC_A, EC_B

RELOADS = "scopegate_config_reloads_total"


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    async with echo_upstream() as url:
        yield url


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(EC_A)
    await server.up()
    yield server
    await server.down()


@pytest.fixture
def site(tmp_path: Path, jwks_server: JwksServer, echo: str) -> Site:
    return Site(tmp_path / "config.yaml", free_port(), free_port(), jwks_server.issuer, echo)


def config_for(site: Site, rules: str = RULES, *, grace: float = 5, refresh: float = 300) -> str:
    """A whole config file for `site`; no background key refresh unless asked, unknown kids refetch at once."""
    return config_text(
        site.issuer,
        site.upstream,
        port=site.port,
        admin_port=site.admin_port,
        grace=grace,
        rules=auth_settings(refresh=refresh, cooldown=0, rules=rules),
    )


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# Two rule sets a request can tell apart: R2 wants write:report where R1 wants read:report, and moves the public
# route from /public to /open. Each kind of request below has one answer under each.
R1 = RULES
R2 = replaced(
    replaced(RULES, "    scopes: [read:report]\n", "    scopes: [write:report]\n"),
    'path: "/public/**"',
    'path: "/open/**"',
)
ANSWERS = {  # kind: (answer under R1, answer under R2)
    "read": (200, 403),
    "write": (403, 200),
    "no-token": (401, 401),
    "forged": (401, 401),
    "public": (200, 404),
    "open": (404, 200),
}
# Files a reload must refuse, each for another reason.
INVALID = {
    "bad method": replaced(R1, "methods: [GET, HEAD, POST]", "methods: [GET, FETCH]"),
    "bad yaml": R1 + "  - name: [unclosed\n",
    "no requirement": replaced(R1, "    resource: https://api.example.com\n    scopes: [read:report]\n", ""),
    "empty": "",  # the whole file, not its rules
}


def _probes(jwks_server: JwksServer) -> list[Probe]:
    probes = []
    for n in range(8):
        probes += [
            Probe("read", f"/api/reports/{n}", bearer(jwks_server.token(EC_A, scope="read:report"))),
            Probe("write", f"/api/reports/{n}", bearer(jwks_server.token(EC_A, scope="write:report"))),
            Probe("no-token", f"/api/reports/{n}"),
            Probe("forged", f"/api/reports/{n}", bearer(jwks_server.token(EC_B, kid=EC_A.kid))),
            Probe("public", f"/public/{n}"),
            Probe("open", f"/open/{n}"),
        ]
    return probes


async def reloads(session: aiohttp.ClientSession, cli: RunningCli, result: str) -> float:
    return metric(await scrape(session, cli.admin), RELOADS, result=result)


async def in_force(session: aiohttp.ClientSession, cli: RunningCli, path: Path) -> bool:
    """The config file's current content is the one in force (its hash is the one `scopegate_config_info` shows)."""
    info = series(await scrape(session, cli.admin), "scopegate_config_info")
    return info == {(("hash", config_digest(path)),): 1.0}


# --- SIGHUP storm -----------------------------------------------------------------------------------------------

STORM_SIGNALS = 50


async def more_reloads(session: aiohttp.ClientSession, cli: RunningCli, result: str, than: float) -> None:
    async def grew() -> bool:
        return await reloads(session, cli, result) > than

    await eventually(grew, limit=EVENT_LIMIT_SECONDS)


def storm_edits(site: Site) -> list[str]:
    """R2, an invalid file, R1, for each invalid file in turn."""
    edits = []
    for name, rules in INVALID.items():
        invalid = "" if name == "empty" else config_for(site, rules)
        edits += [config_for(site, R2), invalid, config_for(site, R1)]
    return edits


async def test_a_sighup_storm_with_config_edits_under_load_fails_no_request(
    site: Site, jwks_server: JwksServer
) -> None:
    """50 SIGHUPs, every third after an atomic rewrite cycling through R1, R2 and four invalid files, while 16
    connections send requests: nothing fails, no 5xx, every answer is R1's or R2's; invalid files are counted
    and the rules before them keep serving; once the edits stop, exactly the last valid rules serve."""
    site.path.write_text(config_for(site, R1))
    edits = storm_edits(site)
    loop = asyncio.get_running_loop()
    async with site.run() as cli:
        baseline = await fd_baseline(cli.process.pid)
        loaded = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
        async with loaded, aiohttp.ClientSession() as session:
            load = Load(loaded, cli.proxy, _probes(jwks_server), concurrency=16, max_requests=20_000, max_seconds=40)
            load.start()
            await load.reach(200)
            for n in range(STORM_SIGNALS):
                if n % 3 == 0:
                    write_atomically(site.path, edits[(n // 3) % len(edits)])
                cli.signal(signal.SIGHUP)
                await asyncio.sleep(0.02)  # pacing, so that the signals are not all one
            assert not load.exhausted, "the load ran through the storm"

            write_atomically(site.path, config_for(site, R2))
            cli.signal(signal.SIGHUP)
            await eventually(lambda: in_force(session, cli, site.path), limit=EVENT_LIMIT_SECONDS)
            settled = loop.time()
            failures = await reloads(session, cli, "failure")
            assert failures >= 1, "the storm's invalid files were refused"
            assert await reloads(session, cli, "success") >= 2
            write_atomically(site.path, config_for(site, INVALID["bad method"]))
            cli.signal(signal.SIGHUP)
            await more_reloads(session, cli, "failure", than=failures)
            await load.reach(len(load.outcomes) + 500)
            outcomes = await load.stop()
        await fds_return_to(cli.process.pid, baseline)
        assert await cli.stop() == 0

    events = assert_no_crash_in_logs(cli)
    failed = [o for o in outcomes if o.status is None or o.status >= 500]
    assert not failed, tally(failed)
    wrong = [o for o in outcomes if o.status not in ANSWERS[o.kind]]
    assert not wrong, tally(wrong)
    after = [o for o in outcomes if o.sent > settled]
    assert len(after) >= 400, "hundreds of answers once the edits stopped"
    assert [o for o in after if o.status != ANSWERS[o.kind][1]] == [], "R2 alone once the edits stopped"
    for rules in (0, 1):
        telling = [
            o for o in outcomes if o.sent < settled and o.status == ANSWERS[o.kind][rules] != ANSWERS[o.kind][1 - rules]
        ]
        assert telling, f"R{rules + 1} served during the storm"
    refused = named(events, "config_reload_failed")
    assert refused
    assert all(e["problems"] for e in refused)
    assert len(named(events, "decision")) == len(outcomes), "one decision line a request, reloads or not"


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event.get("event") == name]


# --- workers ----------------------------------------------------------------------------------------------------

WORKER_ANSWERS = {"read": 200, "weak": 403, "no-token": 401, "forged": 401, "public": 200}
NEEDS_KEYS = frozenset({"read", "weak", "forged"})
CONNECTION_ERRORS = frozenset(
    name
    for name in dir(aiohttp)
    if isinstance(cls := getattr(aiohttp, name), type) and issubclass(cls, aiohttp.ClientConnectionError)
)


def _worker_probes(jwks_server: JwksServer) -> list[Probe]:
    """POST, which aiohttp never retries by itself on a broken connection: the test sees every failure."""
    probes = []
    for n in range(8):
        probes += [
            Probe("read", f"/api/reports/{n}", bearer(jwks_server.token(EC_A)), "POST"),
            Probe("weak", f"/api/reports/{n}", bearer(jwks_server.token(EC_A, scope="read:other")), "POST"),
            Probe("no-token", f"/api/reports/{n}", {}, "POST"),
            Probe("forged", f"/api/reports/{n}", bearer(jwks_server.token(EC_B, kid=EC_A.kid)), "POST"),
            Probe("public", f"/public/{n}", {}, "POST"),
        ]
    return probes


def new_connection_each_time() -> aiohttp.ClientSession:
    """A session opening a connection per request, so that SO_REUSEPORT may hand each to either worker."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16))


def worker_pids(tail: EventTail) -> list[int]:
    return [event["pid"] for event in tail.named("worker_started")]


def served_by(tail: EventTail) -> set[int]:
    return {event["worker_pid"] for event in tail.named("decision")}


async def supervisor_says(session: aiohttp.ClientSession, cli: RunningCli, readyz: int, workers: int) -> bool:
    """/readyz answers `readyz` and `scopegate_worker_ready` is `workers`."""
    async with session.get(cli.admin + "/metrics") as response:
        assert response.status == 200, "a worker's metric file, even empty, never breaks the collection"
        samples = parse_metrics(await response.text())
    if metric(samples, "scopegate_worker_ready") != workers:
        return False
    return await status_of(session, cli.admin + "/readyz") == readyz


async def all_ready(session: aiohttp.ClientSession, cli: RunningCli, workers: int) -> bool:
    return await supervisor_says(session, cli, 200, workers)


async def test_a_worker_killed_under_load_is_restarted_and_the_other_keeps_serving(
    site: Site, jwks_server: JwksServer
) -> None:
    """SIGKILL one of two workers while 16 clients open a connection per request: requests fail only with a
    connection error, and only those sent before the supervisor saw the worker die; the other worker answers
    meanwhile; the supervisor starts a new worker and all are ready again; no answer is ever a wrong decision (the
    replacement takes connections only once it has keys, so not even a 503)."""
    site.path.write_text(config_for(site))
    loop = asyncio.get_running_loop()
    async with site.run("--workers", "2") as cli:
        tail = EventTail(cli)
        victim, survivor = worker_pids(tail)
        async with new_connection_each_time() as loaded, aiohttp.ClientSession() as session:
            load = Load(loaded, cli.proxy, _worker_probes(jwks_server), max_requests=20_000, max_seconds=40)
            load.start()
            await eventually(lambda: served_by(tail) == {victim, survivor}, limit=EVENT_LIMIT_SECONDS)
            # Taken once both have served: a worker opens its metric files on first use.
            baselines = {pid: await fd_baseline(pid) for pid in (cli.process.pid, survivor)}

            os.kill(victim, signal.SIGKILL)
            killed = loop.time()
            await eventually(lambda: [e["pid"] for e in tail.named("worker_died")] == [victim], EVENT_LIMIT_SECONDS)
            seen_dead = loop.time()
            await eventually(lambda: len(worker_pids(tail)) == 3, limit=EVENT_LIMIT_SECONDS)
            replacement = worker_pids(tail)[2]
            await eventually(lambda: all_ready(session, cli, 2), limit=EVENT_LIMIT_SECONDS)
            back = loop.time()
            await eventually(lambda: replacement in served_by(tail), limit=EVENT_LIMIT_SECONDS)
            assert not load.exhausted, "the load ran until the replacement served"
            outcomes = await load.stop()
        for pid, baseline in baselines.items():
            await fds_return_to(pid, baseline)
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)

    wrong = [o for o in outcomes if o.status not in (WORKER_ANSWERS[o.kind], None)]
    assert not wrong, tally(wrong)
    failed = [o for o in outcomes if o.status is None]
    assert {o.error for o in failed} <= CONNECTION_ERRORS, tally(failed)
    assert not [o for o in failed if o.sent > seen_dead], "a request failed that was sent after the worker was gone"
    assert [o for o in outcomes if killed < o.sent and o.done < back and o.status is not None], "served in the gap"
    assert len(named(cli.events(), "worker_died")) == 1


async def test_readyz_is_not_ready_while_a_restarted_worker_has_no_keys(site: Site, jwks_server: JwksServer) -> None:
    """The issuer is down when a worker is killed: its replacement starts without keys, so not every worker is
    ready and /readyz says 503 (README: 200 only when every worker is ready) while the other worker still serves
    on its cached keys; once the issuer is back, all are ready again."""
    site.path.write_text(config_for(site, refresh=1))
    token = jwks_server.token(EC_A)
    async with site.run("--workers", "2") as cli:
        tail = EventTail(cli)
        victim, _ = worker_pids(tail)
        async with new_connection_each_time() as session:
            await jwks_server.down()
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: len(worker_pids(tail)) == 3, limit=EVENT_LIMIT_SECONDS)
            replacement = worker_pids(tail)[2]

            def keyless() -> bool:  # the replacement is serving, and has failed to fetch keys
                return any(e.get("worker_pid") == replacement for e in tail.named("jwks_refresh_failed"))

            await eventually(keyless, limit=EVENT_LIMIT_SECONDS)
            await eventually(lambda: supervisor_says(session, cli, 503, 1), limit=EVENT_LIMIT_SECONDS)
            statuses = [await status_of(session, cli.proxy + "/api/reports/1", bearer(token)) for _ in range(40)]
            assert set(statuses) <= {200, 503}, "the survivor's stale keys, or no keys at all: never a wrong answer"
            assert 200 in statuses, "the surviving worker kept serving"

            await jwks_server.up()
            await eventually(lambda: all_ready(session, cli, 2), limit=EVENT_LIMIT_SECONDS)
            statuses = [await status_of(session, cli.proxy + "/api/reports/1", bearer(token)) for _ in range(40)]
            assert set(statuses) == {200}
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)


async def test_a_restarted_worker_answers_no_503_while_its_peer_has_keys(site: Site, jwks_server: JwksServer) -> None:
    """The issuer is down when a worker is restarted: the other worker holds valid keys, yet every connection the
    kernel hands to the keyless replacement gets 503. A replacement should take no connections before it has
    keys (or start with the keys its supervisor last saw)."""
    site.path.write_text(config_for(site, refresh=1))
    token = jwks_server.token(EC_A)
    async with site.run("--workers", "2") as cli:
        tail = EventTail(cli)
        victim, _ = worker_pids(tail)
        async with new_connection_each_time() as session:
            await jwks_server.down()
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: len(worker_pids(tail)) == 3, limit=EVENT_LIMIT_SECONDS)
            replacement = worker_pids(tail)[2]
            await eventually(
                lambda: any(e.get("worker_pid") == replacement for e in tail.named("jwks_refresh_failed")),
                limit=EVENT_LIMIT_SECONDS,
            )
            statuses = [await status_of(session, cli.proxy + "/api/reports/1", bearer(token)) for _ in range(40)]
            assert set(statuses) == {200}, sorted(statuses)
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)


# --- the supervisor's promises (issue #8) -----------------------------------------------------------------------


async def test_workers_exit_1_when_the_admin_port_is_taken(site: Site) -> None:
    """The admin port is bound by someone else: `run --workers 2` exits 1 (cannot listen) and leaves no worker
    behind (every process holding its output is gone), rather than hang with workers serving unsupervised."""
    site.path.write_text(config_for(site))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", site.admin_port))
        squatter.listen()
        async with site.run("--workers", "2", ready=False) as cli:
            code = await asyncio.wait_for(cli.process.wait(), timeout=EVENT_LIMIT_SECONDS)
            await asyncio.wait_for(asyncio.gather(*cli.readers), timeout=EVENT_LIMIT_SECONDS)
    assert code == 1, cli.output()
    stderr = "".join(cli.stderr)
    assert str(site.admin_port) in stderr
    assert "in use" in stderr
    assert_no_crash_in_logs(cli)


async def test_a_restarted_worker_starts_with_the_last_good_config(site: Site, jwks_server: JwksServer) -> None:
    """The config file turned invalid (both workers refused it and kept R1), then a worker died: its replacement
    starts with R1 rather than crash-loop on the file, all are ready again, and R1 is what serves and what the
    metrics say is in force."""
    good = config_for(site, R1)
    site.path.write_text(good)
    read_token = bearer(jwks_server.token(EC_A))
    async with site.run("--workers", "2") as cli:
        tail = EventTail(cli)
        victim, _ = worker_pids(tail)
        write_atomically(site.path, config_for(site, INVALID["bad method"]))
        await eventually(lambda: len(tail.named("config_reload_failed")) >= 2, limit=EVENT_LIMIT_SECONDS)
        os.kill(victim, signal.SIGKILL)
        async with new_connection_each_time() as session:
            await eventually(lambda: len(worker_pids(tail)) == 3, limit=EVENT_LIMIT_SECONDS)

            async def recovered() -> bool:
                assert len(tail.named("worker_died")) == 1, "the replacement died too: a crash loop"
                return await all_ready(session, cli, 2)

            await eventually(recovered, limit=EVENT_LIMIT_SECONDS)
            statuses = {
                path: {await status_of(session, cli.proxy + path, headers) for _ in range(20)}
                for path, headers in (("/api/reports/1", read_token), ("/public/x", {}), ("/open/x", {}))
            }
            assert statuses == {"/api/reports/1": {200}, "/public/x": {200}, "/open/x": {404}}, "R1 everywhere"
            info = series(await scrape(session, cli.admin), "scopegate_config_info")
            digest = content_digest(good.encode())
            assert info == {(("hash", digest),): 1.0}, f"the config in force is {digest}; metrics say {info}"
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def test_restarts_of_a_worker_that_keeps_dying_back_off(site: Site, jwks_server: JwksServer) -> None:
    """A worker killed again as soon as it is restarted: the supervisor waits longer before the second restart
    than before the first (its own log's timestamps: from seeing the death to starting the replacement)."""
    site.path.write_text(config_for(site))
    async with site.run("--workers", "2") as cli:
        tail = EventTail(cli)
        victim = worker_pids(tail)[0]
        for restarts in (1, 2):
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda n=restarts: len(worker_pids(tail)) == 2 + n, limit=EVENT_LIMIT_SECONDS)
            victim = worker_pids(tail)[-1]
        assert await cli.stop() == 0
    events = assert_no_crash_in_logs(cli)
    died = [stamp(e) for e in named(events, "worker_died")]
    started = [stamp(e) for e in named(events, "worker_started")][2:]
    first, second = (start - death for death, start in zip(died, started, strict=True))
    assert second >= 1.5 * first, f"restarted after {first:.2f} s, then after {second:.2f} s"


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


async def test_sigterm_with_hung_workers_ends_within_one_grace_period(site: Site, jwks_server: JwksServer) -> None:
    """Three workers stopped dead (SIGSTOP: deaf to SIGTERM) and a grace period of 0: the supervisor waits for
    them together and kills them, so the run ends within the grace period and a few seconds (10), not once per
    worker (15); every process is gone (its output reaches EOF)."""
    site.path.write_text(config_for(site, grace=0))
    async with site.run("--workers", "3") as cli:
        tail = EventTail(cli)
        pids = worker_pids(tail)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        await eventually(lambda: all(process_state(pid) == "T" for pid in pids), limit=EVENT_LIMIT_SECONDS)
        assert await cli.stop(limit=0 + 10) == 0
    assert_no_crash_in_logs(cli)


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


async def test_a_metrics_file_left_empty_by_a_killed_worker_breaks_neither_readyz_nor_metrics(
    site: Site, jwks_server: JwksServer
) -> None:
    """prometheus-client creates a worker's metric file empty and sizes it a moment later: a scrape in between,
    or a worker killed in between (the OOM killer), leaves a file whose reading raises. The supervisor must still
    answer /readyz and /metrics (it collects both from these files)."""
    site.path.write_text(config_for(site))
    async with site.run("--workers", "2") as cli:
        worker = worker_pids(EventTail(cli))[0]
        directory = Path(environ(worker)["PROMETHEUS_MULTIPROC_DIR"])
        (directory / "counter_4194303.db").touch()  # as MmapedDict.__init__ leaves it between open and truncate
        async with aiohttp.ClientSession() as session:
            async with session.get(cli.admin + "/readyz") as response:
                assert response.status == 200, await response.text()
            assert metric(await scrape(session, cli.admin), "scopegate_worker_ready") == 2
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)
