"""Bugs found on a careful read (issue #8), each pinned by a test that failed before its fix, through the real proxy.

Path parameters routing around rules, audit-mode denials and unverified tokens reaching the app, underscore twins
of the organization header, colliding identity-header encodings, untrusted X-Forwarded-*, unexpected exceptions
answered as the client's fault, and the connection and token-size limits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from scopegate.config import Config, config_from_bytes, content_digest
from scopegate.gate import header_value
from scopegate.listener import Http1Server
from scopegate.observability import Metrics
from scopegate.pipeline import Pipeline, Ruleset
from scopegate.routing import normalize_path
from scopegate.tokens import Claims

from conftest import API, IssuerServer, Proxy, ProxyFactory, Running, make_config
from tokenlib import raw_token

CATCH_ALL_RULES = """
routes:
  - name: admin
    match: { path: "/admin/**" }
    resource: https://api.example.com
    scopes: [manage:tenant]
  - name: settings
    match: { path: /settings }
    resource: https://api.example.com
    organization: { from: header, name: X-Organization-Id }
  - name: audited
    match: { path: "/beta/**" }
    resource: https://api.example.com
    scopes: [beta]
    mode: audit
  - name: token-passing
    match: { path: "/passthrough/**" }
    public: true
    forward_unverified_token: true
  - name: everything-else
    match: { path: "/**" }
    public: true
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def send(proxy: Proxy, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Status and JSON body: the echo upstream's description of what it received, or the rejection."""
    async with proxy.session.get(proxy.url + path, headers=headers) as response:
        return response.status, json.loads(await response.read())


@pytest.fixture
async def gated(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES))


# --- path parameters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin;x/secret", "/admin%3Bx/secret", "/admin%3bx/secret", "/admin/..;/admin"])
async def test_path_parameters_cannot_route_around_a_rule(gated: Proxy, path: str) -> None:
    """Tomcat, Jetty and Spring serve `/admin;x/secret` as `/admin/secret`: refused before routing, public or not."""
    status, body = await send(gated, path)
    assert (status, body["error"]) == (400, "invalid_request")
    assert gated.metrics.requests.labels("", "deny", "bad_path")._value.get() == 1


async def test_semicolons_in_the_query_stay_allowed(gated: Proxy) -> None:
    status, seen = await send(gated, "/anything?a=1;b=2")
    assert (status, seen["path"], seen["query"]) == (200, "/anything", "a=1;b=2")


async def test_path_parameters_pass_when_the_config_allows_them(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    config = make_config(issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES, extra="allow_path_parameters: true")
    proxy = await start_proxy(config)
    status, seen = await send(proxy, "/files;v=2/readme")
    assert (status, seen["path"]) == (200, "/files;v=2/readme")
    status, _ = await send(proxy, "/admin/..;/admin")  # a dot segment with parameters stays ambiguous
    assert status == 400


def test_the_encoded_backslash_refusal_names_the_backslash() -> None:
    """The description sanitizer turned a literal backslash into '?': the message must not need one."""
    with pytest.raises(Exception, match="encoded_backslash") as caught:
        normalize_path("/a%5Cb")
    description = getattr(caught.value, "description", "")
    assert "backslash (%5C)" in description
    assert "?" not in description


# --- what reaches the upstream ------------------------------------------------------------------------------------


async def test_audit_denial_is_marked_and_carries_no_unproven_identity(gated: Proxy, issuer: IssuerServer) -> None:
    weak = issuer.issuer.mint(subject="u1", resource=API, scopes=["read:other"])
    status, seen = await send(gated, "/beta/x", {**bearer(weak), "X-Organization-Id": "acme"})
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Auth-Decision"] == "audit_deny"
    assert headers["X-Auth-Subject"] == "u1"  # verified: the token proved it
    assert "X-Auth-Organization-Id" not in headers
    assert headers["Authorization"] == f"Bearer {weak}"  # verified, so the app may read it


async def test_audit_denial_of_a_bad_token_forwards_neither_token_nor_identity(gated: Proxy) -> None:
    forged = raw_token({"alg": "none", "typ": "at+jwt"}, {"sub": "admin", "aud": API, "scope": "beta"})
    status, seen = await send(gated, "/beta/x", bearer(forged))
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Auth-Decision"] == "audit_deny"
    assert "Authorization" not in headers
    assert not {"X-Auth-Subject", "X-Auth-Scopes", "X-Auth-Client-Id"} & set(headers)


async def test_client_sent_decision_header_is_stripped(gated: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API, scopes=["beta"])
    status, seen = await send(gated, "/beta/x", {**bearer(token), "X-Auth-Decision": "allow", "X_Auth_Decision": "1"})
    assert status == 200
    assert "X-Auth-Decision" not in seen["headers"]
    assert "X_Auth_Decision" not in seen["headers"]


async def test_a_token_nobody_verified_does_not_reach_the_app(gated: Proxy) -> None:
    """On a public route the token was never checked: an `alg: none` token must not arrive looking like any other."""
    forged = raw_token({"alg": "none"}, {"sub": "admin"})
    status, seen = await send(gated, "/public/page", bearer(forged))
    assert status == 200
    assert "Authorization" not in seen["headers"]


async def test_a_route_may_opt_in_to_forwarding_the_unverified_token(gated: Proxy) -> None:
    status, seen = await send(gated, "/passthrough/x", bearer("opaque-token"))
    assert (status, seen["headers"].get("Authorization")) == (200, "Bearer opaque-token")


async def test_a_verified_token_is_forwarded(gated: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API, scopes=["manage:tenant"])
    status, seen = await send(gated, "/admin/users", bearer(token))
    assert (status, seen["headers"]["Authorization"]) == (200, f"Bearer {token}")


@pytest.mark.parametrize(
    "twins",
    [
        pytest.param({"X-Organization-Id": "acme", "X_Organization_Id": "evil"}, id="underscore-twin"),
        pytest.param({"X-Organization-Id": "acme", "x_organization-id": "evil"}, id="mixed-twin"),
    ],
)
async def test_underscore_twins_of_the_organization_header_are_several(
    gated: Proxy, issuer: IssuerServer, twins: dict[str, str]
) -> None:
    """A WSGI/CGI app reads `X_Organization_Id` as `X-Organization-Id`: which one it takes is anybody's guess."""
    token = issuer.issuer.mint(resource=API, organization_id="acme")
    status, body = await send(gated, "/settings", {**bearer(token), **twins})
    assert (status, body["error"]) == (400, "invalid_request")
    assert gated.metrics.requests.labels("settings", "deny", "missing_organization")._value.get() == 1


@pytest.mark.parametrize(
    ("claim", "sent"),
    [
        ("plain", "plain"),
        ("a\rb", "a%0Db"),
        ("a%0Db", "a%250Db"),  # the text "%0D" must not read like an encoded CR
        ("100%", "100%25"),
        ("caf\u00e9", "caf%C3%A9"),
    ],
)
def test_identity_header_encoding_is_reversible(claim: str, sent: str) -> None:
    assert header_value(claim) == sent


async def test_untrusted_forwarding_headers_are_replaced(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    config = make_config(
        issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES, extra="trust_forwarded_headers: false"
    )
    proxy = await start_proxy(config)
    sent = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bank.example", "X-Forwarded-For": "10.9.9.9"}
    status, seen = await send(proxy, "/page", sent)
    assert status == 200
    headers = seen["headers"]
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Host"] != "bank.example"


async def test_trusted_forwarding_headers_are_kept_by_default(gated: Proxy) -> None:
    sent = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example", "X-Forwarded-For": "10.9.9.9"}
    status, seen = await send(gated, "/page", sent)
    assert status == 200
    headers = seen["headers"]
    assert (headers["X-Forwarded-Proto"], headers["X-Forwarded-Host"]) == ("https", "app.example")
    assert headers["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"


# --- an unexpected exception is ours, not the client's ----------------------------------------------------------


class _BrokenCredentials:
    """Credentials with a bug: the one way to make the pipeline meet an exception it did not plan for."""

    def __init__(self, fail_later: bool) -> None:
        self._fail_later = fail_later

    def claims(self, token: str) -> Claims:
        if self._fail_later:
            return self._later()  # type: ignore[return-value]
        raise ZeroDivisionError("a bug")

    async def _later(self) -> Claims:
        await asyncio.sleep(0)
        raise KeyError("a bug")


@pytest.mark.parametrize("fail_later", [False, True], ids=["synchronous", "while-verifying"])
async def test_an_internal_error_is_a_logged_and_counted_500(
    issuer: IssuerServer, upstream: Running, fail_later: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES)
    metrics = Metrics(process=False)
    server = Http1Server(
        Pipeline(rules=Ruleset.build(config, _BrokenCredentials(fail_later)), metrics=metrics), config.limits
    )
    port = await server.listen("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/admin/x", headers=bearer("a.b.c")) as response:
                body = await response.json()
                assert (response.status, body["error"]) == (500, "server_error")
            async with session.get(f"http://127.0.0.1:{port}/public") as response:
                assert response.status == 200, "the process keeps serving"
    finally:
        await server.drain(1.0)
    # The route is unknown: the decision that would have named it is what failed.
    assert metrics.requests.labels("", "deny", "internal_error")._value.get() == 1
    assert metrics.inflight._value.get() == 0
    assert "internal_error" in capsys.readouterr().out


# --- limits -----------------------------------------------------------------------------------------------------


async def test_connections_over_the_limit_get_a_503_and_the_rest_keep_working(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    config = make_config(
        issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES, extra="limits: {max_connections: 2}"
    )
    proxy = await start_proxy(config)
    port = proxy.server.bound["proxy"].port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 20)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: " in head
    assert json.loads(body)["error"] == "temporarily_unavailable"
    writer.close()
    reader, writer = held[0]
    writer.write(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 20)).startswith(b"HTTP/1.1 200 ")
    for _, other in held:
        other.close()
    assert proxy.metrics.requests.labels("", "deny", "overloaded")._value.get() == 1


async def test_a_token_over_the_size_limit_is_invalid(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    config = make_config(
        issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES, extra="limits: {max_token_bytes: 300}"
    )
    proxy = await start_proxy(config)
    token = issuer.issuer.mint(resource=API, scopes=["manage:tenant"], extra_claims={"pad": "x" * 400})
    status, body = await send(proxy, "/admin/x", bearer(token))
    assert (status, body["error"]) == (401, "invalid_token")
    small = issuer.issuer.mint(resource=API, scopes=["manage:tenant"])
    assert len(small) <= 1000  # the default limit is 16384; this one fits 300 only if claims are tiny
    config_default = make_config(issuer.issuer.issuer, upstream.url, rules=CATCH_ALL_RULES)
    roomy = await start_proxy(config_default)
    status, _ = await send(roomy, "/admin/x", bearer(token))
    assert status == 200


# --- config digest ------------------------------------------------------------------------------------------------


def test_the_config_digest_names_the_bytes_that_were_parsed(tmp_path: Any) -> None:
    raw = make_config_text().encode()
    config: Config = config_from_bytes(raw, tmp_path / "c.yaml")
    assert config.digest == content_digest(raw)


def make_config_text() -> str:
    return "upstream: http://127.0.0.1:1\nauth: {issuer: https://issuer.example}\n" + CATCH_ALL_RULES


async def test_a_request_the_parser_refuses_is_one_warning_line_and_a_count(
    gated: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """No traceback, no echo of the bad bytes: a JSON 400, a decision line at warning level, and a count."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gated.server.bound["proxy"].port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"] == "invalid_request"
    assert gated.metrics.requests.labels("", "deny", "bad_request")._value.get() == 1
    out = capsys.readouterr().out
    decisions = [line for line in out.splitlines() if "decision" in line and "bad_request" in line]
    assert len(decisions) == 1
    assert "warning" in decisions[0]
    assert "Traceback" not in out
