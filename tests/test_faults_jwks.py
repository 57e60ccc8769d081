"""The issuer's JWKS misbehaving under a running `scopegate run`: down at start, down later, slow, broken answers,
gzip, and a key rotation under load.

Each test runs the real CLI in a subprocess against a JWKS server the test switches at run time (`opslib.JwksServer`)
and asserts what clients get (never an unauthenticated 200: 503 `temporarily_unavailable` while no keys were ever
loaded, stale keys serving while a refresh fails), that no traceback reaches the logs and that the process's file
descriptors return to where they were. Waits are on events (log lines, `/metrics`, `/readyz`), never on the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from test_operations import RunningCli, Site, bearer, eventually, metric, scrape, status_of

from conftest import free_port
from opslib import (
    BAD_MODES,
    EVENT_LIMIT_SECONDS,
    EventTail,
    JwksServer,
    Load,
    Outcome,
    Probe,
    assert_no_crash_in_logs,
    auth_settings,
    echo_upstream,
    fd_baseline,
    fds_return_to,
    tally,
)
from tokenlib import EC_A, EC_B, EC_P256

REFRESHES = "scopegate_jwks_refresh_total"
REPORT = "/api/reports/1"


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    async with echo_upstream() as url:
        yield url


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    """An issuer publishing EC_A; not listening until the test calls `up()`."""
    server = JwksServer(EC_A)
    yield server
    await server.down()


@pytest.fixture
def site(tmp_path: Path, jwks_server: JwksServer, echo: str) -> Site:
    return Site(tmp_path / "config.yaml", free_port(), free_port(), jwks_server.issuer, echo)


async def refreshes(session: aiohttp.ClientSession, cli: RunningCli, result: str) -> float:
    return metric(await scrape(session, cli.admin), REFRESHES, result=result)


async def more_refreshes(session: aiohttp.ClientSession, cli: RunningCli, result: str, than: float) -> None:
    async def grew() -> bool:
        return await refreshes(session, cli, result) > than

    await eventually(grew, limit=EVENT_LIMIT_SECONDS)


async def report(session: aiohttp.ClientSession, cli: RunningCli, token: str) -> int:
    return await status_of(session, cli.proxy + REPORT, bearer(token))


async def ready(session: aiohttp.ClientSession, cli: RunningCli) -> bool:
    return await status_of(session, cli.admin + "/readyz") == 200


async def assert_fails_closed(session: aiohttp.ClientSession, cli: RunningCli, token: str) -> None:
    """No keys ever loaded: a token that would need one gets 503, what needs no key is answered as usual."""
    async with session.get(cli.proxy + REPORT, headers=bearer(token)) as response:
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"] == "temporarily_unavailable"
    assert await status_of(session, cli.proxy + REPORT) == 401, "no token: nothing to verify"
    assert await report(session, cli, "not-a-jwt") == 401
    assert await status_of(session, cli.proxy + "/public/x") == 200, "public routes need no keys"
    assert await status_of(session, cli.admin + "/readyz") == 503
    assert await status_of(session, cli.admin + "/healthz") == 200


async def stop_cleanly(cli: RunningCli, baseline: list[str]) -> None:
    """The descriptors back to the baseline (every test session is closed by now), then SIGTERM and exit 0."""
    await fds_return_to(cli.process.pid, baseline)
    assert await cli.stop() == 0


# --- outages ----------------------------------------------------------------------------------------------------


async def test_issuer_down_at_start_fails_closed_until_its_keys_load(jwks_server: JwksServer, site: Site) -> None:
    site.write(rules=auth_settings(refresh=1, cooldown=0.2))
    token = jwks_server.token(EC_A)
    async with site.run(ready=False) as cli:
        tail = EventTail(cli)
        await eventually(lambda: tail.named("jwks_refresh_failed"), limit=EVENT_LIMIT_SECONDS)
        baseline = await fd_baseline(cli.process.pid)
        async with aiohttp.ClientSession() as session:
            await assert_fails_closed(session, cli, token)

            jwks_server.mode = "html"  # listening now, but discovery answers with a web page
            await jwks_server.up()
            await more_refreshes(session, cli, "failure", than=await refreshes(session, cli, "failure"))
            await assert_fails_closed(session, cli, token)

            jwks_server.mode = "normal"
            await eventually(lambda: ready(session, cli), limit=EVENT_LIMIT_SECONDS)
            assert await report(session, cli, token) == 200
            assert await report(session, cli, jwks_server.token(EC_A)) == 200
            assert await report(session, cli, jwks_server.token(EC_B)) == 401, "a key the issuer does not publish"
            assert metric(await scrape(session, cli.admin), "scopegate_jwks_keys") == 1
        await stop_cleanly(cli, baseline)
    events = assert_no_crash_in_logs(cli)
    unavailable = [e["reason"] for e in events if e.get("event") == "decision" and e["status"] == 503]
    assert unavailable == ["jwks_unavailable"] * 2


async def test_cached_keys_keep_serving_through_an_issuer_outage(jwks_server: JwksServer, site: Site) -> None:
    await jwks_server.up()
    site.write(rules=auth_settings(refresh=1, cooldown=0.2))
    async with site.run() as cli:
        baseline = await fd_baseline(cli.process.pid)
        async with aiohttp.ClientSession() as session:
            assert await report(session, cli, jwks_server.token(EC_A)) == 200
            failed = await refreshes(session, cli, "failure")
            await jwks_server.down()
            await more_refreshes(session, cli, "failure", than=failed)  # the background refresh failed

            for _ in range(3):  # new tokens, so the stale key itself verifies them (no verified-token cache hit)
                assert await report(session, cli, jwks_server.token(EC_A)) == 200
            assert await report(session, cli, jwks_server.token(EC_A, scope="read:other")) == 403
            assert await report(session, cli, jwks_server.token(EC_B)) == 401, "unknown kid: refetch fails, still 401"
            assert await status_of(session, cli.proxy + REPORT) == 401
            assert await status_of(session, cli.proxy + "/public/x") == 200
            assert await ready(session, cli), "stale keys are keys: still ready"
            assert metric(await scrape(session, cli.admin), "scopegate_jwks_keys") == 1

            succeeded = await refreshes(session, cli, "success")
            await jwks_server.up()
            await more_refreshes(session, cli, "success", than=succeeded)
            assert await report(session, cli, jwks_server.token(EC_A)) == 200
        await stop_cleanly(cli, baseline)
    events = assert_no_crash_in_logs(cli)
    outage = [e for e in events if e.get("event") == "jwks_refresh_failed"]
    assert outage
    assert {e["keys"] for e in outage} == {1}, "every failed refresh kept the one key"


# --- broken answers ---------------------------------------------------------------------------------------------


async def test_every_broken_jwks_answer_is_a_failed_refresh_and_the_old_keys_keep_serving(
    jwks_server: JwksServer, site: Site
) -> None:
    """No background refresh during the test (300 s) and no cooldown: each request with an unknown kid refetches,
    so each broken answer is fetched exactly when the test asks for it."""
    await jwks_server.up()
    site.write(rules=auth_settings(refresh=300, cooldown=0))
    unknown = jwks_server.token(EC_B)
    async with site.run() as cli:
        baseline = await fd_baseline(cli.process.pid)
        async with aiohttp.ClientSession() as session:
            for mode in BAD_MODES:
                jwks_server.mode = mode
                failed = await refreshes(session, cli, "failure")
                if mode == "slow":
                    await _known_keys_answer_while_a_fetch_hangs(session, cli, jwks_server, unknown)
                else:
                    assert await report(session, cli, unknown) == 401, mode
                assert jwks_server.served[mode] >= 1, f"{mode}: the refetch reached the broken answer"
                await more_refreshes(session, cli, "failure", than=failed)
                assert await report(session, cli, jwks_server.token(EC_A)) == 200, f"{mode}: the old key serves"
                assert await ready(session, cli), mode
            samples = await scrape(session, cli.admin)
            assert metric(samples, "scopegate_jwks_keys") == 1
            assert metric(samples, REFRESHES, result="success") == 1
            assert metric(samples, REFRESHES, result="failure") == len(BAD_MODES)
        await stop_cleanly(cli, baseline)
    events = assert_no_crash_in_logs(cli)
    failures = [e for e in events if e.get("event") == "jwks_refresh_failed"]
    assert len(failures) == len(BAD_MODES)
    for (mode, cause), failure in zip(BAD_MODES.items(), failures, strict=True):
        assert cause in failure["error"], (mode, failure["error"])
    assert {e["keys"] for e in failures} == {1}


async def _known_keys_answer_while_a_fetch_hangs(
    session: aiohttp.ClientSession, cli: RunningCli, jwks_server: JwksServer, unknown: str
) -> None:
    """A refetch held open by a trickling JWKS (past the fetch timeout) holds up only the unknown-kid request that
    asked for it: a token whose key is cached is answered meanwhile."""
    held = asyncio.create_task(report(session, cli, unknown))
    await eventually(lambda: jwks_server.hung == 1, limit=EVENT_LIMIT_SECONDS)
    assert await report(session, cli, jwks_server.token(EC_A)) == 200
    assert jwks_server.hung == 1, "answered while the fetch was still held open"
    assert not held.done()
    assert await asyncio.wait_for(held, timeout=EVENT_LIMIT_SECONDS) == 401, "the fetch timed out: unknown kid"


async def test_sigterm_while_the_first_key_fetch_hangs_exits_cleanly(jwks_server: JwksServer, site: Site) -> None:
    """The issuer holds the very first fetch open: SIGTERM still drains and exits 0 at once, the hung fetch
    abandoned without a pending task or an unclosed session reported at exit."""
    jwks_server.mode = "slow"
    await jwks_server.up()
    site.write(rules=auth_settings(refresh=300, cooldown=0))
    async with site.run(ready=False) as cli:
        await eventually(lambda: jwks_server.hung == 1, limit=EVENT_LIMIT_SECONDS)
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, cli.admin + "/readyz") == 503
        assert await cli.stop() == 0
    assert_no_crash_in_logs(cli)


async def test_a_gzip_encoded_jwks_is_decoded_by_the_key_fetcher(jwks_server: JwksServer, site: Site) -> None:
    """The issuer compresses discovery and JWKS whatever the client asked for: the key fetcher's own session
    decodes them (the proxy's data path never decodes anything)."""
    jwks_server.gzip = True
    await jwks_server.up()
    site.write(rules=auth_settings(refresh=300, cooldown=0))
    async with site.run() as cli:  # ready: the first keys came gzip-encoded
        baseline = await fd_baseline(cli.process.pid)
        async with aiohttp.ClientSession() as session:
            assert await report(session, cli, jwks_server.token(EC_A)) == 200
            jwks_server.keys = [EC_A, EC_B]
            assert await report(session, cli, jwks_server.token(EC_B)) == 200, "a gzip-encoded refetch"
            assert await refreshes(session, cli, "failure") == 0
        await stop_cleanly(cli, baseline)
    assert_no_crash_in_logs(cli)
    assert jwks_server.served["normal"] == 2
    assert all("gzip" in accepted for accepted in jwks_server.accept_encodings), jwks_server.accept_encodings


# --- rotation under load ----------------------------------------------------------------------------------------

# What each kind of request must get while the JWKS publishes {A}, {A, B}, {B}.
ROTATION_ANSWERS = {
    "A": (200, 200, 401),
    "A-weak": (403, 403, 401),
    "B": (401, 200, 200),
    "B-weak": (401, 403, 403),
    "never-published": (401, 401, 401),
    "A-signed-kid-B": (401, 401, 401),
    "B-signed-kid-A": (401, 401, 401),
    "no-token": (401, 401, 401),
    "public": (200, 200, 200),
}
TOKENS_PER_KIND = 8
PHASE_ANSWERS = 800
ROTATION_COOLDOWN = 0.3


def _rotation_probes(jwks_server: JwksServer) -> list[Probe]:
    tokens = {
        "A": lambda: jwks_server.token(EC_A),
        "A-weak": lambda: jwks_server.token(EC_A, scope="read:other"),
        "B": lambda: jwks_server.token(EC_B),
        "B-weak": lambda: jwks_server.token(EC_B, scope="read:other"),
        "never-published": lambda: jwks_server.token(EC_P256),
        "A-signed-kid-B": lambda: jwks_server.token(EC_A, kid=EC_B.kid),
        "B-signed-kid-A": lambda: jwks_server.token(EC_B, kid=EC_A.kid),
    }
    probes = []
    for n in range(TOKENS_PER_KIND):
        probes += [Probe(kind, f"/api/reports/{n}", bearer(mint())) for kind, mint in tokens.items()]
        probes += [Probe("no-token", f"/api/reports/{n}"), Probe("public", f"/public/{n}")]
    return probes


class Rotation:
    """When the JWKS changed (t1, t2) and when the proxy was first seen using the change (e1, e2), in loop time.

    A request decided at instant d saw {A} if d < t1, {A} or {A, B} until e1, {A, B} until t2, {A, B} or {B} until
    e2, and {B} after: a request's answer must be one of those of the phases its [sent, done] overlaps.
    """

    def __init__(self) -> None:
        self.t1 = self.e1 = self.t2 = self.e2 = 0.0

    def phases(self, outcome: Outcome) -> list[int]:
        spans = [(float("-inf"), self.e1), (self.t1, self.e2), (self.t2, float("inf"))]
        return [n for n, (start, end) in enumerate(spans) if outcome.sent <= end and outcome.done >= start]

    def strictly_in(self, outcome: Outcome) -> int | None:
        phases = self.phases(outcome)
        return phases[0] if len(phases) == 1 else None

    def allowed(self, outcome: Outcome) -> set[int]:
        return {ROTATION_ANSWERS[outcome.kind][phase] for phase in self.phases(outcome)}


async def _first_answer(
    session: aiohttp.ClientSession, url: str, token: str, status: int, other: int, *, prompt: str
) -> float:
    """Send until the answer is `status` (only `other` allowed before); the loop time it came back. Each miss is
    followed by a request with the unknown-kid token `prompt`, as the load sends too: the proxy refetches for it."""
    loop = asyncio.get_running_loop()

    async def answered() -> bool:
        got = await status_of(session, url, bearer(token))
        assert got in (status, other), got
        if got != status:
            assert await status_of(session, url, bearer(prompt)) == 401
        return got == status

    await eventually(answered, limit=EVENT_LIMIT_SECONDS)
    return loop.time()


async def test_key_rotation_under_load_makes_no_wrong_decision(jwks_server: JwksServer, site: Site) -> None:
    """The JWKS goes {A} -> {A, B} -> {B} while 16 connections send requests of every kind: B's tokens work as
    soon as B is published (an unknown-kid refetch: the background refresh is 300 s away), A's keep working while
    A is published, and A's are refused once A is gone (its verified tokens forgotten too)."""
    await jwks_server.up()
    site.write(rules=auth_settings(refresh=300, cooldown=ROTATION_COOLDOWN))
    probes = _rotation_probes(jwks_server)
    rotation = Rotation()
    loop = asyncio.get_running_loop()
    async with site.run() as cli:
        baseline = await fd_baseline(cli.process.pid)
        loaded = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
        async with loaded, aiohttp.ClientSession() as session:  # the test's own requests never queue behind the load
            started = loop.time()
            load = Load(loaded, cli.proxy, probes, concurrency=16, max_requests=20_000, max_seconds=40)
            load.start()
            await load.reach(PHASE_ANSWERS)
            prompt = jwks_server.token(EC_P256)

            rotation.t1 = loop.time()
            jwks_server.keys = [EC_A, EC_B]
            new = jwks_server.token(EC_B)
            rotation.e1 = await _first_answer(session, cli.proxy + REPORT, new, 200, 401, prompt=prompt)
            await load.reach(len(load.outcomes) + PHASE_ANSWERS)

            rotation.t2 = loop.time()
            jwks_server.keys = [EC_B]
            old = jwks_server.token(EC_A)
            rotation.e2 = await _first_answer(session, cli.proxy + REPORT, old, 401, 200, prompt=prompt)
            await load.reach(len(load.outcomes) + PHASE_ANSWERS)
            assert not load.exhausted, "the load ran the whole rotation"
            outcomes = await load.stop()
            elapsed = loop.time() - started
            assert metric(await scrape(session, cli.admin), "scopegate_jwks_keys") == 1
        await stop_cleanly(cli, baseline)
    assert_no_crash_in_logs(cli)

    wrong = [o for o in outcomes if o.status not in rotation.allowed(o)]
    assert not wrong, f"{len(wrong)} wrong decisions of {len(outcomes)}: {tally(wrong)}"
    for phase in range(3):
        kinds = {o.kind for o in outcomes if rotation.strictly_in(o) == phase}
        assert kinds == ROTATION_ANSWERS.keys(), f"phase {phase + 1} lacks {ROTATION_ANSWERS.keys() - kinds}"
    # Hundreds of unknown kids, yet at most one fetch per cooldown (plus the first load).
    assert jwks_server.served["normal"] <= 2 + elapsed / ROTATION_COOLDOWN, jwks_server.served
