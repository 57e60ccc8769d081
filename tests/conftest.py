"""Shared fixtures: a real development issuer, a real echo upstream and the real proxy, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from scopegate.config import Config, parse_config
from scopegate.dev.echo import echo_app
from scopegate.dev.issuer import DevIssuer
from scopegate.observability import Metrics
from scopegate.serve import Server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tokenlib.py and friends

API = "https://api.example.com"

RULES = """
routes:
  - name: reports-read
    match: { path: "/api/reports/{report_id}", methods: [GET, HEAD, POST] }
    resource: https://api.example.com
    scopes: [read:report]
  - name: org-member-invite
    match: { path: "/orgs/{org_id}/members", methods: [POST] }
    organization: { from: path, name: org_id }
    scopes: [invite:member]
  - name: org-projects
    match: { path: "/api/orgs/{org_id}/projects/**" }
    resource: https://api.example.com
    organization: { from: path, name: org_id }
    scopes: { any: [read:project, admin:project] }
  - name: org-settings
    match: { path: /api/settings }
    resource: https://api.example.com
    organization: { from: header, name: X-Organization-Id }
    scopes: [manage:settings]
  - name: org-search
    match: { path: /api/search }
    resource: https://api.example.com
    organization: { from: query, name: org }
  - name: admin-only
    match: { path: "/admin/**" }
    resource: https://api.example.com
    scopes: [manage:tenant]
    claims: { roles: admin, email_verified: true }
  - name: audited
    match: { path: "/beta/**" }
    resource: https://api.example.com
    scopes: [beta]
    mode: audit
  - name: upstream-tests
    match: { path: "/up/**" }
    resource: https://api.example.com
  - name: echo-status
    match: { path: "/status/**" }
    resource: https://api.example.com
  - name: echo-bytes
    match: { path: "/bytes/**" }
    resource: https://api.example.com
  - name: echo-stream
    match: { path: "/stream/**" }
    resource: https://api.example.com
  - name: echo-slow
    match: { path: "/slow/**" }
    resource: https://api.example.com
  - name: ws
    match: { path: "/ws/**" }
    resource: https://api.example.com
    scopes: [chat]
  - name: public
    match: { path: "/public/**" }
    public: true
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(
    issuer: str, upstream: str, *, rules: str = RULES, extra: str = "", auth_extra: str = "", cooldown: float = 0.2
) -> Config:
    text = f"""
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {upstream}
upstream_timeout_seconds: 2
shutdown_grace_seconds: 5
{extra}
auth:
  issuer: {issuer}
  jwks_refetch_cooldown_seconds: {cooldown}
{auth_extra}
{rules}
"""
    return parse_config(text)


@dataclass
class Running:
    """A started app on a real port."""

    url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(app: web.Application, port: int | None = None) -> Running:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Running(f"http://127.0.0.1:{port}", runner)


@dataclass
class IssuerServer:
    issuer: DevIssuer
    running: Running
    port: int

    async def stop(self) -> None:
        await self.running.stop()

    async def restart(self) -> None:
        self.running = await start_app(self.issuer.app(), self.port)


async def start_issuer(path: str = "/oidc") -> IssuerServer:
    """A development issuer on a free port, its issuer URL ending in `path`."""
    port = free_port()
    dev = DevIssuer(f"http://127.0.0.1:{port}{path}")
    return IssuerServer(dev, await start_app(dev.app(), port), port)


@pytest.fixture
async def issuer() -> AsyncIterator[IssuerServer]:
    server = await start_issuer()
    yield server
    await server.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Running]:
    running = await start_app(echo_app())
    yield running
    await running.stop()


@dataclass
class Proxy:
    server: Server
    url: str
    admin: str
    session: aiohttp.ClientSession

    @property
    def metrics(self) -> Metrics:
        return self.server.gateway.metrics


ProxyFactory = Callable[..., Awaitable[Proxy]]


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_proxy(upstream: Running) -> AsyncIterator[ProxyFactory]:
    """Start the real Server on ephemeral ports; waits for signing keys unless `wait_ready=False`."""
    started: list[Proxy] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def factory(config: Config, *, wait_ready: bool = True) -> Proxy:
        server = Server(config, Metrics(process=False))
        await server.start()
        proxy = Proxy(server, f"http://{server.bound['proxy']}", f"http://{server.bound['admin']}", session)
        started.append(proxy)
        if wait_ready:
            await wait_until(lambda: server.gateway.ready)
        return proxy

    yield factory
    for proxy in started:
        await proxy.server.drain()
    await session.close()


@pytest.fixture
async def proxy(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    """The proxy on RULES, in front of the echo upstream, trusting the development issuer."""
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url))


class GatedUpstream:
    """An upstream whose progress the test controls, so streaming and in-flight are shown by events, not timings.

    `/hold`: answers 200 once `release` is set. `/drip`: sends a first chunk, then the rest once `release` is set.
    `/count`: reads the request body, counting bytes in `received` as they arrive (`first_bytes` set at the first).
    """

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.first_bytes = asyncio.Event()
        self.received = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/hold", self._hold)
        app.router.add_get("/drip", self._drip)
        app.router.add_post("/count", self._count)
        return app

    async def _hold(self, request: web.Request) -> web.Response:
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), 60)
        return web.Response(text="released")

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first")
        await asyncio.wait_for(self.release.wait(), 60)
        await response.write(b"-rest")
        await response.write_eof()
        return response

    async def _count(self, request: web.Request) -> web.Response:
        async for chunk in request.content.iter_any():
            self.received += len(chunk)
            self.first_bytes.set()
        return web.json_response({"body_bytes": self.received})


@pytest.fixture
async def gated_upstream() -> AsyncIterator[tuple[GatedUpstream, Running]]:
    gated = GatedUpstream()
    running = await start_app(gated.app())
    yield gated, running
    gated.release.set()
    await running.stop()
