"""A development OIDC issuer minting Logto-shaped access tokens, so the demo and tests need no Logto tenant.

It mimics what scopegate relies on from Logto and nothing more: an issuer URL with a path (`.../oidc`),
discovery, a JWKS served with `Cache-Control: no-cache`, one ES384 (EC P-384) key with a `kid`, and RFC 9068
access tokens (`typ: at+jwt`) in Logto's three shapes:

| minted with                 | `aud`                                 | `organization_id` claim |
|-----------------------------|---------------------------------------|-------------------------|
| resource only               | the resource indicator                | absent                  |
| organization only           | urn:logto:organization:<org id>       | absent                  |
| resource + organization     | the resource indicator                | the org id              |

THIS IS NOT AN AUTHORIZATION SERVER. The token endpoint authenticates no client and checks no grant: anyone
who can reach it gets any token they ask for. It exists for 127.0.0.1 demos and tests only.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from scopegate.rules import ORGANIZATION_AUDIENCE_PREFIX

ALGORITHM = "ES384"
DEFAULT_M2M_CLIENT_ID = "demo-m2m"
TOKEN_TTL_SECONDS = 3600

# Claims the issuer owns: letting a caller override them would mint tokens this issuer never issued in spirit
# (another issuer, a hand-picked lifetime); expired tokens come from `ttl_seconds` instead.
_RESERVED_CLAIMS = frozenset({"iss", "exp", "iat"})


class DevIssuer:
    """A development OIDC issuer: one freshly generated ES384 key, discovery, JWKS and a token endpoint."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._prefix = _path_prefix(issuer)
        # A fresh key per process: a restarted demo invalidates old tokens, exactly like a Logto key rotation.
        self._key = ec.generate_private_key(ec.SECP384R1())
        self._kid = secrets.token_urlsafe(16)
        self._public_jwk: dict[str, Any] = {
            **ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True),
            "kid": self._kid,
            "alg": ALGORITHM,
            "use": "sig",
        }

    def jwks(self) -> dict[str, Any]:
        """The public JWKS; a fresh dict each call so callers cannot alter what the endpoint serves."""
        return {"keys": [dict(self._public_jwk)]}

    def mint(
        self,
        *,
        subject: str = "demo-user",
        client_id: str = "demo-app",
        resource: str | None = None,
        organization_id: str | None = None,
        scopes: Sequence[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
        ttl_seconds: int = TOKEN_TTL_SECONDS,
    ) -> str:
        """A signed access token shaped like Logto's; a negative `ttl_seconds` gives an expired token."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "sub": subject,
            "client_id": client_id,
            **_audience_claims(resource, organization_id),
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        claims.update(_checked_extra_claims(extra_claims))
        claims.update(iss=self.issuer, iat=now, exp=now + ttl_seconds)
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid, "typ": "at+jwt"})

    def app(self) -> web.Application:
        """Discovery, JWKS and token endpoint under the issuer URL's path, as Logto serves them at `/oidc`."""
        app = web.Application()
        app.router.add_get(f"{self._prefix}/.well-known/openid-configuration", self._discovery)
        app.router.add_get(f"{self._prefix}/jwks", self._jwks)
        app.router.add_post(f"{self._prefix}/token", self._token)
        return app

    def _discovery_document(self) -> dict[str, Any]:
        base = self.issuer.rstrip("/")
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{base}/jwks",
            "token_endpoint": f"{base}/token",
            "grant_types_supported": ["client_credentials"],
            # Required by OpenID Connect Discovery, though no authorization endpoint is served.
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "token_endpoint_auth_methods_supported": ["none"],
        }

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(self._discovery_document())

    async def _jwks(self, request: web.Request) -> web.Response:
        # Logto serves its JWKS with no-cache; verifiers must cope with that rather than lean on HTTP caching.
        return web.json_response(self.jwks(), headers={"Cache-Control": "no-cache"})

    async def _token(self, request: web.Request) -> web.Response:
        try:
            token_request = _TokenRequest.parse(await request.post())
            access_token = self._mint_for(token_request)
        except _TokenError as exc:
            return _oauth_error(exc.code, exc.description)
        return _no_store_json(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": TOKEN_TTL_SECONDS,
                "scope": " ".join(token_request.scopes),
            }
        )

    def _mint_for(self, token_request: _TokenRequest) -> str:
        try:
            return self.mint(
                subject=token_request.client_id,  # machine-to-machine: Logto sets sub to the client id
                client_id=token_request.client_id,
                resource=token_request.resource,
                organization_id=token_request.organization_id,
                scopes=token_request.scopes,
                extra_claims=token_request.claims,
            )
        except ValueError as exc:  # the dev-only claims field tried to override an issuer-owned claim
            raise _TokenError("invalid_request", str(exc)) from exc


class _TokenError(Exception):
    """A token request the endpoint refuses; `code` is the RFC 6749 section 5.2 error code."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass(frozen=True, slots=True, kw_only=True)
class _TokenRequest:
    """The form fields of a client_credentials request, as Logto's token endpoint reads them."""

    client_id: str
    resource: str | None
    organization_id: str | None
    scopes: list[str]
    claims: dict[str, Any]

    @classmethod
    def parse(cls, form: Mapping[str, object]) -> _TokenRequest:
        grant_type = _form_field(form, "grant_type")
        if grant_type is None:
            raise _TokenError("invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise _TokenError("unsupported_grant_type", "the dev issuer only grants client_credentials")
        resource = _form_field(form, "resource")
        organization_id = _form_field(form, "organization_id")
        if resource is None and organization_id is None:
            raise _TokenError("invalid_target", "give a resource, an organization_id or both")
        return cls(
            client_id=_form_field(form, "client_id") or DEFAULT_M2M_CLIENT_ID,
            resource=resource,
            organization_id=organization_id,
            scopes=(_form_field(form, "scope") or "").split(),
            claims=_parse_claims(_form_field(form, "claims")),
        )


def _path_prefix(issuer: str) -> str:
    """The route prefix: the issuer URL's path without a trailing slash ("" for an issuer at the root)."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the issuer must be an http(s) URL with a host, got {issuer!r}")
    return parts.path.rstrip("/")


def _audience_claims(resource: str | None, organization_id: str | None) -> dict[str, str]:
    if resource is not None and organization_id is not None:
        return {"aud": resource, "organization_id": organization_id}
    if resource is not None:
        return {"aud": resource}
    if organization_id is not None:
        return {"aud": f"{ORGANIZATION_AUDIENCE_PREFIX}{organization_id}"}
    raise ValueError("an access token needs a resource, an organization_id or both, as in Logto")


def _checked_extra_claims(extra_claims: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if extra_claims is None:
        return {}
    reserved = sorted(_RESERVED_CLAIMS.intersection(extra_claims))
    if reserved:
        raise ValueError(f"extra_claims may not override {', '.join(reserved)}")
    return extra_claims


def _form_field(form: Mapping[str, object], name: str) -> str | None:
    """A text field, None when absent or empty (as an OAuth server treats an empty parameter)."""
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _TokenError("invalid_request", f"{name} must be a text field, not a file")
    return value


def _parse_claims(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        claims = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _TokenError("invalid_request", f"claims is not valid JSON: {exc}") from exc
    if not isinstance(claims, dict):
        raise _TokenError("invalid_request", "claims must be a JSON object")
    return claims


def _oauth_error(code: str, description: str) -> web.Response:
    return _no_store_json({"error": code, "error_description": description}, status=400)


def _no_store_json(body: Mapping[str, Any], *, status: int = 200) -> web.Response:
    # RFC 6749 section 5.1: token responses must not be cached.
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})
