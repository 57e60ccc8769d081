"""Reloading the rules of a running `scopegate run`: file rewrites, Kubernetes ConfigMap swaps, SIGHUP, broken files
and requests already in flight."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from test_operations import (
    RunningCli,
    Site,
    bearer,
    config_text,
    eventually,
    metric,
    new_site,
    scrape,
    series,
    slow_request_in_flight,
    status_of,
)

from conftest import API, RULES, IssuerServer, Running, free_port

FRESH_ROUTE = '  - name: fresh\n    match: { path: "/fresh/**" }\n    public: true\n'
SLOW_ROUTE = '  - name: echo-slow\n    match: { path: "/slow/**" }\n    resource: https://api.example.com\n'
RELOADS = "scopegate_config_reloads_total"


@pytest.fixture
def site(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> Site:
    return new_site(tmp_path, issuer, upstream)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def reloads(session: aiohttp.ClientSession, cli: RunningCli, result: str) -> float:
    return metric(await scrape(session, cli.admin), RELOADS, result=result)


async def answers(session: aiohttp.ClientSession, url: str, status: int) -> bool:
    return await status_of(session, url) == status


async def test_an_in_place_rewrite_adds_a_route_within_seconds(site: Site) -> None:
    site.write()
    async with site.run() as cli, aiohttp.ClientSession() as session:
        assert await status_of(session, cli.proxy + "/fresh/x") == 404
        before = await scrape(session, cli.admin)
        assert metric(before, "scopegate_config_info", hash=digest(site.path.read_text())) == 1
        inode = site.path.stat().st_ino
        text = site.write(rules=RULES + FRESH_ROUTE)
        assert site.path.stat().st_ino == inode, "rewritten in place"

        await eventually(lambda: answers(session, cli.proxy + "/fresh/x", 200), limit=5)
        samples = await scrape(session, cli.admin)
        assert metric(samples, RELOADS, result="success") == 1
        assert metric(samples, RELOADS, result="failure") == 0
        assert series(samples, "scopegate_config_info") == {(("hash", digest(text)),): 1.0}, "only the new hash"
        assert await status_of(session, cli.proxy + "/public/x") == 200, "the old routes still serve"
    reloaded = cli.events("config_reloaded")
    assert [(line["file"], line["routes"]) for line in reloaded] == [(str(site.path), 15)]


def _configmap_version(directory: Path, version: str, text: str) -> None:
    """What the kubelet does: write a new timestamped directory, then atomically repoint `..data` at it."""
    (directory / version).mkdir()
    (directory / version / "config.yaml").write_text(text)
    staged = directory / "..data_tmp"
    staged.symlink_to(version)
    os.replace(staged, directory / "..data")


async def test_a_kubernetes_configmap_swap_is_picked_up(
    tmp_path: Path, issuer: IssuerServer, upstream: Running
) -> None:
    mount = tmp_path / "configmap"
    mount.mkdir()
    port, admin_port = free_port(), free_port()

    def text(rules: str) -> str:
        return config_text(issuer.issuer.issuer, upstream.url, port=port, admin_port=admin_port, rules=rules)

    _configmap_version(mount, "..2026_01_01_v1", text(RULES))
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    site = Site(mount / "config.yaml", port, admin_port, issuer.issuer.issuer, upstream.url)
    async with site.run() as cli, aiohttp.ClientSession() as session:
        assert await status_of(session, cli.proxy + "/public/x") == 200
        assert await status_of(session, cli.proxy + "/v2/x") == 404
        v2_rules = RULES.replace('path: "/public/**"', 'path: "/v2/**"')
        _configmap_version(mount, "..2026_01_01_v2", text(v2_rules))
        shutil.rmtree(mount / "..2026_01_01_v1")  # the kubelet removes the old version right after the swap

        await eventually(lambda: answers(session, cli.proxy + "/v2/x", 200), limit=5)
        assert await status_of(session, cli.proxy + "/public/x") == 404
        samples = await scrape(session, cli.admin)
        assert metric(samples, RELOADS, result="success") == 1
        assert metric(samples, RELOADS, result="failure") == 0, "the swap was never seen half-done"
        assert metric(samples, "scopegate_config_info", hash=digest(text(v2_rules))) == 1


async def test_sighup_reloads_what_the_watcher_cannot_see(site: Site) -> None:
    """The new rules are written in place with the same size and the old modification time, so the file watcher
    (which compares device, inode, mtime and size) sees no change: when they take effect, SIGHUP loaded them."""
    # The same route commented out: a YAML comment of exactly the same length.
    commented = "".join("#" + line[1:] for line in FRESH_ROUTE.splitlines(keepends=True))
    site.write(rules=RULES + commented)
    before = site.path.stat()
    async with site.run() as cli, aiohttp.ClientSession() as session:
        assert await status_of(session, cli.proxy + "/fresh/x") == 404
        with site.path.open("r+") as config:  # in place: the same inode
            config.write(site.path.read_text().replace(commented, FRESH_ROUTE))
        os.utime(site.path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = site.path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        cli.signal(signal.SIGHUP)
        await eventually(lambda: answers(session, cli.proxy + "/fresh/x", 200), limit=10)
        assert await reloads(session, cli, "success") == 1
        assert cli.events("config_reloaded")


async def test_a_broken_rewrite_keeps_the_old_rules_and_says_where_it_is_wrong(
    site: Site, issuer: IssuerServer
) -> None:
    good = site.write()
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    async with site.run() as cli, aiohttp.ClientSession() as session:
        assert await status_of(session, cli.proxy + "/api/reports/1", bearer(token)) == 200
        broken = good.replace("methods: [GET, HEAD, POST]", "methods: [GET, FETCH]")
        assert broken != good
        site.path.write_text(broken)
        line = next(n for n, text in enumerate(broken.splitlines(), 1) if "FETCH" in text)

        await eventually(lambda: reloads(session, cli, "failure"), limit=5)
        assert await status_of(session, cli.proxy + "/api/reports/1", bearer(token)) == 200, "the old rules serve"
        samples = await scrape(session, cli.admin)
        assert metric(samples, RELOADS, result="success") == 0
        assert metric(samples, "scopegate_config_info", hash=digest(good)) == 1, "the old config is still in force"
        (failed,) = await eventually(lambda: cli.events("config_reload_failed"), limit=2)
        assert failed["file"] == str(site.path)
        assert failed["level"] == "error"
        (problem,) = failed["problems"]
        assert problem.startswith(f"{site.path}:{line}: routes[0].match.methods[1]: "), problem
        assert "'FETCH'" in problem

        site.write(rules=RULES + FRESH_ROUTE)  # fixed: the next good version is taken
        await eventually(lambda: answers(session, cli.proxy + "/fresh/x", 200), limit=5)
        assert await reloads(session, cli, "success") == 1


async def test_requests_in_flight_finish_on_the_rules_they_started_with(site: Site, issuer: IssuerServer) -> None:
    site.write(timeout=10)
    token = issuer.issuer.mint(resource=API)
    async with site.run() as cli, aiohttp.ClientSession() as session:
        slow = await slow_request_in_flight(session, cli, token)
        assert SLOW_ROUTE in RULES
        site.write(timeout=10, rules=RULES.replace(SLOW_ROUTE, ""))
        cli.signal(signal.SIGHUP)
        await eventually(lambda: reloads(session, cli, "success"), limit=1.5)
        assert not slow.done(), "the reload happened while the request was in flight"
        assert await status_of(session, cli.proxy + "/slow/0", bearer(token)) == 404, "new requests see new rules"
        assert await asyncio.wait_for(slow, timeout=5) == 200
        assert await cli.stop() == 0
    routes = {line["path"]: (line["route"], line["status"]) for line in cli.events("decision")}
    assert routes["/slow/2"] == ("echo-slow", 200)
    assert routes["/slow/0"] == ("", 404)


async def test_one_change_is_reloaded_once_even_with_sighup(site: Site) -> None:
    site.write()
    async with site.run() as cli, aiohttp.ClientSession() as session:
        site.write(rules=RULES + FRESH_ROUTE)
        cli.signal(signal.SIGHUP)
        await eventually(lambda: reloads(session, cli, "success"), limit=1)
        # Give the watcher (two polls 0.5 s apart) time to act, but stop as soon as it does.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and await reloads(session, cli, "success") < 2:
            await asyncio.sleep(0.05)
        assert await reloads(session, cli, "success") == 1
        assert len(cli.events("config_reloaded")) == 1
