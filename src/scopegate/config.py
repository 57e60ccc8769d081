"""The config file, parsed once into frozen, typed objects.

The YAML is composed into nodes (not loaded into dicts) so that every value keeps its line; small parse functions walk
the nodes with a breadcrumb (`routes[2].match.methods[1]`) and collect every problem before reporting them together as
`FILE:LINE: breadcrumb: message`. The request path only ever sees the dataclasses below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

# JWS algorithms scopegate can verify: asymmetric only. `none` and HMAC are refused outright, because a verifier that
# holds only public keys must never treat a public key as a shared secret.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
FORBIDDEN_ALGORITHMS: frozenset[str] = frozenset({"none", "HS256", "HS384", "HS512"})

HTTP_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")

# Logto's organization tokens carry this audience prefix followed by the organization id.
ORGANIZATION_AUDIENCE_PREFIX = "urn:logto:organization:"


class Mode(enum.StrEnum):
    """Enforce denies; audit logs the deny as `audit_deny` and forwards anyway (rolling a rule out safely)."""

    ENFORCE = "enforce"
    AUDIT = "audit"


class OrganizationFrom(enum.StrEnum):
    PATH = "path"
    HEADER = "header"
    QUERY = "query"


class ScopeMode(enum.StrEnum):
    ALL = "all"
    ANY = "any"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationSource:
    """Where a route finds the organization id in the request."""

    source: OrganizationFrom
    name: str  # path parameter, header name or query parameter


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeRequirement:
    mode: ScopeMode
    scopes: tuple[str, ...]  # empty: no scope needed


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimCondition:
    """The token's claim `name` must equal `value`, or contain it when the claim is a list."""

    name: str
    value: str | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    name: str
    path: str  # the path template as written
    methods: frozenset[str] | None  # None: any method
    public: bool
    resource: str | None
    organization: OrganizationSource | None
    scopes: ScopeRequirement
    claims: tuple[ClaimCondition, ...]
    mode: Mode
    line: int  # where the rule starts in the config file


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    issuer: str
    jwks_uri: str | None  # None: discover from {issuer}/.well-known/openid-configuration
    algorithms: frozenset[str]
    leeway_seconds: float
    jwks_refresh_seconds: float
    jwks_refetch_cooldown_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path | None
    listen: HostPort
    admin_listen: HostPort
    upstream: str  # scheme://host:port[/base], no trailing slash
    upstream_timeout_seconds: float
    shutdown_grace_seconds: float
    log_level: str
    mode: Mode
    auth: AuthConfig
    routes: tuple[RouteRule, ...]
