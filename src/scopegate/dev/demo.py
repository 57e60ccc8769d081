"""`scopegate demo`: the whole picture on one machine, with nothing to configure.

A development issuer (fresh ES384 key, discovery, JWKS, token endpoint), an echo upstream that shows what it
received (so the identity headers are visible), and the proxy on the bundled `demo.yaml`, all on 127.0.0.1. It
prints ready-to-paste curl lines, each preceded by `# expect <status>`, with real tokens minted for Logto's three
scenarios. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from aiohttp import web

from scopegate.config import Config, HostPort
from scopegate.dev.echo import echo_app
from scopegate.dev.issuer import DevIssuer
from scopegate.serve import Server, run_until_signalled

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
API = "https://api.example.com"


@dataclass(frozen=True)
class DemoPorts:
    """Port overrides; None keeps the config's port, 0 picks a free one."""

    proxy: int | None = None
    admin: int | None = None
    issuer: int | None = None
    upstream: int | None = None


@dataclass(frozen=True)
class Example:
    status: int
    what: str
    method: str
    path: str
    token: str | None = None

    def curl(self, base: str) -> str:
        parts = ["curl", "-i"]
        if self.method != "GET":
            parts += ["-X", self.method]
        parts.append(base + self.path)
        if self.token is not None:
            parts += ["-H", f"Authorization: Bearer {self.token}"]
        return shlex.join(parts)


def examples(issuer: DevIssuer) -> list[Example]:
    """One allow and one deny per scenario, plus public and no-route."""
    reader = issuer.mint(subject="alice", resource=API, scopes=["read:report"])
    no_scope = issuer.mint(subject="alice", resource=API, scopes=[])
    acme_org = issuer.mint(subject="alice", organization_id="acme", scopes=["invite:member"])
    acme_api = issuer.mint(subject="alice", resource=API, organization_id="acme", scopes=["read:project"])
    return [
        Example(200, "allowed: global API token with read:report", "GET", "/api/reports/42", reader),
        Example(401, "denied: no token", "GET", "/api/reports/42"),
        Example(403, "denied: the token lacks read:report", "GET", "/api/reports/42", no_scope),
        Example(403, "denied: a token requested for an organization on a global route", "GET", "/api/reports/42",
                acme_api),
        Example(200, "allowed: organization token for acme with invite:member", "POST", "/orgs/acme/members",
                acme_org),
        Example(403, "denied: the acme organization token used for globex", "POST", "/orgs/globex/members",
                acme_org),
        Example(200, "allowed: organization-level API token for acme", "GET", "/api/orgs/acme/projects/7", acme_api),
        Example(403, "denied: organization-level API token for another organization", "GET",
                "/api/orgs/globex/projects/7", acme_api),
        Example(200, "allowed: public route, no token", "GET", "/public/hello"),
        Example(404, "denied: no route matches", "GET", "/nothing/here"),
    ]  # fmt: skip


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound before the app is built, so the issuer URL can name a port chosen by the OS (port 0)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def _serving(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _port_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def run_demo(config: Config, ports: DemoPorts, *, out: TextIO = sys.stdout) -> int:
    issuer_host, issuer_port = _port_of(config.auth.issuer)
    upstream_host, upstream_port = _port_of(config.upstream or "http://127.0.0.1:0")
    issuer_sock = _listening_socket(issuer_host, _pick(ports.issuer, issuer_port))
    upstream_sock = _listening_socket(upstream_host, _pick(ports.upstream, upstream_port))
    issuer_path = urlsplit(config.auth.issuer).path
    issuer = DevIssuer(f"http://{issuer_host}:{issuer_sock.getsockname()[1]}{issuer_path}")
    config = replace(
        config,
        auth=replace(config.auth, issuers=(replace(config.auth.issuers[0], issuer=issuer.issuer, jwks_uri=None),)),
        upstream=f"http://{upstream_host}:{upstream_sock.getsockname()[1]}",
        listen=HostPort(host=config.listen.host, port=_pick(ports.proxy, config.listen.port)),
        admin_listen=HostPort(host=config.admin_listen.host, port=_pick(ports.admin, config.admin_listen.port)),
    )
    async with _serving(issuer.app(), issuer_sock), _serving(echo_app(), upstream_sock):
        server = Server(config)

        async def announce(started: Server) -> None:
            await _wait_ready(started)
            _print_banner(started, issuer, config, out)

        return await run_until_signalled(server, on_started=announce)


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


async def _wait_ready(server: Server, limit_seconds: float = 10.0) -> None:
    """The banner's curl lines only work once the proxy holds the issuer's key."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_seconds
    while not server.gateway.ready and loop.time() < deadline:  # noqa: ASYNC110 - readiness has no event; short poll
        await asyncio.sleep(0.02)


def _print_banner(server: Server, issuer: DevIssuer, config: Config, out: TextIO) -> None:
    proxy, admin = server.bound["proxy"], server.bound["admin"]
    base = f"http://{proxy}"
    lines = [
        "scopegate demo is running on 127.0.0.1 — Ctrl-C stops it.",
        f"  proxy     {base}   rules: {config.source}",
        f"  admin     http://{admin}/metrics  /healthz  /readyz",
        f"  issuer    {issuer.issuer}   tokens: POST {issuer.issuer}/token",
        f"  upstream  {config.upstream}   (echoes the request it receives, identity headers included)",
        "",
        "Try these (tokens are valid for an hour):",
        "",
    ]
    for example in examples(issuer):
        lines += [f"# expect {example.status}: {example.what}", example.curl(base), ""]
    lines += [
        "Mint your own token (resource, organization_id, scope, and dev-only extra claims as JSON):",
        shlex.join(
            [
                "curl",
                "-s",
                f"{issuer.issuer}/token",
                "-d",
                "grant_type=client_credentials",
                "-d",
                f"resource={API}",
                "-d",
                "scope=read:report",
            ]
        ),
        "",
        "Decision logs follow, one JSON line per request.",
        "",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()
