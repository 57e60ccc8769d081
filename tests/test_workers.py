"""`scopegate run --workers N`: the kernel spreads connections over the workers, the admin port sums their metrics."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
import structlog

from scopegate.observability import configure_logging
from test_operations import Site, bearer, eventually, metric, new_site, scrape, series, status_of

from conftest import API, IssuerServer, Running

BATCH = 40
MAX_REQUESTS = 200


@pytest.fixture
def site(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> Site:
    return new_site(tmp_path, issuer, upstream)


async def test_two_workers_share_the_port_and_the_admin_port_sums_their_metrics(
    site: Site, issuer: IssuerServer
) -> None:
    site.write()
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    sent = 0
    async with site.run("--workers", "2") as cli, aiohttp.ClientSession() as admin_session:

        def pids() -> set[int]:
            return {line["worker_pid"] for line in cli.events("decision")}

        # A new connection per request, so that SO_REUSEPORT may hand each one to either worker.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while sent < MAX_REQUESTS and (sent == 0 or len(pids()) < 2):
                for n in range(BATCH):
                    assert await status_of(session, f"{cli.proxy}/api/reports/{n}", bearer(token)) == 200
                sent += BATCH
                await eventually(lambda total=sent: len(cli.events("decision")) == total)
        assert len(pids()) == 2, f"all {sent} connections went to one worker"
        assert cli.process.pid not in pids(), "the supervisor serves no requests itself"

        async def summed() -> bool:
            samples = await scrape(admin_session, cli.admin)
            return (
                metric(samples, "scopegate_requests_total", route="reports-read", decision="allow", reason="ok") == sent
            )

        await eventually(summed, limit=3)
        samples = await scrape(admin_session, cli.admin)
        assert sum(series(samples, "scopegate_requests_total").values()) == sent
        assert metric(samples, "scopegate_request_duration_seconds_count", route="reports-read") == sent
        assert metric(samples, "scopegate_inflight_requests") == 0
        assert metric(samples, "scopegate_jwks_keys") == 1
        assert metric(samples, "scopegate_jwks_refresh_total", result="success") >= 2, "each worker fetched the keys"
        assert await status_of(admin_session, cli.admin + "/readyz") == 200
        assert await cli.stop(limit=5 + 5) == 0
    started = {line["pid"] for line in cli.events("worker_started")}
    assert pids() <= started
    assert [line["event"] for line in cli.events() if line["event"] == "stopped"].count("stopped") == 3, (
        "both workers and the supervisor drained"
    )


class _Writes(io.StringIO):
    """A non-terminal stream that remembers each write() call, as an unbuffered stdout passes each to the pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_a_log_line_is_written_in_one_piece() -> None:
    saved = structlog.get_config()
    stream = _Writes()
    try:
        configure_logging("info", stream=stream)
        structlog.get_logger("scopegate").info("decision", route="r", status=200)
    finally:
        structlog.configure(**saved)
    assert len(stream.calls) == 1, stream.calls
    assert json.loads(stream.calls[0])["event"] == "decision"
    assert stream.calls[0].endswith("\n")
