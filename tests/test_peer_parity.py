"""What every peer has (issue #11), end to end through the real proxy: richer claim conditions, token sources,
claims to headers, several issuers and CORS."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from scopegate.config import Config, parse_config
from scopegate.errors import ConfigError

from conftest import (
    API,
    IssuerServer,
    Proxy,
    ProxyFactory,
    Running,
    make_config,
    start_issuer,
    wait_until,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def send(
    proxy: Proxy, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with proxy.session.request(method, proxy.url + path, headers=headers) as response:
        body = await response.read()
        return response.status, (json.loads(body) if body else {}), response.headers


# --- claim conditions -------------------------------------------------------------------------------------------

CLAIM_RULES = """
routes:
  - name: own-profile
    match: { path: "/users/{user_id}/profile" }
    resource: https://api.example.com
    claims: { sub: "{user_id}" }
  - name: staff
    match: { path: "/staff/**" }
    resource: https://api.example.com
    claims:
      roles: [admin, owner]
      app.tier: gold
      "[ext.flag]": true
"""


@pytest.fixture
async def claims_proxy(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=CLAIM_RULES))


@pytest.mark.parametrize(
    ("subject", "path", "status"),
    [
        pytest.param("user-1", "/users/user-1/profile", 200, id="own"),
        pytest.param("user-1", "/users/user-2/profile", 403, id="someone-elses"),
        pytest.param("a@b.example", "/users/a%40b.example/profile", 200, id="encoded-in-the-path"),
    ],
)
async def test_only_your_own_user(
    claims_proxy: Proxy, issuer: IssuerServer, subject: str, path: str, status: int
) -> None:
    token = issuer.issuer.mint(subject=subject, resource=API)
    got, body, _ = await send(claims_proxy, path, bearer(token))
    assert got == status, body
    if status == 403:
        assert body["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        pytest.param({"roles": ["owner"], "app": {"tier": "gold"}, "ext.flag": True}, 200, id="all-met"),
        pytest.param({"roles": "admin", "app": {"tier": "gold"}, "ext.flag": True}, 200, id="scalar-claim-any-of"),
        pytest.param({"roles": ["guest"], "app": {"tier": "gold"}, "ext.flag": True}, 403, id="no-role-overlap"),
        pytest.param({"roles": ["admin"], "app": {"tier": "silver"}, "ext.flag": True}, 403, id="nested-differs"),
        pytest.param({"roles": ["admin"], "app.tier": "gold", "ext.flag": True}, 403, id="flat-is-not-nested"),
        pytest.param({"roles": ["admin"], "app": {"tier": "gold"}, "ext": {"flag": True}}, 403, id="bracketed-is-flat"),
        pytest.param({"roles": ["admin"], "app": {"tier": "gold"}, "ext.flag": 1}, 403, id="strict-types"),
    ],
)
async def test_nested_and_any_of_conditions(
    claims_proxy: Proxy, issuer: IssuerServer, extra: dict[str, Any], status: int
) -> None:
    token = issuer.issuer.mint(resource=API, extra_claims=extra)
    got, body, _ = await send(claims_proxy, "/staff/x", bearer(token))
    assert got == status, body


# --- token sources ----------------------------------------------------------------------------------------------

TOKEN_RULES = """
token_from: [header, {cookie: session}]
routes:
  - name: ws
    match: { path: "/ws/**" }
    resource: https://api.example.com
    token_from: [{query: access_token}]
  - name: api
    match: { path: "/api/**" }
    resource: https://api.example.com
"""


@pytest.fixture
async def sources_proxy(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=TOKEN_RULES))


async def test_a_token_in_a_cookie_is_accepted_and_the_cookie_forwarded(
    sources_proxy: Proxy, issuer: IssuerServer
) -> None:
    token = issuer.issuer.mint(subject="u-cookie", resource=API)
    status, seen, _ = await send(sources_proxy, "/api/x", {"Cookie": f"theme=dark; session={token}"})
    assert status == 200
    assert seen["headers"]["X-Auth-Subject"] == "u-cookie"
    assert seen["headers"]["Cookie"] == f"theme=dark; session={token}", "cookies are forwarded as they came"


async def test_a_token_in_two_places_is_refused(sources_proxy: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API)
    status, body, _ = await send(sources_proxy, "/api/x", {**bearer(token), "Cookie": f"session={token}"})
    assert (status, body["error"]) == (400, "invalid_request")


async def test_a_route_list_replaces_the_top_level_one(sources_proxy: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API)
    status, _, _ = await send(sources_proxy, "/ws/x", bearer(token))
    assert status == 401, "the ws route reads the query only"


async def test_a_websocket_authenticates_with_a_query_token_that_never_reaches_the_app_or_the_log(
    sources_proxy: Proxy, issuer: IssuerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.issuer.mint(subject="u-ws", resource=API)
    url = sources_proxy.url + f"/ws/chat?room=1&access_token={token}"
    async with sources_proxy.session.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=20)
        await ws.send_str("ping")
        assert (await ws.receive(timeout=20)).data == "ping"
    assert hello["headers"]["X-Auth-Subject"] == "u-ws"
    status, seen, _ = await send(sources_proxy, f"/ws/plain?room=1&access_token={token}")
    assert status == 200
    assert seen["query"] == "room=1"
    assert token not in capsys.readouterr().out


# --- claims to headers ------------------------------------------------------------------------------------------

FORWARD_RULES = """
forward_claims: { email: X-Auth-Email, roles: X-Auth-Roles }
routes:
  - name: app
    match: { path: "/app/**" }
    resource: https://api.example.com
    forward_claims: { app.plan: X-Auth-Plan }
    forward_payload: true
  - name: plain
    match: { path: "/plain/**" }
    resource: https://api.example.com
"""


@pytest.fixture
async def claims_headers_proxy(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=FORWARD_RULES))


async def test_claims_reach_the_app_as_headers(claims_headers_proxy: Proxy, issuer: IssuerServer) -> None:
    extra = {"email": "ann@example.com", "roles": ["admin", "owner"], "app": {"plan": "pro"}}
    token = issuer.issuer.mint(subject="ann", resource=API, extra_claims=extra)
    forged = {"X-Auth-Email": "evil@example.com", "X-Auth-Claims": "e30"}
    status, seen, _ = await send(claims_headers_proxy, "/app/x", {**bearer(token), **forged})
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Auth-Email"] == "ann@example.com"
    assert headers["X-Auth-Roles"] == '["admin","owner"]'
    assert headers["X-Auth-Plan"] == "pro"
    padded = headers["X-Auth-Claims"] + "=" * (-len(headers["X-Auth-Claims"]) % 4)
    payload = json.loads(base64.urlsafe_b64decode(padded))
    assert (payload["sub"], payload["email"]) == ("ann", "ann@example.com")


async def test_an_absent_claim_sends_no_header_and_routes_inherit_the_top_level(
    claims_headers_proxy: Proxy, issuer: IssuerServer
) -> None:
    token = issuer.issuer.mint(resource=API, extra_claims={"roles": "viewer"})
    status, seen, _ = await send(claims_headers_proxy, "/plain/x", {**bearer(token), "X-Auth-Email": "forged"})
    assert status == 200
    headers = seen["headers"]
    assert "X-Auth-Email" not in headers, "absent claim, and the client's own header stripped"
    assert headers["X-Auth-Roles"] == "viewer"
    assert "X-Auth-Plan" not in headers
    assert "X-Auth-Claims" not in headers


# --- CORS -------------------------------------------------------------------------------------------------------

CORS_RULES = """
cors:
  allow_origins: [https://app.example.com]
  allow_headers: [Authorization, Content-Type, X-Organization-Id]
  expose_headers: [X-Request-Id]
  allow_credentials: true
  max_age_seconds: 300
routes:
  - name: reports
    match: { path: "/api/reports/{id}", methods: [GET, DELETE] }
    resource: https://api.example.com
  - name: cors-from-upstream
    match: { path: "/status/**" }
    public: true
"""
APP = "https://app.example.com"


@pytest.fixture
async def cors_proxy(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=CORS_RULES))


def preflight(origin: str, method: str = "DELETE") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization",
    }


async def test_a_preflight_is_answered_without_a_token_and_never_forwarded(cors_proxy: Proxy) -> None:
    status, body, headers = await send(cors_proxy, "/api/reports/7", preflight(APP), method="OPTIONS")
    assert (status, body) == (204, {})
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Organization-Id"
    assert (headers["Access-Control-Max-Age"], headers["Access-Control-Allow-Credentials"]) == ("300", "true")
    assert "Content-Length" not in headers
    assert cors_proxy.metrics.requests.labels("reports", "allow", "cors_preflight")._value.get() == 1


async def test_a_preflight_from_another_origin_is_403_without_cors_headers(cors_proxy: Proxy) -> None:
    status, body, headers = await send(cors_proxy, "/api/reports/7", preflight("https://evil.example"), "OPTIONS")
    assert (status, body["error"]) == (403, "origin_not_allowed")
    assert not [name for name in headers if name.lower().startswith("access-control-")]


async def test_a_preflight_for_a_method_no_route_serves_is_404(cors_proxy: Proxy) -> None:
    status, _, _ = await send(cors_proxy, "/api/reports/7", preflight(APP, "PUT"), method="OPTIONS")
    assert status == 404


async def test_a_rejection_to_an_allowed_origin_is_readable_by_the_browser(cors_proxy: Proxy) -> None:
    status, _, headers = await send(cors_proxy, "/api/reports/7", {"Origin": APP})
    assert status == 401
    assert (headers["Access-Control-Allow-Origin"], headers["Vary"]) == (APP, "Origin")
    assert headers["Access-Control-Expose-Headers"] == "X-Request-Id"


async def test_forwarded_responses_carry_scopegates_cors_not_the_upstreams(
    cors_proxy: Proxy, issuer: IssuerServer
) -> None:
    token = issuer.issuer.mint(resource=API)
    status, _, headers = await send(cors_proxy, "/api/reports/7", {**bearer(token), "Origin": APP})
    assert (status, headers["Access-Control-Allow-Origin"], headers["Access-Control-Allow-Credentials"]) == (
        200,
        APP,
        "true",
    )
    status, _, headers = await send(cors_proxy, "/api/reports/7", {**bearer(token), "Origin": "https://evil.example"})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers


async def test_without_a_cors_block_nothing_changes(proxy: Proxy) -> None:
    status, _, headers = await send(proxy, "/up/x", preflight(APP, "GET"), method="OPTIONS")
    assert status == 401, "an OPTIONS request is decided like any other"
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("forward_claims: { email: Email }", "starting with X-Auth-"),
        ("forward_claims: { sub: X-Auth-Subject }", "one of scopegate's own identity headers"),
        ("forward_claims: { a: X-Auth-A, b: x-auth-a }", "the same header"),
        ("forward_claims: { a..b: X-Auth-A }", "empty part"),
        ("cors: { allow_origins: ['*'], allow_credentials: true }", "cannot be used with allow_credentials"),
        ("cors: { allow_origins: [https://a.example/path] }", "expected an origin"),
        ("cors: { allow_methods: [GET] }", "missing required key 'allow_origins'"),
    ],
)
def test_bad_claim_headers_and_cors_blocks_are_config_errors_with_their_line(snippet: str, message: str) -> None:
    text = f"upstream: http://127.0.0.1:1\nauth: {{issuer: https://i.example}}\n{snippet}\nroutes:\n"
    text += "  - {name: r, match: {path: /x}, resource: https://api.example.com}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(problem.startswith("<config>:3:") and message in problem for problem in caught.value.problems), (
        caught.value.problems
    )


# --- several issuers --------------------------------------------------------------------------------------------


@pytest.fixture
async def second_issuer() -> AsyncIterator[IssuerServer]:
    server = await start_issuer("/tenant-b")
    yield server
    await server.stop()


def issuers_config(first: str, second: str, upstream: str) -> Config:
    text = f"""
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: {upstream}
upstream_timeout_seconds: 2
shutdown_grace_seconds: 5
auth:
  issuers:
    - {{issuer: {first}, jwks_refetch_cooldown_seconds: 0.2}}
    - {{issuer: {second}, jwks_refetch_cooldown_seconds: 0.2, jwks_refresh_seconds: 1}}
routes:
  - name: any-issuer
    match: {{ path: "/api/**" }}
    resource: https://api.example.com
  - name: tenant-b-only
    match: {{ path: "/b/**" }}
    resource: https://api.example.com
    issuers: [{second}]
"""
    return parse_config(text)


async def test_tokens_of_each_configured_issuer_are_accepted(
    issuer: IssuerServer, second_issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(issuers_config(issuer.issuer.issuer, second_issuer.issuer.issuer, upstream.url))
    for dev in (issuer.issuer, second_issuer.issuer):
        status, seen, _ = await send(proxy, "/api/x", bearer(dev.mint(subject=dev.issuer, resource=API)))
        assert (status, seen["headers"]["X-Auth-Subject"]) == (200, dev.issuer)


async def test_a_token_of_an_issuer_not_configured_is_invalid(
    issuer: IssuerServer, second_issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    config = make_config(issuer.issuer.issuer, upstream.url)
    proxy = await start_proxy(config)
    status, body, _ = await send(proxy, "/api/reports/1", bearer(second_issuer.issuer.mint(resource=API)))
    assert (status, body["error"]) == (401, "invalid_token")


async def test_a_route_may_accept_only_some_issuers(
    issuer: IssuerServer, second_issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(issuers_config(issuer.issuer.issuer, second_issuer.issuer.issuer, upstream.url))
    status, body, _ = await send(proxy, "/b/x", bearer(issuer.issuer.mint(resource=API)))
    assert (status, body["error"]) == (401, "invalid_token")
    assert proxy.metrics.requests.labels("tenant-b-only", "deny", "invalid_token")._value.get() == 1
    status, _, _ = await send(proxy, "/b/x", bearer(second_issuer.issuer.mint(resource=API)))
    assert status == 200


async def test_an_unreachable_issuer_fails_only_its_own_tokens(
    issuer: IssuerServer, second_issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    """Serving starts while tenant B is down: A's tokens pass, B's get 503, /readyz waits for every issuer."""
    await second_issuer.stop()
    config = issuers_config(issuer.issuer.issuer, second_issuer.issuer.issuer, upstream.url)
    proxy = await start_proxy(config, wait_ready=False)
    gateway = proxy.server.gateway
    await wait_until(lambda: gateway.metrics.jwks_keys._value.get() >= 1, limit=20)
    assert not gateway.ready
    async with proxy.session.get(proxy.admin + "/readyz") as response:
        assert response.status == 503
    status, _, _ = await send(proxy, "/api/x", bearer(issuer.issuer.mint(resource=API)))
    assert status == 200
    status, body, _ = await send(proxy, "/api/x", bearer(second_issuer.issuer.mint(resource=API)))
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    await second_issuer.restart()
    await wait_until(lambda: gateway.ready, limit=20)
    status, _, _ = await send(proxy, "/api/x", bearer(second_issuer.issuer.mint(resource=API)))
    assert status == 200


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            "auth:\n  issuer: https://a.example\n  issuers: [{issuer: https://b.example}]",
            "give either `issuer`",
        ),
        ("auth:\n  issuers: [{issuer: https://a.example}, {issuer: https://a.example}]", "listed twice"),
        ("auth:\n  issuers: [{jwks_uri: https://a.example/jwks}]", "missing required key 'issuer'"),
    ],
)
def test_bad_issuer_lists_are_config_errors(auth: str, message: str) -> None:
    text = f"upstream: http://127.0.0.1:1\n{auth}\nroutes:\n  - {{name: r, match: {{path: /x}}, resource: https://r.example}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_a_route_may_name_only_configured_issuers() -> None:
    text = (
        "upstream: http://127.0.0.1:1\nauth: {issuer: https://a.example}\nroutes:\n"
        "  - name: r\n    match: {path: /x}\n    resource: https://r.example\n    issuers: [https://b.example]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    (problem,) = caught.value.problems
    assert problem.startswith("<config>:7:")
    assert "is not one of the issuers under `auth`" in problem
