"""Route rules: what each route matches and what its token must carry, parsed from the config's `routes:` list.

Path templates are compiled here, at load, by routing's template compiler: the template language is part of the
config schema, and a bad template must fail `scopegate check` with its line, never at the first request.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from yaml.nodes import MappingNode, SequenceNode

from scopegate.routing import PathTemplate, TemplateError, compile_template
from scopegate.yamlnodes import Field, optional

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


class TokenFrom(enum.StrEnum):
    HEADER = "header"  # Authorization: Bearer (RFC 6750 section 2.1)
    COOKIE = "cookie"
    QUERY = "query"  # RFC 6750 section 2.3; for browsers' WebSockets, which cannot set headers


@dataclass(frozen=True, slots=True)
class TokenSource:
    """One place a route reads the bearer token from."""

    kind: TokenFrom
    name: str = ""  # the cookie or query parameter; "" for the Authorization header


BEARER_HEADER = (TokenSource(TokenFrom.HEADER),)

# scopegate's own identity headers: a `forward_claims` header may not take one of these names.
OWN_IDENTITY_HEADERS = frozenset(
    {
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-organization-id",
        "x-auth-scopes",
        "x-auth-route",
        "x-auth-decision",
        "x-auth-claims",
    }
)


@dataclass(frozen=True, slots=True)
class ClaimHeader:
    """`forward_claims`: the verified claim at `path` goes upstream as `header`."""

    claim: str  # as written, for messages
    path: tuple[str, ...]
    header: str


class ScopeMode(enum.StrEnum):
    ALL = "all"
    ANY = "any"


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganizationSource:
    """Where a route finds the organization id in the request."""

    source: OrganizationFrom
    name: str  # path parameter, header name or query parameter


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeRequirement:
    mode: ScopeMode
    scopes: tuple[str, ...]  # empty: no scope needed


Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimCondition:
    """The claim at `path` must equal one of `values` (or, as a list claim, hold one of them) — or, with `param`,
    equal that path parameter of the matched route. Types compare strictly."""

    name: str  # as written in the config, for messages
    path: tuple[str, ...]  # keys into nested objects: `app.role` -> ("app", "role"); `[app.role]` -> ("app.role",)
    values: tuple[Scalar, ...] = ()
    param: str | None = None  # `"{user_id}"`: the request's own path parameter

    @property
    def value(self) -> Scalar | list[Scalar]:
        """What was written: one value, a list of values, or the `{param}` text."""
        if self.param is not None:
            return f"{{{self.param}}}"
        return self.values[0] if len(self.values) == 1 else list(self.values)


# `upstream_host` values besides a literal host name.
PRESERVE_HOST, UPSTREAM_HOST = "preserve", "upstream"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDefaults:
    """Top-level settings every route takes unless it says otherwise."""

    mode: Mode = Mode.ENFORCE
    upstream_host: str = PRESERVE_HOST
    strip_prefix: str = ""
    strip_prefix_line: int = 0  # where a top-level strip_prefix was given, for errors about routes it cannot strip
    token_from: tuple[TokenSource, ...] = BEARER_HEADER
    forward_claims: tuple[ClaimHeader, ...] = ()
    forward_payload: bool = False
    issuers: frozenset[str] = frozenset()  # the configured issuers, which a route's `issuers` must name


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
    # The client's Authorization header goes upstream only when scopegate verified it, unless the route says so.
    forward_unverified_token: bool = False
    # Host sent upstream: the client's (`preserve`), the upstream URL's authority (`upstream`), or this literal one.
    upstream_host: str = PRESERVE_HOST
    strip_prefix: str = ""  # removed from the normalized path before forwarding; the template starts with it
    token_from: tuple[TokenSource, ...] = BEARER_HEADER  # where the token may be; carried in two is a 400
    forward_claims: tuple[ClaimHeader, ...] = ()  # the top level's, then the route's own
    forward_payload: bool = False  # X-Auth-Claims: the verified payload, base64url JSON
    issuers: frozenset[str] = frozenset()  # empty: any configured issuer; else only these

    def upstream_path(self, path: str) -> str:
        """The path forwarded for a matched, normalized `path`."""
        prefix = self.strip_prefix
        if not prefix:
            return path
        rest = path[len(prefix) :]
        return rest if rest.startswith("/") else "/" + rest

    line: int  # where the rule starts in the config file


_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ROUTE_KEYS = (
    "name",
    "match",
    "public",
    "resource",
    "organization",
    "scopes",
    "claims",
    "mode",
    "forward_unverified_token",
    "upstream_host",
    "strip_prefix",
    "token_from",
    "forward_claims",
    "forward_payload",
    "issuers",
)
_MOVED_ROUTE_KEYS = {"path": "match", "methods": "match"}


# --- routes ---------------------------------------------------------------------------------------------------


def parse_routes(field: Field, defaults: RouteDefaults) -> tuple[RouteRule, ...] | None:
    items = field.sequence(empty="must list at least one route (requests matching no route are denied with 404)")
    if items is None:
        return None
    rules = [_route(item, defaults) for item in items]
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


def _route(field: Field, defaults: RouteDefaults) -> RouteRule | None:
    members = field.mapping(_ROUTE_KEYS, _MOVED_ROUTE_KEYS)
    if members is None:
        return None
    for required in ("name", "match"):
        if required not in members:
            field.missing(required)
    name = optional(members, "name", _route_name, None)
    matched = optional(members, "match", _match, None)
    public = optional(members, "public", lambda f: f.boolean(), False)
    template = matched[0] if matched else None
    organization = optional(members, "organization", lambda f: _organization(f, template), None)
    resource = optional(members, "resource", _resource, None)
    scopes = optional(members, "scopes", _scopes, ScopeRequirement(mode=ScopeMode.ALL, scopes=()))
    claims = optional(members, "claims", lambda f: _claims(f, template), ())
    mode = optional(members, "mode", lambda f: f.choice(tuple(Mode)), defaults.mode)
    unverified = optional(members, "forward_unverified_token", lambda f: f.boolean(), False)
    host = optional(members, "upstream_host", parse_upstream_host, defaults.upstream_host)
    prefix = optional(members, "strip_prefix", parse_strip_prefix, defaults.strip_prefix)
    token_from = optional(members, "token_from", parse_token_from, defaults.token_from)
    own_claims = optional(members, "forward_claims", parse_forward_claims, ())
    payload = optional(members, "forward_payload", lambda f: f.boolean(), defaults.forward_payload)
    forwarded = _merged_claim_headers(defaults.forward_claims, own_claims, members.get("forward_claims"))
    issuers = optional(members, "issuers", lambda f: _route_issuers(f, defaults.issuers), frozenset())
    if prefix and template is not None and not _template_starts_with(template.source, prefix):
        where = members.get("strip_prefix")
        message = f"the path template {template.source!r} does not start with strip_prefix {prefix!r}"
        if where is not None:
            where.error(message)
        else:
            field.error(f"{message} (the top-level strip_prefix, line {defaults.strip_prefix_line})")
        return None
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
    if unverified is None or host is None or prefix is None or token_from is None:
        return None
    if own_claims is None or payload is None or forwarded is None or issuers is None:
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
        forward_unverified_token=unverified,
        upstream_host=host,
        strip_prefix=prefix,
        token_from=token_from,
        forward_claims=forwarded,
        forward_payload=payload,
        issuers=issuers,
        line=field.line,
    )


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?")


def parse_upstream_host(field: Field) -> str | None:
    text = field.string()
    if text is None:
        return None
    if text in (PRESERVE_HOST, UPSTREAM_HOST) or _HOST.fullmatch(text):
        return text
    field.error(f"expected preserve, upstream or a host name (host or host:port); got {text!r}")
    return None


def parse_forward_claims(field: Field) -> tuple[ClaimHeader, ...] | None:
    headers = [_claim_header(claim, item) for claim, item in field.items()]
    if not isinstance(field.node, MappingNode) or None in headers:
        return None
    found = tuple(header for header in headers if header is not None)
    names = [header.header.lower() for header in found]
    for index, name in enumerate(names):
        if name in names[:index]:
            field.error(f"two claims are sent as the same header {found[index].header!r}")
            return None
    return found


def _claim_header(claim: str, item: Field) -> ClaimHeader | None:
    path = _claim_path(claim)
    header = item.string("a header name starting with X-Auth-")
    if path is None:
        item.error(f"claim name {claim!r} has an empty part; write nested claims as a.b, a dotted name as [a.b]")
        return None
    if header is None:
        return None
    lower = header.lower()
    if not _HEADER_NAME.fullmatch(header) or not lower.startswith("x-auth-"):
        item.error(f"expected a header name starting with X-Auth- (so no client can send it); got {header!r}")
        return None
    if lower in OWN_IDENTITY_HEADERS:
        item.error(f"{header} is one of scopegate's own identity headers; choose another name")
        return None
    return ClaimHeader(claim, path, header)


def _merged_claim_headers(
    inherited: tuple[ClaimHeader, ...], own: tuple[ClaimHeader, ...] | None, field: Field | None
) -> tuple[ClaimHeader, ...] | None:
    """The top level's claim headers plus the route's own; a route may not send another claim under one of them."""
    if own is None:
        return None
    taken = {header.header.lower(): header for header in inherited}
    for header in own:
        earlier = taken.get(header.header.lower())
        if earlier is not None and earlier.path != header.path and field is not None:
            field.error(f"{header.header} already carries claim {earlier.claim!r} (top-level forward_claims)")
            return None
    return inherited + tuple(header for header in own if header.header.lower() not in taken)


def _route_issuers(field: Field, configured: frozenset[str]) -> frozenset[str] | None:
    items = field.strings(empty="list at least one issuer (leave `issuers` out to accept every configured issuer)")
    if items is None:
        return None
    unknown = [(issuer, item) for issuer, item in items if configured and issuer not in configured]
    for issuer, item in unknown:
        item.error(f"{issuer!r} is not one of the issuers under `auth` ({', '.join(sorted(configured))})")
    return None if unknown else frozenset(issuer for issuer, _ in items)


_TOKEN_FROM_EXAMPLE = "header, {cookie: NAME} or {query: NAME}"


def parse_token_from(field: Field) -> tuple[TokenSource, ...] | None:
    items = field.sequence(empty=f"list at least one place the token may be: {_TOKEN_FROM_EXAMPLE}")
    if items is None:
        return None
    sources = [_token_source(item) for item in items]
    if None in sources:
        return None
    found = tuple(source for source in sources if source is not None)
    for index, source in enumerate(found):
        if source in found[:index]:
            items[index].error("listed twice")
            return None
    return found


def _token_source(item: Field) -> TokenSource | None:
    if isinstance(item.node, MappingNode):
        members = item.mapping(("cookie", "query"))
        if members is None:
            return None
        if len(members) != 1:
            item.error(f"expected one of {_TOKEN_FROM_EXAMPLE}")
            return None
        (kind, name_field), *_ = members.items()
        name = name_field.string()
        if name is None:
            return None
        if not _HEADER_NAME.fullmatch(name):  # cookie names and query keys: the same token characters
            name_field.error(f"not a valid {kind} name: {name!r}")
            return None
        return TokenSource(TokenFrom(kind), name)
    text = item.string(_TOKEN_FROM_EXAMPLE)
    if text is None:
        return None
    if text != TokenFrom.HEADER:
        item.error(f"expected {_TOKEN_FROM_EXAMPLE}; got {text!r}")
        return None
    return TokenSource(TokenFrom.HEADER)


def parse_strip_prefix(field: Field) -> str | None:
    text = field.string()
    if text is None:
        return None
    try:
        template = compile_template(text)
    except TemplateError as exc:
        field.error(f"strip_prefix must be literal path segments like /api: {exc}")
        return None
    if template.param_names or text.endswith("/**") or text == "/":
        field.error(f"strip_prefix must be literal path segments like /api (no parameters, no **); got {text!r}")
        return None
    return text


def _template_starts_with(source: str, prefix: str) -> bool:
    return source == prefix or source.startswith(prefix + "/")


def _check_public(field: Field, members: dict[str, Field]) -> None:
    for key in (
        "resource",
        "organization",
        "scopes",
        "claims",
        "token_from",
        "forward_claims",
        "forward_payload",
        "issuers",
    ):
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
    methods = optional(members, "methods", _methods, None)
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
    items = field.strings(empty="must list at least one method (leave `methods` out to allow any method)")
    if items is None:
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
    parts = split_url(text)
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
    source = optional(members, "from", lambda f: f.choice(tuple(OrganizationFrom)), None)
    name = optional(members, "name", lambda f: f.string(), None)
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


_PARAM_VALUE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _claims(field: Field, template: PathTemplate | None) -> tuple[ClaimCondition, ...] | None:
    conditions = [_claim(name, item, template) for name, item in field.items()]
    if not isinstance(field.node, MappingNode) or any(condition is None for condition in conditions):
        return None
    return tuple(condition for condition in conditions if condition is not None)


def _claim(name: str, item: Field, template: PathTemplate | None) -> ClaimCondition | None:
    path = _claim_path(name)
    if path is None:
        item.error(
            f"claim name {name!r} has an empty part; write nested claims as a.b, and a claim whose own name holds a "
            f"dot as [a.b]"
        )
        return None
    if isinstance(item.node, SequenceNode):
        elements = item.sequence() or []
        values = [element.scalar() for element in elements]  # each checked, so each bad one is reported
        if not elements:
            item.error("list at least one value (any of them satisfies the condition)")
        if not elements or None in values:
            return None
        return ClaimCondition(name=name, path=path, values=tuple(value for value in values if value is not None))
    value = item.scalar()
    if value is None:
        return None
    found = _PARAM_VALUE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return ClaimCondition(name=name, path=path, values=(value,))
    param = found.group(1)
    if template is not None and param not in template.param_names:
        params = ", ".join(template.param_names) or "none"
        item.error(f"the path template has no parameter {{{param}}} (it has: {params})")
        return None
    return ClaimCondition(name=name, path=path, param=param)


def _claim_path(name: str) -> tuple[str, ...] | None:
    if name.startswith("[") and name.endswith("]") and len(name) > 2:
        return (name[1:-1],)
    parts = tuple(name.split("."))
    return None if "" in parts else parts


def split_url(text: str) -> SplitResult | None:
    """The URL's parts, or None when it has whitespace or controls, or urlsplit refuses it (`http://[::1`)."""
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        return None
    try:
        return urlsplit(text)
    except ValueError:
        return None
