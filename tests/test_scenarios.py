"""Logto's three scenarios through the real proxy: real issuer, real tokens, real upstream, real status codes."""

from __future__ import annotations

from typing import Any

import pytest

from scopegate.gate import build_router

from conftest import API, IssuerServer, Proxy


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(issuer: IssuerServer, **kwargs: Any) -> str:
    return issuer.issuer.mint(**kwargs)


# (id, method, path, token kwargs or None, extra headers, expected status, expected reason)
CASES = [
    ("global-allowed", "GET", "/api/reports/42", {"resource": API, "scopes": ["read:report"]}, {}, 200, "ok"),
    ("global-no-token", "GET", "/api/reports/42", None, {}, 401, "missing_token"),
    ("global-missing-scope", "GET", "/api/reports/42", {"resource": API, "scopes": ["write:report"]}, {}, 403,
     "insufficient_scope"),
    ("global-scope-substring", "GET", "/api/reports/42", {"resource": API, "scopes": ["read:reports"]}, {}, 403,
     "insufficient_scope"),
    ("global-wrong-aud", "GET", "/api/reports/42", {"resource": "https://other.example.com",
     "scopes": ["read:report"]}, {}, 401, "wrong_audience"),
    ("global-with-org-claim", "GET", "/api/reports/42", {"resource": API, "organization_id": "acme",
     "scopes": ["read:report"]}, {}, 403, "organization_token"),
    ("org-token-on-global-route", "GET", "/api/reports/42", {"organization_id": "acme", "scopes": ["read:report"]},
     {}, 401, "wrong_audience"),
    ("org-allowed", "POST", "/orgs/acme/members", {"organization_id": "acme", "scopes": ["invite:member"]}, {}, 200,
     "ok"),
    ("org-other-org", "POST", "/orgs/globex/members", {"organization_id": "acme", "scopes": ["invite:member"]}, {},
     403, "wrong_organization"),
    ("org-route-global-token", "POST", "/orgs/acme/members", {"resource": API, "scopes": ["invite:member"]}, {}, 401,
     "wrong_audience"),
    ("org-missing-scope", "POST", "/orgs/acme/members", {"organization_id": "acme", "scopes": []}, {}, 403,
     "insufficient_scope"),
    ("org-api-allowed-any-1", "GET", "/api/orgs/acme/projects/7", {"resource": API, "organization_id": "acme",
     "scopes": ["read:project"]}, {}, 200, "ok"),
    ("org-api-allowed-any-2", "DELETE", "/api/orgs/acme/projects/7/tasks", {"resource": API,
     "organization_id": "acme", "scopes": ["admin:project"]}, {}, 200, "ok"),
    ("org-api-rest-zero-segments", "GET", "/api/orgs/acme/projects", {"resource": API, "organization_id": "acme",
     "scopes": ["read:project"]}, {}, 200, "ok"),
    ("org-api-other-org", "GET", "/api/orgs/globex/projects/7", {"resource": API, "organization_id": "acme",
     "scopes": ["read:project"]}, {}, 403, "wrong_organization"),
    ("org-api-no-org-claim", "GET", "/api/orgs/acme/projects/7", {"resource": API, "scopes": ["read:project"]}, {},
     403, "wrong_organization"),
    ("org-api-none-of-any", "GET", "/api/orgs/acme/projects/7", {"resource": API, "organization_id": "acme",
     "scopes": ["write:project"]}, {}, 403, "insufficient_scope"),
    ("org-header-allowed", "GET", "/api/settings", {"resource": API, "organization_id": "acme",
     "scopes": ["manage:settings"]}, {"X-Organization-Id": "acme"}, 200, "ok"),
    ("org-header-missing", "GET", "/api/settings", {"resource": API, "organization_id": "acme",
     "scopes": ["manage:settings"]}, {}, 400, "missing_organization"),
    ("org-query-allowed", "GET", "/api/search?org=acme&q=x", {"resource": API, "organization_id": "acme"}, {}, 200,
     "ok"),
    ("org-query-twice", "GET", "/api/search?org=acme&org=globex", {"resource": API, "organization_id": "acme"}, {},
     400, "missing_organization"),
    ("claims-allowed", "GET", "/admin/users", {"resource": API, "scopes": ["manage:tenant"],
     "extra_claims": {"roles": ["user", "admin"], "email_verified": True}}, {}, 200, "ok"),
    ("claims-unmet", "GET", "/admin/users", {"resource": API, "scopes": ["manage:tenant"],
     "extra_claims": {"roles": ["user"], "email_verified": True}}, {}, 403, "claim_mismatch"),
    ("claims-type-confusion", "GET", "/admin/users", {"resource": API, "scopes": ["manage:tenant"],
     "extra_claims": {"roles": "admin", "email_verified": "true"}}, {}, 403, "claim_mismatch"),
    ("expired", "GET", "/api/reports/42", {"resource": API, "scopes": ["read:report"], "ttl_seconds": -3600}, {},
     401, "invalid_token"),
    ("method-not-routed", "DELETE", "/api/reports/42", {"resource": API, "scopes": ["read:report"]}, {}, 404,
     "no_route"),
    ("no-route", "GET", "/nowhere", None, {}, 404, "no_route"),
    ("public", "GET", "/public/anything/at/all", None, {}, 200, "public"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "token", "headers", "status", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_decision_through_the_proxy(
    proxy: Proxy,
    issuer: IssuerServer,
    method: str,
    path: str,
    token: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
    reason: str,
) -> None:
    sent = dict(headers)
    if token is not None:
        sent.update(bearer(mint(issuer, **token)))
    async with proxy.session.request(method, proxy.url + path, headers=sent) as response:
        body = await response.json()
        assert response.status == status, body
    route = _route_of(proxy, method, path)
    decision = "allow" if reason in ("ok", "public") else "deny"
    assert proxy.metrics.requests.labels(route, decision, reason)._value.get() == 1
    if status == 200:
        assert body["path"] == path.split("?")[0], "the upstream saw the authorized path"
    else:
        assert set(body) == {"error", "error_description"}


def _route_of(proxy: Proxy, method: str, path: str) -> str:
    match = build_router(proxy.server.gateway.pipeline.rules.config).match(method, path.split("?")[0])
    return match.target.name if match else ""


async def test_identity_headers_reach_the_upstream(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(
        issuer, subject="user-1", client_id="app-1", resource=API, organization_id="acme", scopes=["read:project"]
    )
    async with proxy.session.get(proxy.url + "/api/orgs/acme/projects/1", headers=bearer(token)) as response:
        seen = (await response.json())["headers"]
    assert seen["X-Auth-Subject"] == "user-1"
    assert seen["X-Auth-Client-Id"] == "app-1"
    assert seen["X-Auth-Organization-Id"] == "acme"
    assert seen["X-Auth-Scopes"] == "read:project"
    assert seen["X-Auth-Route"] == "org-projects"


async def test_client_sent_identity_headers_are_stripped_on_every_route(proxy: Proxy, issuer: IssuerServer) -> None:
    forged = {"X-Auth-Subject": "admin", "x-auth-scopes": "everything", "X-Auth-Anything": "1"}
    async with proxy.session.get(proxy.url + "/public/x", headers=forged) as response:
        seen = (await response.json())["headers"]
    assert {k.lower() for k in seen if k.lower().startswith("x-auth-")} == {"x-auth-route"}
    token = mint(issuer, subject="m2m", client_id="m2m", resource=API, scopes=["read:report"])
    async with proxy.session.get(proxy.url + "/api/reports/1", headers={**forged, **bearer(token)}) as response:
        seen = (await response.json())["headers"]
    assert seen["X-Auth-Subject"] == "m2m"
    assert seen["X-Auth-Scopes"] == "read:report"
    assert "x-auth-anything" not in {name.lower() for name in seen}


async def test_401_invalid_token_challenge(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=bearer("a.b.c")) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
        body = await response.json()
    assert challenge.startswith('Bearer realm="scopegate", error="invalid_token", error_description="')
    assert body["error"] == "invalid_token"
    assert response.headers["Content-Type"].startswith("application/json")


async def test_401_missing_token_has_no_error_code_in_challenge(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/api/reports/1") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="scopegate"'


async def test_opaque_token_is_told_to_request_a_resource_token(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=bearer("Zm9vYmFyYmF6cXV4")) as response:
        assert response.status == 401
        body = await response.json()
    assert "resource" in body["error_description"]
    assert "RFC 8707" in response.headers["WWW-Authenticate"]


async def test_403_lists_required_scopes(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API, organization_id="acme", scopes=[])
    async with proxy.session.get(proxy.url + "/api/orgs/acme/projects/1", headers=bearer(token)) as response:
        assert response.status == 403
        challenge = response.headers["WWW-Authenticate"]
    assert challenge == 'Bearer realm="scopegate", error="insufficient_scope", scope="read:project admin:project"'


async def test_several_authorization_headers_are_a_bad_request(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API, scopes=["read:report"])
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", "Bearer other")]
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_scheme_is_case_insensitive(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API, scopes=["read:report"])
    async with proxy.session.get(proxy.url + "/api/reports/1", headers={"Authorization": f"bEaReR {token}"}) as resp:
        assert resp.status == 200


async def test_aud_list_containing_the_resource_is_accepted(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API, scopes=["read:report"], extra_claims={"aud": ["https://x.example", API]})
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=bearer(token)) as response:
        assert response.status == 200


async def test_aud_is_compared_exactly(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API + "/", scopes=["read:report"])
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=bearer(token)) as response:
        assert response.status == 401


async def test_audit_mode_forwards_a_denial_and_counts_it(proxy: Proxy, issuer: IssuerServer) -> None:
    token = mint(issuer, resource=API, scopes=[])
    async with proxy.session.get(proxy.url + "/beta/feature", headers=bearer(token)) as response:
        assert response.status == 200
    async with proxy.session.get(proxy.url + "/beta/feature") as response:
        assert response.status == 200
        seen = (await response.json())["headers"]
    assert "X-Auth-Subject" not in seen, "no verified identity, no identity header"
    assert proxy.metrics.requests.labels("audited", "audit_deny", "insufficient_scope")._value.get() == 1
    assert proxy.metrics.requests.labels("audited", "audit_deny", "missing_token")._value.get() == 1


async def test_request_id_is_forwarded_and_returned(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/public/x", headers={"X-Request-Id": "abc-123"}) as response:
        seen = {name.lower(): value for name, value in (await response.json())["headers"].items()}
    assert seen["x-request-id"] == "abc-123"
    async with proxy.session.get(proxy.url + "/nowhere", headers={"X-Request-Id": "bad id\twith tab"}) as response:
        generated = response.headers["X-Request-Id"]
    assert len(generated) == 32, "a new id replaces one that is not a sane token"


async def test_no_version_details_in_the_server_header(proxy: Proxy, issuer: IssuerServer) -> None:
    async with proxy.session.get(proxy.url + "/api/reports/1") as response:
        assert response.status == 401
        assert response.headers["Server"] == "scopegate"
    async with proxy.session.get(proxy.url + "/public/x") as response:
        # The echo upstream (aiohttp) names itself; scopegate passes the upstream's own header through unchanged.
        assert response.headers.getall("Server") == [response.headers["Server"]]
