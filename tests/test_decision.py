"""The decision endpoint (`decision_listen`): which original request it decides about, and that it decides exactly
like the proxy port, through the real server and the real `scopegate run`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.client import URL

from scopegate.decision import original_request, require_normal_form
from scopegate.errors import BadPath, BadRequest
from scopegate.request import Headers, RequestFacts

from conftest import API, ROOT, RULES, IssuerServer, Proxy, ProxyFactory, Running, free_port, make_config, wait_until

# --- which request the decision is about ---------------------------------------------------------------------------

Fields = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Described:
    """A decision request (its own method, target and header fields) and the original request it stands for."""

    fields: Fields
    expected: tuple[str, str] | str  # (method, target), or the BadRequest detail
    method: str = "GET"
    target: str = "/decide"
    prefix: str = ""


def row(id: str, fields: Fields, expected: tuple[str, str] | str, **kwargs: str) -> Any:
    return pytest.param(Described(fields, expected, **kwargs), id=id)


URL_OF = "https://api.example.com/api/reports/1?x=1"

ORIGINAL_REQUESTS = [
    # nginx auth_request and ingress-nginx auth-url: X-Original-Method with X-Original-URI or X-Original-URL
    row("nginx-uri", (("X-Original-Method", "POST"), ("X-Original-URI", "/api/reports/1?x=1")),
        ("POST", "/api/reports/1?x=1")),
    row("ingress-nginx-url", (("X-Original-Method", "GET"), ("X-Original-URL", URL_OF)), ("GET", "/api/reports/1?x=1")),
    row("url-scheme-in-any-case", (("X-Original-Method", "GET"), ("X-Original-URL", "HTTPS://[::1]:8443/a")),
        ("GET", "/a")),
    row("url-without-path-is-the-root", (("X-Original-Method", "GET"), ("X-Original-URL", "https://api.example.com")),
        ("GET", "/")),
    row("ingress-nginx-url-and-uri-agreeing",
        (("X-Original-Method", "GET"), ("X-Original-URL", URL_OF), ("X-Original-URI", "/api/reports/1?x=1")),
        ("GET", "/api/reports/1?x=1")),
    row("url-without-path-and-uri-root", (("X-Original-Method", "GET"), ("X-Original-URL", "https://api.example.com"),
                                          ("X-Original-URI", "/")), ("GET", "/")),
    row("names-in-any-case", (("x-original-method", "DELETE"), ("X-ORIGINAL-URI", "/a")), ("DELETE", "/a")),
    row("original-request-ignores-the-decision-path-and-prefix",
        (("X-Original-Method", "GET"), ("X-Original-URI", "/a")), ("GET", "/a"), target="/elsewhere", prefix="/authz"),
    # Traefik ForwardAuth and Caddy forward_auth: X-Forwarded-Method with X-Forwarded-Uri
    row("traefik", (("X-Forwarded-Method", "PUT"), ("X-Forwarded-Uri", "/api/reports/1")), ("PUT", "/api/reports/1")),
    row("both-families-agreeing",
        (("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/a?b"), ("X-Original-Method", "GET"),
         ("X-Original-URI", "/a?b")), ("GET", "/a?b")),
    # Envoy ext_authz: the decision request's own method and target, behind decision_path_prefix
    row("envoy-own-request", (), ("PATCH", "/api/reports/1?x=1"), method="PATCH", target="/api/reports/1?x=1"),
    row("own-absolute-form-target", (), ("GET", "/a?b"), target="http://h/a?b"),
    row("own-target-neither-path-nor-url", (), "bad_original_target", method="OPTIONS", target="*"),
    row("envoy-prefix-stripped", (), ("GET", "/api/reports/1?x=1"), target="/authz/api/reports/1?x=1",
        prefix="/authz"),
    row("envoy-prefix-alone-is-the-root", (), ("GET", "/"), target="/authz", prefix="/authz"),
    row("envoy-prefix-then-query", (), ("GET", "/?a=1"), target="/authz?a=1", prefix="/authz"),
    row("envoy-path-outside-the-prefix", (), "outside_decision_path_prefix", target="/other/x", prefix="/authz"),
    row("envoy-prefix-is-whole-segments", (), "outside_decision_path_prefix", target="/authzx/y", prefix="/authz"),
    row("unrelated-x-forwarded-headers-are-not-a-description",
        (("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "api.example.com")), ("GET", "/decide")),
    # described by halves
    row("method-without-uri", (("X-Original-Method", "GET"),), "half_original_request"),
    row("uri-without-method", (("X-Original-URI", "/a"),), "half_original_request"),
    row("url-without-method", (("X-Original-URL", URL_OF),), "half_original_request"),
    row("forwarded-method-without-uri", (("X-Forwarded-Method", "GET"),), "half_original_request"),
    row("forwarded-uri-without-method", (("X-Forwarded-Uri", "/a"),), "half_original_request"),
    row("half-beside-a-whole-pair",
        (("X-Original-Method", "GET"), ("X-Original-URI", "/a"), ("X-Forwarded-Uri", "/a")), "half_original_request"),
    # described twice
    row("method-twice", (("X-Original-Method", "GET"), ("X-Original-Method", "GET"), ("X-Original-URI", "/a")),
        "several_original_requests"),
    row("uri-twice", (("X-Original-Method", "GET"), ("X-Original-URI", "/a"), ("X-Original-URI", "/b")),
        "several_original_requests"),
    row("url-twice", (("X-Original-Method", "GET"), ("X-Original-URL", URL_OF), ("X-Original-URL", URL_OF)),
        "several_original_requests"),
    row("forwarded-uri-twice", (("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/a"), ("X-Forwarded-Uri", "/a")),
        "several_original_requests"),
    # a client's own description beside the ingress's: refused, whichever family the ingress speaks
    row("url-and-uri-disagreeing",
        (("X-Original-Method", "GET"), ("X-Original-URL", URL_OF), ("X-Original-URI", "/public/x")),
        "conflicting_original_requests"),
    row("families-disagreeing-on-the-path",
        (("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/admin/x"), ("X-Original-Method", "GET"),
         ("X-Original-URI", "/public/x")), "conflicting_original_requests"),
    row("families-disagreeing-on-the-method",
        (("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", "/a"), ("X-Original-Method", "GET"),
         ("X-Original-URI", "/a")), "conflicting_original_requests"),
    # targets: a path, or an http(s) URL whose host (the client's Host header) cannot move where the path starts
    row("url-host-with-question-mark", (("X-Original-Method", "GET"), ("X-Original-URL", "http://x?/admin/y")),
        "bad_original_target"),
    row("url-host-with-hash", (("X-Original-Method", "GET"), ("X-Original-URL", "http://x#/admin/y")),
        "bad_original_target"),
    row("url-query-without-path", (("X-Original-Method", "GET"), ("X-Original-URL", "http://x?a=1")),
        "bad_original_target"),
    row("url-other-scheme", (("X-Original-Method", "GET"), ("X-Original-URL", "ftp://h/a")), "bad_original_target"),
    row("uri-not-a-path", (("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "admin/y")), "bad_original_target"),
    # methods
    row("lower-case-method", (("X-Original-Method", "get"), ("X-Original-URI", "/a")), "bad_original_method"),
    row("unknown-method", (("X-Forwarded-Method", "FETCH"), ("X-Forwarded-Uri", "/a")), "bad_original_method"),
    row("empty-method", (("X-Original-Method", ""), ("X-Original-URI", "/a")), "bad_original_method"),
]  # fmt: skip


@pytest.mark.parametrize("case", ORIGINAL_REQUESTS)
def test_original_request_is_taken_from_the_ingress_headers_or_the_request_itself(case: Described) -> None:
    facts = RequestFacts(case.method, case.target, Headers.of(case.fields))
    if isinstance(case.expected, str):
        with pytest.raises(BadRequest) as refused:
            original_request(facts, case.prefix)
        assert refused.value.detail == case.expected
        assert refused.value.status == 400
        return
    original = original_request(facts, case.prefix)
    assert (original.method, original.target) == case.expected
    assert original.headers is facts.headers, "the token and organization header are the decision request's own"


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        ("/api/reports/1", None),
        ("/api/reports/1/?a=../b&c=%2F", None),  # the query is the upstream's to read
        ("/a%C3%A9", None),
        ("/public/../admin/x", "not_normalized"),
        ("/admin/x/../../public/y", "not_normalized"),
        ("//admin/x", "not_normalized"),
        ("/admin/./x", "not_normalized"),
        ("/admin/x#/../../public/y", "not_normalized"),  # nginx forwards it; upstreams read the path as /admin/x
        ("/admin/x%23/../../public/y", "not_normalized"),
        ("/%61dmin/x", "not_normalized"),
        ("/a%c3%a9", "not_normalized"),
        ("/public/%2F..%2Fadmin", None),  # hostile: left to the gate, which refuses it as on the proxy port
        ("/a;b", None),
    ],
)
def test_the_decision_endpoint_decides_only_paths_already_in_normal_form(target: str, refused: str | None) -> None:
    """The proxy port forwards the normalized path; an ingress forwards the path as it came, so it must be that."""
    if refused is None:
        require_normal_form(target, allow_path_parameters=False)
        return
    with pytest.raises(BadPath) as bad:
        require_normal_form(target, allow_path_parameters=False)
    assert bad.value.detail == refused


# --- the decision endpoint answers like the proxy port -------------------------------------------------------------

PREFIX = "/ext-authz"
Family = Callable[[str, str], tuple[str, str, dict[str, str]]]

# How each ingress asks about (method, target): the decision request's method, target and extra headers.
FAMILIES: dict[str, Family] = {
    "nginx": lambda m, t: ("GET", "/auth", {"X-Original-Method": m, "X-Original-URI": t}),
    "ingress-nginx": lambda m, t: (
        "GET",
        "/",
        {"X-Original-Method": m, "X-Original-URL": "http://api.example.com" + t},
    ),
    "ingress-nginx-auth-method": lambda m, t: (
        "GET",
        "/",
        {"X-Original-Method": m, "X-Original-URI": t, "X-Original-URL": "http://api.example.com" + t},
    ),
    "traefik": lambda m, t: ("GET", "/", {"X-Forwarded-Method": m, "X-Forwarded-Uri": t}),
    "envoy": lambda m, t: (m, PREFIX + t, {}),
}


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    status: int
    token: dict[str, Any] | None = None  # DevIssuer.mint arguments
    headers: dict[str, str] = field(default_factory=dict)
    tamper: bool = False
    not_normalized: bool = False  # the proxy port forwards it normalized; the decision endpoint refuses it (400)


def case(id: str, method: str, target: str, status: int, token: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    return pytest.param(Case(method, target, status, token, **kwargs), id=id)


READ = {"subject": "alice", "client_id": "web", "resource": API, "scopes": ["read:report"]}
TABLE = [
    case("allowed-global", "GET", "/api/reports/7?x=1", 200, READ),
    case("allowed-organization", "POST", "/orgs/acme/members", 200,
         {"subject": "bob", "organization_id": "acme", "scopes": ["invite:member"]}),
    case("allowed-organization-api", "GET", "/api/orgs/acme/projects/9", 200,
         {"subject": "carol", "resource": API, "organization_id": "acme", "scopes": ["read:project"]}),
    case("allowed-organization-header", "GET", "/api/settings", 200,
         {"subject": "dan", "resource": API, "organization_id": "acme", "scopes": ["manage:settings"]},
         headers={"X-Organization-Id": "acme"}),
    case("public", "GET", "/public/docs", 200),
    case("no-token", "GET", "/api/reports/7", 401),
    case("bad-signature", "GET", "/api/reports/7", 401, READ, tamper=True),
    case("wrong-scope", "GET", "/api/reports/7", 403, {**READ, "scopes": ["read:other"]}),
    case("wrong-organization", "GET", "/api/orgs/acme/projects/9", 403,
         {"resource": API, "organization_id": "other", "scopes": ["read:project"]}),
    case("organization-header-missing", "GET", "/api/settings", 400,
         {"resource": API, "organization_id": "acme", "scopes": ["manage:settings"]}),
    case("no-route", "GET", "/nowhere", 404),
    case("no-route-for-the-method", "DELETE", "/api/reports/7", 404, READ),
    case("hostile-path", "GET", "/public/%2F..%2Fadmin", 400),
    case("dot-segments", "GET", "/public/../admin/x", 401, not_normalized=True),
    case("dot-segments-to-a-public-path", "GET", "/admin/x/../../public/y", 200, not_normalized=True),
    case("encoded-hash", "GET", "/admin/x%23/../../public/y", 200, not_normalized=True),
    case("double-slash", "GET", "//api/reports/7", 200, READ, not_normalized=True),
    case("audit-mode-denial", "GET", "/beta/feature", 200, {**READ, "scopes": ["read:other"]}),
]  # fmt: skip

LOGGED = ("route", "decision", "reason", "detail", "status", "method", "path", "sub", "client_id", "organization_id")


def tampered(token: str) -> str:
    """The token with its signature's last characters changed: well-formed, but the signature fails."""
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


def identity_of(headers: Any) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower().startswith("x-auth-")}


def requests_total(proxy: Proxy) -> dict[tuple[str, str, str], float]:
    counts = {}
    for family in proxy.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "scopegate_requests_total":
                labels = sample.labels
                counts[(labels["route"], labels["decision"], labels["reason"])] = sample.value
    return counts


def counted_since(
    before: dict[tuple[str, str, str], float], now: dict[tuple[str, str, str], float]
) -> dict[Any, float]:
    return {key: value - before.get(key, 0.0) for key, value in now.items() if value != before.get(key, 0.0)}


@pytest.fixture
async def both_doors(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> tuple[Proxy, str]:
    extra = f"decision_listen: 127.0.0.1:0\ndecision_path_prefix: {PREFIX}"
    proxy = await start_proxy(make_config(issuer.issuer.issuer, upstream.url, extra=extra))
    return proxy, f"http://{proxy.server.bound['decision']}"


@pytest.mark.parametrize("c", TABLE)
async def test_the_decision_endpoint_answers_like_the_proxy_port(
    c: Case, both_doors: tuple[Proxy, str], issuer: IssuerServer
) -> None:
    proxy, decisions = both_doors
    headers = dict(c.headers)
    if c.token is not None:
        token = issuer.issuer.mint(**c.token)
        headers["Authorization"] = f"Bearer {tampered(token) if c.tamper else token}"
    before = requests_total(proxy)
    with structlog.testing.capture_logs() as logs:
        proxied = await _ask(proxy.session, c.method, proxy.url + c.target, {**headers, "X-Request-Id": "proxied"})
        await wait_until(lambda: len(_decision_lines(logs)) == 1)
        answers = {}
        for name, family in FAMILIES.items():
            method, target, described = family(c.method, c.target)
            rid = f"via-{name}"
            asked = {**headers, **described, "X-Request-Id": rid}
            answers[name] = await _ask(proxy.session, method, decisions + target, asked)
            await wait_until(lambda: len(_decision_lines(logs)) == len(answers) + 1)
    lines = _decision_lines(logs)

    assert proxied.status == c.status, proxied
    if c.not_normalized:
        assert_refused_as_not_normalized(answers, lines[1:])
    else:
        assert_answered_alike(proxied, answers)
    # One decision line and one count per decision.
    assert len(lines) == 1 + len(FAMILIES)
    proxied_line = {key: lines[0][key] for key in LOGGED}
    counted = counted_since(before, requests_total(proxy))
    key = (proxied_line["route"], proxied_line["decision"], proxied_line["reason"])
    if c.not_normalized:
        assert counted == {key: 1, ("", "deny", "bad_path"): len(FAMILIES)}
        return
    for line in lines[1:]:
        assert {key: line[key] for key in LOGGED} == proxied_line, line["request_id"]
    assert counted == {key: 1 + len(FAMILIES)}


def assert_answered_alike(proxied: Answer, answers: dict[str, Answer]) -> None:
    for name, answer in answers.items():
        assert answer.status == proxied.status, (name, answer)
        assert answer.headers["X-Request-Id"] == f"via-{name}"
        if proxied.status == 200:
            # The ingress copies these upstream: exactly what the proxy port forwarded, and nothing in the body.
            assert answer.body == b"", name
            assert identity_of(answer.headers) == identity_of(json.loads(proxied.body)["headers"]), name
        else:
            assert json.loads(answer.body) == json.loads(proxied.body), name
            assert answer.headers.get("WWW-Authenticate") == proxied.headers.get("WWW-Authenticate"), name
            assert answer.headers["Content-Type"] == proxied.headers["Content-Type"], name
            assert not identity_of(answer.headers), name


def assert_refused_as_not_normalized(answers: dict[str, Answer], lines: list[dict[str, Any]]) -> None:
    """The proxy port forwards such a path normalized; an ingress would forward it as it came: refused."""
    for name, answer in answers.items():
        assert answer.status == 400, (name, answer)
        assert json.loads(answer.body)["error"] == "invalid_request", name
        assert "WWW-Authenticate" not in answer.headers, name
        assert not identity_of(answer.headers), name
    assert {(line["reason"], line["detail"], line["status"]) for line in lines} == {("bad_path", "not_normalized", 400)}


async def test_identity_headers_the_client_sent_are_named_for_envoy_to_remove(
    both_doors: tuple[Proxy, str], issuer: IssuerServer
) -> None:
    proxy, decisions = both_doors
    token = issuer.issuer.mint(subject="alice", client_id="web", resource=API, scopes=["read:report"])
    forged = {"X-Auth-Subject": "root", "x-auth-foo": "1", "X_Auth_Client_Id": "evil", "X-Authz": "kept"}
    url = decisions + PREFIX
    allowed = await _ask(proxy.session, "GET", url + "/api/reports/1", {"Authorization": f"Bearer {token}", **forged})
    public = await _ask(proxy.session, "GET", url + "/public/x", forged)
    plain = await _ask(proxy.session, "GET", url + "/public/x", {})
    denied = await _ask(proxy.session, "GET", url + "/api/reports/1", forged)
    assert allowed.status == 200
    assert allowed.headers["X-Auth-Subject"] == "alice", "the token's identity, never the client's"
    # Envoy removes what is listed after it has set the identity headers: a name scopegate sets is not listed (its
    # value overwrites the client's), or the token's own X-Auth-Subject would be removed too.
    assert allowed.headers["x-envoy-auth-headers-to-remove"] == "X_Auth_Client_Id,x-auth-foo"
    assert public.status == 200
    assert identity_of(public.headers) == {"X-Auth-Route": "public"}
    assert public.headers["x-envoy-auth-headers-to-remove"] == "X-Auth-Subject,X_Auth_Client_Id,x-auth-foo"
    assert plain.status == 200
    assert "x-envoy-auth-headers-to-remove" not in plain.headers
    assert denied.status == 401
    assert "x-envoy-auth-headers-to-remove" not in denied.headers, "a denial forwards nothing"


async def test_a_client_description_beside_the_ingress_one_is_refused(
    both_doors: tuple[Proxy, str], issuer: IssuerServer
) -> None:
    """Traefik and Caddy pass every client header on, ingress-nginx too (it sets X-Original-URL, not -URI): a
    client's own X-Original-URI must not make the decision about another path than the one the ingress serves."""
    proxy, decisions = both_doors
    spoof = {"X-Original-Method": "GET", "X-Original-URI": "/public/x"}
    cases = {
        "traefik": {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/admin/x", **spoof},
        "ingress-nginx": {
            "X-Original-Method": "GET",
            "X-Original-URL": "http://h/admin/x",
            "X-Original-URI": "/public/x",
        },
    }
    with structlog.testing.capture_logs() as logs:
        for headers in cases.values():
            answer = await _ask(proxy.session, "GET", decisions + "/", headers)
            assert answer.status == 400, answer
            assert json.loads(answer.body)["error"] == "invalid_request"
    assert [(line["reason"], line["detail"]) for line in _decision_lines(logs)] == [
        ("bad_request", "conflicting_original_requests")
    ] * 2


async def test_a_request_the_decision_endpoint_cannot_read_is_a_logged_400(both_doors: tuple[Proxy, str]) -> None:
    proxy, decisions = both_doors
    before = requests_total(proxy)
    with structlog.testing.capture_logs() as logs:
        half = await _ask(proxy.session, "POST", decisions + "/", {"X-Forwarded-Uri": "/api/reports/1"})
        outside = await _ask(proxy.session, "GET", decisions + "/api/reports/1", {})
    assert (half.status, outside.status) == (400, 400)
    assert json.loads(half.body)["error"] == "invalid_request"
    assert [(line["reason"], line["detail"], line["status"]) for line in _decision_lines(logs)] == [
        ("bad_request", "half_original_request", 400),
        ("bad_request", "outside_decision_path_prefix", 400),
    ]
    assert counted_since(before, requests_total(proxy)) == {("", "deny", "bad_request"): 2}


async def test_head_and_keep_alive_on_the_decision_endpoint(
    both_doors: tuple[Proxy, str], issuer: IssuerServer
) -> None:
    """Envoy asks with the original method, HEAD included, over kept-alive connections."""
    _, decisions = both_doors
    token = issuer.issuer.mint(subject="alice", resource=API, scopes=["read:report"])
    connections = 0

    async def connected(*_: object) -> None:
        nonlocal connections
        connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connected)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        for target, status in (("/api/reports/1", 200), ("/api/reports/2", 401), ("/api/reports/3", 200)):
            headers = {"Authorization": f"Bearer {token}"} if status == 200 else {}
            async with session.head(decisions + PREFIX + target, headers=headers) as response:
                assert response.status == status
                assert await response.read() == b""
                assert response.headers.get("X-Auth-Subject") == ("alice" if status == 200 else None)
    assert connections == 1, "one connection served all three"


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes


async def _ask(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]) -> Answer:
    async with session.request(method, URL(url, encoded=True), headers=headers) as response:
        return Answer(response.status, response.headers, await response.read())


def _decision_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "decision"]


# --- `scopegate run` without an upstream -------------------------------------------------------------------------


def _cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SCOPEGATE_CONFIG", None)
    return env


async def _wait_ready(session: aiohttp.ClientSession, admin: str, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        assert process.returncode is None, "scopegate run exited early"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(admin + "/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("scopegate run never became ready")


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_run_without_upstream_serves_only_decisions(tmp_path: Path, issuer: IssuerServer) -> None:
    listen, admin, decision = free_port(), free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\ndecision_listen: 127.0.0.1:{decision}\n"
        f"shutdown_grace_seconds: 5\nauth:\n  issuer: {issuer.issuer.issuer}\n{RULES}"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_cli_env(),
    )  # fmt: skip
    token = issuer.issuer.mint(subject="alice", client_id="web", resource=API, scopes=["read:report"])
    url = f"http://127.0.0.1:{decision}"
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{admin}", process)
            asked = {"X-Original-Method": "GET", "X-Original-URI": "/api/reports/9"}
            allowed = await _ask(session, "GET", url + "/", {**asked, "Authorization": f"Bearer {token}"})
            denied = await _ask(session, "GET", url + "/", asked)
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                metrics = await response.text()
        assert await asyncio.to_thread(_refuses_connections, listen), "no upstream: the proxy port is not served"
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert (allowed.status, allowed.body) == (200, b"")
    assert identity_of(allowed.headers) == {
        "X-Auth-Route": "reports-read", "X-Auth-Scopes": "read:report", "X-Auth-Subject": "alice",
        "X-Auth-Client-Id": "web",
    }  # fmt: skip
    assert denied.status == 401
    assert denied.headers["WWW-Authenticate"] == 'Bearer realm="scopegate"'
    assert 'scopegate_requests_total{decision="allow",reason="ok",route="reports-read"} 1.0' in metrics
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    ignored = [line for line in lines if line["event"] == "listen_ignored"]
    assert [(line["listen"], line["level"]) for line in ignored] == [(f"127.0.0.1:{listen}", "warning")]
    started = next(line for line in lines if line["event"] == "started")
    assert (started["listen"], started["decision_listen"]) == ("-", f"127.0.0.1:{decision}")
    decided = [(line["path"], line["status"], line["reason"]) for line in lines if line["event"] == "decision"]
    assert decided == [("/api/reports/9", 200, "ok"), ("/api/reports/9", 401, "missing_token")]
    assert token not in stdout.decode() + stderr.decode()
