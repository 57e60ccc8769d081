"""What every peer has (issue #11), end to end through the real proxy: richer claim conditions, token sources,
claims to headers, several issuers and CORS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from conftest import API, IssuerServer, Proxy, ProxyFactory, Running, make_config


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
