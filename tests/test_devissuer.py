"""The development issuer mints and serves what Logto does, checked with real keys and pyjwt."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec
from pytest_aiohttp import AiohttpClient

from scopegate.dev.issuer import DevIssuer

ISSUER = "http://127.0.0.1:8081/oidc"
API = "https://api.example.com"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def issuer() -> DevIssuer:
    return DevIssuer(ISSUER)


@pytest.fixture
async def client(issuer: DevIssuer, aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(issuer.app())  # a real server on 127.0.0.1, a free port


def decode(issuer: DevIssuer, token: str, audience: str) -> dict[str, Any]:
    """Verify as a resource server would: the JWKS key, ES384 only, audience and issuer checked."""
    key = jwt.PyJWK(issuer.jwks()["keys"][0])
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES384"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat"]},
    )
    return claims


# -- discovery and JWKS --------------------------------------------------------------------------------------


async def test_discovery_points_under_the_issuer(client: Client) -> None:
    response = await client.get("/oidc/.well-known/openid-configuration")
    assert response.status == 200
    document = await response.json()
    assert document["issuer"] == ISSUER
    assert document["jwks_uri"] == f"{ISSUER}/jwks"
    assert document["token_endpoint"] == f"{ISSUER}/token"
    assert document["id_token_signing_alg_values_supported"] == ["ES384"]
    assert "client_credentials" in document["grant_types_supported"]
    assert document["response_types_supported"]


async def test_routes_live_under_the_issuer_path_only(client: Client) -> None:
    response = await client.get("/.well-known/openid-configuration")
    assert response.status == 404


async def test_jwks_serves_one_public_p384_key_uncached(client: Client, issuer: DevIssuer) -> None:
    response = await client.get("/oidc/jwks")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-cache"
    (key,) = (await response.json())["keys"]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-384"
    assert key["alg"] == "ES384"
    assert key["use"] == "sig"
    assert key["kid"]
    assert {"x", "y"} <= key.keys()
    assert "d" not in key
    assert isinstance(jwt.PyJWK(key).key, ec.EllipticCurvePublicKey)
    assert key == issuer.jwks()["keys"][0]


def test_each_issuer_has_its_own_key() -> None:
    first, second = DevIssuer(ISSUER).jwks()["keys"][0], DevIssuer(ISSUER).jwks()["keys"][0]
    assert first["kid"] != second["kid"]
    assert first["x"] != second["x"]


def test_jwks_cannot_be_altered_through_the_returned_dict(issuer: DevIssuer) -> None:
    issuer.jwks()["keys"][0]["d"] = "leaked"
    assert "d" not in issuer.jwks()["keys"][0]


@pytest.mark.parametrize("bad", ["127.0.0.1:8081/oidc", "ftp://host/oidc", "http:///oidc"])
def test_issuer_must_be_an_http_url_with_a_host(bad: str) -> None:
    with pytest.raises(ValueError, match="http"):
        DevIssuer(bad)


# -- mint ----------------------------------------------------------------------------------------------------


def test_global_resource_token(issuer: DevIssuer) -> None:
    token = issuer.mint(resource=API, scopes=["read:orders", "write:orders"], ttl_seconds=600)
    claims = decode(issuer, token, API)
    assert claims["aud"] == API
    assert "organization_id" not in claims
    assert claims["scope"] == "read:orders write:orders"
    assert claims["sub"] == "demo-user"
    assert claims["client_id"] == "demo-app"
    assert claims["iss"] == ISSUER
    assert claims["exp"] == claims["iat"] + 600
    assert claims["jti"]


def test_organization_token(issuer: DevIssuer) -> None:
    token = issuer.mint(organization_id="org-1", scopes=["invite:member"])
    claims = decode(issuer, token, "urn:logto:organization:org-1")
    assert claims["aud"] == "urn:logto:organization:org-1"
    assert "organization_id" not in claims
    assert claims["scope"] == "invite:member"


def test_organization_level_resource_token(issuer: DevIssuer) -> None:
    token = issuer.mint(resource=API, organization_id="org-1", subject="u1", client_id="spa")
    claims = decode(issuer, token, API)
    assert claims["aud"] == API
    assert claims["organization_id"] == "org-1"
    assert (claims["sub"], claims["client_id"]) == ("u1", "spa")


def test_header_is_rfc9068_with_the_jwks_kid(issuer: DevIssuer) -> None:
    header = jwt.get_unverified_header(issuer.mint(resource=API))
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES384"
    assert header["kid"] == issuer.jwks()["keys"][0]["kid"]


def test_no_scopes_means_no_scope_claim(issuer: DevIssuer) -> None:
    assert "scope" not in decode(issuer, issuer.mint(resource=API), API)


def test_token_ids_are_unique(issuer: DevIssuer) -> None:
    first, second = (decode(issuer, issuer.mint(resource=API), API) for _ in range(2))
    assert first["jti"] != second["jti"]


def test_negative_ttl_mints_an_expired_token(issuer: DevIssuer) -> None:
    with pytest.raises(jwt.ExpiredSignatureError):
        decode(issuer, issuer.mint(resource=API, ttl_seconds=-60), API)


def test_another_issuers_key_does_not_verify(issuer: DevIssuer) -> None:
    token = DevIssuer(ISSUER).mint(resource=API)
    with pytest.raises(jwt.InvalidSignatureError):
        decode(issuer, token, API)


def test_extra_claims_are_merged_and_may_replace_the_audience(issuer: DevIssuer) -> None:
    token = issuer.mint(resource=API, extra_claims={"aud": [API, "other"], "email": "a@example.com"})
    claims = decode(issuer, token, "other")
    assert claims["aud"] == [API, "other"]
    assert claims["email"] == "a@example.com"


def test_neither_resource_nor_organization_is_refused(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="resource"):
        issuer.mint(scopes=["read"])


@pytest.mark.parametrize("claim", ["iss", "exp", "iat"])
def test_extra_claims_may_not_override_issuer_owned_claims(issuer: DevIssuer, claim: str) -> None:
    with pytest.raises(ValueError, match=claim):
        issuer.mint(resource=API, extra_claims={claim: "x"})


# -- token endpoint ------------------------------------------------------------------------------------------


async def request_token(client: Client, **fields: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/oidc/token", data={"grant_type": "client_credentials", **fields})
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await response.json()
    return response.status, body


@pytest.mark.parametrize(
    ("fields", "audience", "organization_id"),
    [
        pytest.param({"resource": API}, API, None, id="global-resource"),
        pytest.param({"organization_id": "org-9"}, "urn:logto:organization:org-9", None, id="organization"),
        pytest.param({"resource": API, "organization_id": "org-9"}, API, "org-9", id="organization-resource"),
    ],
)
async def test_token_endpoint_mints_each_shape(
    client: Client,
    issuer: DevIssuer,
    fields: dict[str, str],
    audience: str,
    organization_id: str | None,
) -> None:
    status, body = await request_token(client, scope="read write", **fields)
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    claims = decode(issuer, body["access_token"], audience)
    assert claims["aud"] == audience
    assert claims.get("organization_id") == organization_id
    assert claims["scope"] == "read write"
    assert claims["exp"] == claims["iat"] + 3600


async def test_token_endpoint_mints_m2m_tokens(client: Client, issuer: DevIssuer) -> None:
    _, default = await request_token(client, resource=API)
    _, named = await request_token(client, resource=API, client_id="billing-job")
    default_claims = decode(issuer, default["access_token"], API)
    named_claims = decode(issuer, named["access_token"], API)
    assert default_claims["sub"] == default_claims["client_id"] == "demo-m2m"
    assert named_claims["sub"] == named_claims["client_id"] == "billing-job"
    assert "scope" not in default_claims


async def test_token_endpoint_adds_dev_claims(client: Client, issuer: DevIssuer) -> None:
    status, body = await request_token(client, resource=API, claims=json.dumps({"roles": ["admin"]}))
    assert status == 200
    assert decode(issuer, body["access_token"], API)["roles"] == ["admin"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        pytest.param({"grant_type": "password", "resource": API}, "unsupported_grant_type", id="grant"),
        pytest.param({"grant_type": "", "resource": API}, "invalid_request", id="no-grant"),
        pytest.param({"scope": "read"}, "invalid_target", id="no-target"),
        pytest.param({"resource": API, "claims": "{not json"}, "invalid_request", id="claims-not-json"),
        pytest.param({"resource": API, "claims": "[1]"}, "invalid_request", id="claims-not-object"),
        pytest.param({"resource": API, "claims": '{"iss": "evil"}'}, "invalid_request", id="claims-reserved"),
    ],
)
async def test_token_endpoint_refusals(client: Client, fields: dict[str, str], error: str) -> None:
    status, body = await request_token(client, **fields)
    assert status == 400
    assert body["error"] == error
    assert body["error_description"]
