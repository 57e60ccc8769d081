"""`scopegate check --online` against real discovery and JWKS servers on 127.0.0.1, and `run`'s start-up failure log
naming the URL while /readyz stays 503."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from scopegate.config import parse_config
from scopegate.discovery import HttpJwksFetcher, new_session
from scopegate.jwks import JwksCache
from scopegate.tools.online import judge_keys, probe

from conftest import ROOT, IssuerServer, Running, free_port, start_app
from tokenlib import EC_A, EC_P256, RSA

RULES = (
    "routes:\n"
    "  - { name: r, match: { path: /r, methods: [GET, HEAD] }, resource: https://a.example.com, scopes: [s] }\n"
)


def config_file(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"upstream: http://127.0.0.1:3000\nauth:\n{auth}{RULES}")
    return path


async def check_online(config: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scopegate", "check", "--online", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


class Jwks:
    """A JWKS (and discovery) server whose answers a test sets: `document`, `status`, `issuer_named`."""

    def __init__(self) -> None:
        self.document: Any = {"keys": [EC_A.jwk()]}
        self.status = 200
        self.issuer_named: str | None = None  # what discovery says the issuer is; None: the truth
        self.running: Running | None = None

    @property
    def issuer(self) -> str:
        assert self.running is not None
        return f"{self.running.url}/oidc"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/oidc/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oidc/jwks", self._jwks)
        return app

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({"issuer": self.issuer_named or self.issuer, "jwks_uri": f"{self.issuer}/jwks"})

    async def _jwks(self, _: web.Request) -> web.Response:
        return web.json_response(self.document, status=self.status)


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    server = Jwks()
    server.running = await start_app(server.app())
    yield server
    await server.running.stop()


# --- what is found ------------------------------------------------------------------------------------------------


async def test_reports_the_issuer_its_discovery_jwks_uri_and_keys(tmp_path: Path, issuer: IssuerServer) -> None:
    url = issuer.issuer.issuer
    done = await check_online(config_file(tmp_path, f"  issuer: {url}\n"))
    assert done.returncode == 0, done.stdout + done.stderr
    (kid,) = [key["kid"] for key in issuer.issuer.jwks()["keys"]]
    assert done.stdout.splitlines()[1:] == [
        f"issuer {url}: OK",
        f"  discovery: {url}/.well-known/openid-configuration",
        f"  jwks_uri:  {url}/jwks",
        f"  key kid={kid!r} kty=EC crv=P-384 alg=ES384: verifies ES384",
        "  algorithms usable with the allow-list (ES256, ES384, ES512, EdDSA, PS256, PS384, PS512, RS256, RS384,"
        " RS512): ES384",
    ]


async def test_a_configured_jwks_uri_skips_discovery(tmp_path: Path, jwks: Jwks) -> None:
    jwks.document = {"keys": [EC_A.jwk(), RSA.jwk(with_alg=False)]}
    auth = f"  issuer: {jwks.issuer}\n  jwks_uri: {jwks.issuer}/jwks\n  algorithms: [ES384, RS256]\n"
    done = await check_online(config_file(tmp_path, auth))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"issuer {jwks.issuer}: OK",
        f"  jwks_uri:  {jwks.issuer}/jwks (configured)",
        "  key kid='logto-ec-a' kty=EC crv=P-384 alg=ES384: verifies ES384",
        "  key kid='logto-rsa' kty=RSA: verifies RS256",
        "  algorithms usable with the allow-list (ES384, RS256): ES384, RS256",
    ]


async def test_several_issuers_are_each_reported_and_one_failure_fails(tmp_path: Path, jwks: Jwks) -> None:
    down = f"http://127.0.0.1:{free_port()}/oidc"
    auth = f"  issuers:\n    - issuer: {jwks.issuer}\n    - issuer: {down}\n"
    done = await check_online(config_file(tmp_path, auth))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"issuer {jwks.issuer}: OK" in lines
    failed = lines.index(f"issuer {down}: FAILED")
    assert lines[failed + 1] == f"  discovery: {down}/.well-known/openid-configuration"
    assert lines[failed + 2].startswith(f"  error: GET {down}/.well-known/openid-configuration: ClientConnectorError")


# --- what failed --------------------------------------------------------------------------------------------------


FAILURES = [
    pytest.param({"status": 500}, "error: GET {issuer}/jwks: HTTP 500 (expected 200; redirects are not followed)",
                 id="jwks-500"),
    pytest.param({"document": {"nokeys": []}}, 'error: GET {issuer}/jwks: the JWKS document has no "keys" array',
                 id="not-a-jwks"),
    pytest.param({"document": [1]}, "error: GET {issuer}/jwks: body is not a JSON object", id="not-an-object"),
    pytest.param({"issuer_named": "https://evil.example.com"},
                 "error: GET {issuer}/.well-known/openid-configuration: discovery names issuer"
                 " 'https://evil.example.com', not the configured '{issuer}'", id="discovery-names-another-issuer"),
    pytest.param({"document": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, EC_P256.jwk()]}},
                 "error: GET {issuer}/jwks: the JWKS has no key usable with the allowed algorithms ES384",
                 id="no-usable-key"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "error"), FAILURES)
async def test_says_exactly_what_failed(tmp_path: Path, jwks: Jwks, setup: dict[str, Any], error: str) -> None:
    for name, value in setup.items():
        setattr(jwks, name, value)
    done = await check_online(config_file(tmp_path, f"  issuer: {jwks.issuer}\n  algorithms: [ES384]\n"))
    assert done.returncode == 1, done.stdout
    assert f"issuer {jwks.issuer}: FAILED" in done.stdout
    assert "  " + error.format(issuer=jwks.issuer) in done.stdout.splitlines()


async def test_skipped_keys_say_why(tmp_path: Path, jwks: Jwks) -> None:
    jwks.document = {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, EC_P256.jwk(), EC_A.jwk()]}
    done = await check_online(config_file(tmp_path, f"  issuer: {jwks.issuer}\n  algorithms: [ES384]\n"))
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[4:] == [
        "  key kid='h' kty=oct: skipped (symmetric)",
        "  key kid='ec-p256' kty=EC crv=P-256 alg=ES256: skipped (no_allowed_algorithm)",
        "  key kid='logto-ec-a' kty=EC crv=P-384 alg=ES384: verifies ES384",
        "  algorithms usable with the allow-list (ES384): ES384",
    ]


def test_judge_keys_takes_keys_as_the_cache_does() -> None:
    first, again = EC_A.jwk(), EC_A.jwk()
    skipped_first = {**RSA.jwk(), "kid": "k", "use": "enc"}
    reports = judge_keys(
        [first, again, skipped_first, {**EC_A.jwk(), "kid": "k"}, {"kty": "EC", "kid": 7}, "junk"],
        frozenset({"ES384", "RS256"}),
    )
    assert [(report.kid, report.skipped) for report in reports] == [
        ("logto-ec-a", None),
        ("logto-ec-a", "duplicate_kid: the first key with this kid is used"),
        ("k", "not_for_signatures"),
        ("k", None),  # the key skipped before it holds no kid
        ("7", "kid_not_a_string"),
        (None, "not_an_object"),
    ]


async def test_probe_never_raises_for_a_failed_fetch() -> None:
    config = parse_config(
        f"upstream: http://127.0.0.1:3000\nauth: {{ issuer: 'http://127.0.0.1:{free_port()}/oidc' }}\n{RULES}"
    )
    (report,) = await probe(config.auth, timeout_seconds=2)
    assert not report.ok
    assert report.error is not None
    assert report.jwks_uri is None


# --- `run` at start-up ----------------------------------------------------------------------------------------------


async def test_the_refresh_failure_log_names_the_url(jwks: Jwks) -> None:
    jwks.document = {"nokeys": []}  # a failure whose own message has no URL in it
    async with new_session() as session:
        cache = JwksCache(
            fetch=HttpJwksFetcher(session, issuer=jwks.issuer, jwks_uri=None),
            algorithms=frozenset({"ES384"}),
            refresh_seconds=300,
            refetch_cooldown_seconds=5,
        )
        with structlog.testing.capture_logs() as logs:
            assert await cache.refresh() is False
    assert logs == [
        {
            "event": "jwks_refresh_failed",
            "log_level": "warning",
            "error": 'the JWKS document has no "keys" array',
            "keys": 0,
            "url": f"{jwks.issuer}/jwks",
        }
    ]


async def test_run_logs_the_failing_url_at_start_up_and_stays_unready(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/oidc"
    admin = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:{admin}\nupstream: http://127.0.0.1:3000\n"
        f"shutdown_grace_seconds: 1\nauth: {{ issuer: '{down}' }}\n{RULES}"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SCOPEGATE_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        failure = await asyncio.wait_for(_first_event(process.stdout, "jwks_refresh_failed"), timeout=30)
        assert failure["url"] == f"{down}/.well-known/openid-configuration"
        assert failure["error"].startswith(f"GET {down}/.well-known/openid-configuration: ClientConnectorError")
        assert failure["keys"] == 0
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{admin}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["why"] == "no signing keys loaded yet"
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0


async def _first_event(stream: asyncio.StreamReader, name: str) -> dict[str, Any]:
    while line := await stream.readline():
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == name:
            return event
    raise AssertionError(f"no {name} event before the process ended")
