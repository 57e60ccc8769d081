"""The config file, parsed once into frozen, typed objects.

Path templates are compiled here, at load, by routing's template compiler: the template language is part of the
config schema, and a bad template must fail `scopegate check` with its line, never at the first request.

The YAML is composed into nodes (not loaded into dicts) so that every value keeps its line; small parse functions walk
the nodes with a breadcrumb (`routes[2].match.methods[1]`) and collect every problem before reporting them together as
`FILE:LINE: breadcrumb: message`. The request path only ever sees the dataclasses below.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

from yaml.nodes import MappingNode, SequenceNode

from scopegate.errors import ConfigError
from scopegate.routing import PathTemplate, TemplateError, compile_template
from scopegate.yamlnodes import Field, Problems, compose

_T = TypeVar("_T")
_D = TypeVar("_D")

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
    template: PathTemplate
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


DEFAULT_LISTEN = "0.0.0.0:8080"  # a sidecar must accept traffic from the pod network
DEFAULT_ADMIN_LISTEN = "0.0.0.0:9090"
LOG_LEVELS = ("debug", "info", "warning", "error")
_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOP_KEYS = (
    "listen",
    "admin_listen",
    "upstream",
    "upstream_timeout_seconds",
    "shutdown_grace_seconds",
    "log_level",
    "mode",
    "auth",
    "routes",
)
_AUTH_KEYS = (
    "issuer",
    "jwks_uri",
    "algorithms",
    "leeway_seconds",
    "jwks_refresh_seconds",
    "jwks_refetch_cooldown_seconds",
)
_ROUTE_KEYS = ("name", "match", "public", "resource", "organization", "scopes", "claims", "mode")
_MOVED_ROUTE_KEYS = {"path": "match", "methods": "match"}


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem as FILE:LINE: message."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}:1: cannot read the config file: {exc}"]) from exc
    return parse_config(text, source)


def parse_config(text: str, source: Path | None = None) -> Config:
    problems = Problems(str(source) if source else "<config>")
    root = compose(text, problems)
    config = _parse_root(root, source) if root is not None else None
    if problems.lines or config is None:
        raise ConfigError(problems.lines or [f"{problems.file}:1: invalid config"])
    return config


def _parse_root(root: Field, source: Path | None) -> Config | None:
    members = root.mapping(_TOP_KEYS)
    if members is None:
        return None
    for required in ("upstream", "auth", "routes"):
        if required not in members:
            root.missing(required)
    mode = _optional(members, "mode", lambda f: f.choice(tuple(Mode)), Mode.ENFORCE)
    listen = _optional(members, "listen", _host_port, _host_port_default(DEFAULT_LISTEN))
    admin = _optional(members, "admin_listen", _host_port, _host_port_default(DEFAULT_ADMIN_LISTEN))
    upstream = _optional(members, "upstream", _upstream_url, None)
    auth = _optional(members, "auth", _auth, None)
    routes = _optional(members, "routes", lambda f: _routes(f, Mode(mode or Mode.ENFORCE)), None)
    if listen is not None and admin is not None and _same_socket(listen, admin):
        _port_clash(members, listen, admin)
    values = {
        "timeout": _optional(members, "upstream_timeout_seconds", _positive, 30.0),
        "grace": _optional(members, "shutdown_grace_seconds", _non_negative, 20.0),
        "log_level": _optional(members, "log_level", lambda f: f.choice(LOG_LEVELS), "info"),
    }
    if listen is None or admin is None or upstream is None or auth is None or routes is None or mode is None:
        return None
    if None in values.values():
        return None
    return Config(
        source=source,
        listen=listen,
        admin_listen=admin,
        upstream=upstream,
        upstream_timeout_seconds=float(values["timeout"] or 0),
        shutdown_grace_seconds=float(values["grace"] or 0),
        log_level=str(values["log_level"]),
        mode=Mode(mode),
        auth=auth,
        routes=routes,
    )


def _optional(members: dict[str, Field], key: str, parse: Callable[[Field], _T | None], default: _D) -> _T | _D | None:
    """Parse `key` when present (None on a problem), else the default."""
    return parse(members[key]) if key in members else default


# --- top level ------------------------------------------------------------------------------------------------


def _host_port_default(text: str) -> HostPort:
    host, _, port = text.rpartition(":")
    return HostPort(host=host, port=int(port))


_HOST_PORT_EXAMPLE = "HOST:PORT as a string (e.g. 0.0.0.0:8080 or [::]:8080)"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 -- compared against, never bound


def _host_port(field: Field) -> HostPort | None:
    text = field.string(_HOST_PORT_EXAMPLE)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        field.error(f"expected {_HOST_PORT_EXAMPLE}; got {text!r}")
        return None
    return HostPort(host=host, port=int(port))


def _port_clash(members: dict[str, Field], listen: HostPort, admin: HostPort) -> None:
    # The defaults differ, so at least one of the two was given; blame the one given last in the file.
    given = [members[key] for key in ("listen", "admin_listen") if key in members]
    blamed = max(given, key=lambda field: field.line)
    other, other_key = (admin, "admin_listen") if blamed is members.get("listen") else (listen, "listen")
    default = "" if other_key in members else ", the default"
    blamed.error(
        f"shares port {other.port} with {other_key} ({other}{default}); the admin endpoints need their own port"
    )


def _same_socket(a: HostPort, b: HostPort) -> bool:
    """Would binding both collide? Port 0 asks the OS for a free port each time, so it never does."""
    if a.port != b.port or a.port == 0:
        return False
    return a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS


def _url(field: Field, *, what: str) -> str | None:
    text = field.string()
    if text is None:
        return None
    parts = _split_url(text)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        field.error(f"expected an http(s) {what} URL without spaces, query or fragment; got {text!r}")
        return None
    try:
        _ = parts.port
    except ValueError:
        field.error(f"invalid port in {text!r} (ports are 0-65535)")
        return None
    return text


def _split_url(text: str) -> SplitResult | None:
    """The URL's parts, or None when it has whitespace or controls, or urlsplit refuses it (`http://[::1`)."""
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        return None
    try:
        return urlsplit(text)
    except ValueError:
        return None


def _upstream_url(field: Field) -> str | None:
    url = _url(field, what="upstream")
    return url.rstrip("/") if url else None


def _positive(field: Field) -> float | None:
    return field.number(minimum=0, strictly_above=True)


def _non_negative(field: Field) -> float | None:
    return field.number(minimum=0)


# --- auth -----------------------------------------------------------------------------------------------------


def _auth(field: Field) -> AuthConfig | None:
    members = field.mapping(_AUTH_KEYS)
    if members is None:
        return None
    if "issuer" not in members:
        field.missing("issuer", " (the token's `iss` must equal it exactly)")
    issuer = _optional(members, "issuer", lambda f: _url(f, what="issuer"), None)
    jwks_uri = _optional(members, "jwks_uri", lambda f: _url(f, what="JWKS"), "")
    algorithms = _optional(members, "algorithms", _algorithms, ASYMMETRIC_ALGORITHMS)
    leeway = _optional(members, "leeway_seconds", _non_negative, 60.0)
    refresh = _optional(members, "jwks_refresh_seconds", lambda f: f.number(minimum=1), 300.0)
    cooldown = _optional(members, "jwks_refetch_cooldown_seconds", _non_negative, 5.0)
    if issuer is None or jwks_uri is None or algorithms is None or None in (leeway, refresh, cooldown):
        return None
    return AuthConfig(
        issuer=issuer,
        jwks_uri=jwks_uri or None,
        algorithms=algorithms,
        leeway_seconds=float(leeway or 0),
        jwks_refresh_seconds=float(refresh or 0),
        jwks_refetch_cooldown_seconds=float(cooldown or 0),
    )


def _algorithms(field: Field) -> frozenset[str] | None:
    items = field.strings()
    if items is None:
        return None
    if not items:
        field.error("must list at least one algorithm")
        return None
    allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
    ok = True
    for name, item in items:
        if name in FORBIDDEN_ALGORITHMS or name.lower() == "none":
            item.error(f"{name!r} is never allowed: scopegate verifies signatures with public keys only")
            ok = False
        elif name not in ASYMMETRIC_ALGORITHMS:
            item.error(f"expected one of {allowed}; got {name!r}")
            ok = False
    return frozenset(name for name, _ in items) if ok else None


# --- routes ---------------------------------------------------------------------------------------------------


def _routes(field: Field, default_mode: Mode) -> tuple[RouteRule, ...] | None:
    items = field.sequence()
    if items is None:
        return None
    if not items:
        field.error("must list at least one route (requests matching no route are denied with 404)")
        return None
    rules = [_route(item, default_mode) for item in items]
    _check_unique_names(items, rules)
    if any(rule is None for rule in rules):
        return None
    return tuple(rule for rule in rules if rule is not None)


def _check_unique_names(items: list[Field], rules: list[RouteRule | None]) -> None:
    first_line: dict[str, int] = {}
    for item, rule in zip(items, rules, strict=True):
        if rule is None:
            continue
        if rule.name in first_line:
            item.error(f"duplicate route name {rule.name!r} (first used on line {first_line[rule.name]})")
        first_line.setdefault(rule.name, rule.line)


def _route(field: Field, default_mode: Mode) -> RouteRule | None:
    members = field.mapping(_ROUTE_KEYS, _MOVED_ROUTE_KEYS)
    if members is None:
        return None
    for required in ("name", "match"):
        if required not in members:
            field.missing(required)
    name = _optional(members, "name", _route_name, None)
    matched = _optional(members, "match", _match, None)
    public = _optional(members, "public", lambda f: f.boolean(), False)
    template = matched[0] if matched else None
    organization = _optional(members, "organization", lambda f: _organization(f, template), None)
    resource = _optional(members, "resource", _resource, None)
    scopes = _optional(members, "scopes", _scopes, ScopeRequirement(mode=ScopeMode.ALL, scopes=()))
    claims = _optional(members, "claims", _claims, ())
    mode = _optional(members, "mode", lambda f: f.choice(tuple(Mode)), default_mode)
    if public is True:
        _check_public(field, members)
    elif public is False and "resource" not in members and "organization" not in members:
        field.error(
            "a protected route needs `resource` (API resource), `organization`, or both; "
            "set `public: true` for a route that needs no token"
        )
        return None
    if name is None or matched is None or public is None or scopes is None or claims is None or mode is None:
        return None
    if ("organization" in members and organization is None) or ("resource" in members and resource is None):
        return None
    return RouteRule(
        name=name,
        template=matched[0],
        methods=matched[1],
        public=public,
        resource=resource,
        organization=organization,
        scopes=scopes,
        claims=claims,
        mode=Mode(mode),
        line=field.line,
    )


def _check_public(field: Field, members: dict[str, Field]) -> None:
    for key in ("resource", "organization", "scopes", "claims"):
        if key in members:
            members[key].error(f"a public route needs no token, so it takes no `{key}`; remove one or the other")


def _route_name(field: Field) -> str | None:
    name = field.string()
    if name is not None and not _ROUTE_NAME.fullmatch(name):
        field.error(
            "a route name is 1-100 characters of A-Z a-z 0-9 _ . : -, starting with a letter or digit"
            f" (it becomes a metric label); got {name!r}"
        )
        return None
    return name


def _match(field: Field) -> tuple[PathTemplate, frozenset[str] | None] | None:
    members = field.mapping(("path", "methods"))
    if members is None:
        return None
    if "path" not in members:
        field.missing("path")
        return None
    template = _template(members["path"])
    methods = _optional(members, "methods", _methods, None)
    if template is None or ("methods" in members and methods is None):
        return None
    return template, methods


def _template(field: Field) -> PathTemplate | None:
    text = field.string()
    if text is None:
        return None
    try:
        return compile_template(text)
    except TemplateError as exc:
        field.error(str(exc))
        return None


def _methods(field: Field) -> frozenset[str] | None:
    items = field.strings()
    if items is None:
        return None
    if not items:
        field.error("must list at least one method (leave `methods` out to allow any method)")
        return None
    unknown = [(method, item) for method, item in items if method not in HTTP_METHODS]
    for method, item in unknown:
        hint = f" (methods are upper-case: {method.upper()})" if method.upper() in HTTP_METHODS else ""
        item.error(f"expected one of {', '.join(HTTP_METHODS)}; got {method!r}{hint}")
    return None if unknown else frozenset(method for method, _ in items)


def _resource(field: Field) -> str | None:
    text = field.string()
    if text is None:
        return None
    parts = _split_url(text)
    if parts is None or not parts.scheme or parts.fragment:
        field.error(f"expected an absolute URI without fragment (RFC 8707 resource indicator); got {text!r}")
        return None
    if text.startswith(ORGANIZATION_AUDIENCE_PREFIX):
        # As a resource, an organization audience would admit organization tokens with none of organization's checks.
        field.error(f"{text!r} is an organization audience; use `organization:` to accept organization tokens")
        return None
    return text


def _organization(field: Field, template: PathTemplate | None) -> OrganizationSource | None:
    members = field.mapping(("from", "name"))
    if members is None:
        return None
    for required in ("from", "name"):
        if required not in members:
            field.missing(required)
    source = _optional(members, "from", lambda f: f.choice(tuple(OrganizationFrom)), None)
    name = _optional(members, "name", lambda f: f.string(), None)
    if source is None or name is None:
        return None
    if source == OrganizationFrom.PATH and template is not None and name not in template.param_names:
        params = ", ".join(template.param_names) or "none"
        members["name"].error(f"the path template has no parameter {{{name}}} (it has: {params})")
        return None
    if source == OrganizationFrom.HEADER and not _HEADER_NAME.fullmatch(name):
        members["name"].error(f"not a valid HTTP header name: {name!r}")
        return None
    return OrganizationSource(source=OrganizationFrom(source), name=name)


def _scopes(field: Field) -> ScopeRequirement | None:
    if isinstance(field.node, MappingNode):
        members = field.mapping(("all", "any"))
        if members is None:
            return None
        if len(members) != 1:
            field.error("expected exactly one of `all: [...]` or `any: [...]`")
            return None
        (key, inner), *_ = members.items()
        scopes = _scope_list(inner, allow_empty=key == "all")
        return None if scopes is None else ScopeRequirement(mode=ScopeMode(key), scopes=scopes)
    if not isinstance(field.node, SequenceNode):
        field.error(f"expected a list of scopes, `{{all: [...]}}` or `{{any: [...]}}`; got {field.kind}")
        return None
    scopes = _scope_list(field, allow_empty=True)
    return None if scopes is None else ScopeRequirement(mode=ScopeMode.ALL, scopes=scopes)


def _scope_list(field: Field, *, allow_empty: bool) -> tuple[str, ...] | None:
    items = field.strings()
    if items is None:
        return None
    if not items and not allow_empty:
        field.error("`any` needs at least one scope (no token could ever satisfy an empty `any`)")
        return None
    bad = [item for value, item in items if any(ch.isspace() or ch in '"\\' for ch in value)]
    for item in bad:
        item.error("a scope cannot contain spaces, quotes or backslashes (the token's `scope` is space-separated)")
    if bad:
        return None
    return tuple(dict.fromkeys(value for value, _ in items))


_CLAIM_LIST_HINT = " (a condition is one value; a list claim in the token passes when it contains it)"


def _claims(field: Field) -> tuple[ClaimCondition, ...] | None:
    conditions = []
    ok = True
    for name, item in field.items():
        value = item.scalar(_CLAIM_LIST_HINT if isinstance(item.node, SequenceNode) else "")
        if value is None:
            ok = False
            continue
        conditions.append(ClaimCondition(name=name, value=value))
    if not isinstance(field.node, MappingNode):
        return None
    return tuple(conditions) if ok else None
