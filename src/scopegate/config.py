"""The config file, parsed once into frozen, typed objects: the process settings, the issuer, and the route rules.

The YAML is composed into nodes (not loaded into dicts) so that every value keeps its line; small parse functions walk
the nodes with a breadcrumb (`routes[2].match.methods[1]`) and collect every problem before reporting them together as
`FILE:LINE: breadcrumb: message`. The request path only ever sees the dataclasses. Route rules, the larger part of
the schema, have their own module (`rules.py`); this one holds what the process itself runs with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from scopegate.cors import Cors, parse_cors
from scopegate.errors import ConfigError
from scopegate.limits import Limits, parse_limits
from scopegate.rules import (
    BEARER_HEADER,
    PRESERVE_HOST,
    Mode,
    RouteDefaults,
    RouteRule,
    parse_forward_claims,
    parse_routes,
    parse_strip_prefix,
    parse_token_from,
    parse_upstream_host,
    split_url,
)
from scopegate.yamlnodes import Field, Problems, compose, optional

# JWS algorithms scopegate can verify: asymmetric only. `none` and HMAC are refused outright, because a verifier that
# holds only public keys must never treat a public key as a shared secret.
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
FORBIDDEN_ALGORITHMS: frozenset[str] = frozenset({"none", "HS256", "HS384", "HS512"})


def require_asymmetric(algorithms: frozenset[str]) -> None:
    """Refuse an allow-list with anything but asymmetric algorithms: a public key must never serve as an HMAC secret.

    Config validation already refuses them; each verifying component checks again, for callers that skip the config.
    """
    if not algorithms <= ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"only asymmetric algorithms can be allowed; got {sorted(algorithms)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    """One trusted issuer: where its keys are and how its tokens are checked."""

    issuer: str
    jwks_uri: str | None  # None: discover from {issuer}/.well-known/openid-configuration
    algorithms: frozenset[str]
    leeway_seconds: float
    jwks_refresh_seconds: float
    jwks_refetch_cooldown_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    issuers: tuple[IssuerConfig, ...]  # one (`auth.issuer`) or several (`auth.issuers`)
    token_cache_entries: int  # verified tokens remembered (LRU); 0 turns the cache off

    # The single-issuer form's names, for the first (usually only) issuer.
    @property
    def issuer(self) -> str:
        return self.issuers[0].issuer

    @property
    def jwks_uri(self) -> str | None:
        return self.issuers[0].jwks_uri

    @property
    def algorithms(self) -> frozenset[str]:
        return self.issuers[0].algorithms

    @property
    def leeway_seconds(self) -> float:
        return self.issuers[0].leeway_seconds

    @property
    def jwks_refresh_seconds(self) -> float:
        return self.issuers[0].jwks_refresh_seconds

    @property
    def jwks_refetch_cooldown_seconds(self) -> float:
        return self.issuers[0].jwks_refetch_cooldown_seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: Path | None
    listen: HostPort
    admin_listen: HostPort
    upstream: str | None  # scheme://host:port[/base], no trailing slash; None: no proxy port (decisions only)
    upstream_timeout_seconds: float
    shutdown_grace_seconds: float
    log_level: str
    mode: Mode
    auth: AuthConfig
    routes: tuple[RouteRule, ...]
    limits: Limits = field(default_factory=Limits)
    # `;` and `%3B` in a path are refused unless the upstream really uses matrix parameters: Tomcat, Jetty and
    # Spring drop `;x` before routing, so `/admin;x/secret` would be served as `/admin/secret`.
    allow_path_parameters: bool = False
    # X-Forwarded-Proto/-Host/-For from the client are kept (appended to) when true: right behind an Ingress that
    # sets them, wrong where clients reach the port directly.
    trust_forwarded_headers: bool = True
    # The decision endpoint for an ingress (auth-url, auth_request, ForwardAuth, ext_authz); None: not served.
    decision_listen: HostPort | None = None
    decision_path_prefix: str = ""  # stripped from a decision request's own path (Envoy ext_authz path_prefix)
    cors: Cors | None = None  # None: scopegate leaves CORS to the upstream
    listen_given: bool = True  # `listen` was in the file (it is ignored, with a warning, when there is no upstream)
    digest: str = "none"  # of the very bytes this config was parsed from ("none" when not read from a file)


DEFAULT_LISTEN = "0.0.0.0:8080"  # a sidecar must accept traffic from the pod network
DEFAULT_ADMIN_LISTEN = "0.0.0.0:9090"
LOG_LEVELS = ("debug", "info", "warning", "error")
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
    "limits",
    "allow_path_parameters",
    "trust_forwarded_headers",
    "decision_listen",
    "decision_path_prefix",
    "upstream_host",
    "strip_prefix",
    "token_from",
    "forward_claims",
    "forward_payload",
    "cors",
)
ISSUER_KEYS = (
    "issuer",
    "jwks_uri",
    "algorithms",
    "leeway_seconds",
    "jwks_refresh_seconds",
    "jwks_refetch_cooldown_seconds",
)
_AUTH_KEYS = (*ISSUER_KEYS, "token_cache_entries", "issuers")
DEFAULT_TOKEN_CACHE_ENTRIES = 4096


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem as FILE:LINE: message."""
    source = Path(path)
    return config_from_bytes(read_config_bytes(source), source)


def read_config_bytes(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}:1: cannot read the config file: {exc}"]) from exc


def config_from_bytes(raw: bytes, source: Path) -> Config:
    """The config in `raw`, read from `source`; its `digest` names exactly these bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}:1: cannot read the config file: {exc}"]) from exc
    return parse_config(text, source, digest=content_digest(raw))


def content_digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def parse_config(text: str, source: Path | None = None, *, digest: str = "none") -> Config:
    problems = Problems(str(source) if source else "<config>")
    root = compose(text, problems)
    config = _parse_root(root, source, digest) if root is not None else None
    if problems.lines or config is None:
        raise ConfigError(problems.lines or [f"{problems.file}:1: invalid config"])
    return config


def config_from_field(root: Field, source: Path | None = None) -> Config | None:
    """The config in an already composed mapping (e.g. the `config:` block of a Helm values file), or None.

    Problems go to `root.problems`, with the lines of the file `root` was composed from and `root`'s breadcrumb.
    """
    return _parse_root(root, source, "none")


# Top-level keys starting with this are the user's own (shared blocks to anchor and merge, `<<: *api`), as in
# docker compose files: never read, never refused.
EXTENSION_PREFIX = "x-"


def _parse_root(root: Field, source: Path | None, digest: str) -> Config | None:
    members = root.mapping(_TOP_KEYS, free_prefix=EXTENSION_PREFIX)
    if members is None:
        return None
    for required in ("auth", "routes"):
        if required not in members:
            root.missing(required)
    if "upstream" not in members and "decision_listen" not in members:
        root.missing("upstream")  # optional only beside `decision_listen`; the message stays as it always was
    mode = optional(members, "mode", lambda f: f.choice(tuple(Mode)), Mode.ENFORCE)
    listen = optional(members, "listen", _host_port, _host_port_default(DEFAULT_LISTEN))
    admin = optional(members, "admin_listen", _host_port, _host_port_default(DEFAULT_ADMIN_LISTEN))
    upstream = optional(members, "upstream", _upstream_url, None)
    auth = optional(members, "auth", _auth, None)
    host = optional(members, "upstream_host", parse_upstream_host, PRESERVE_HOST)
    prefix_field = members.get("strip_prefix")
    strip = optional(members, "strip_prefix", parse_strip_prefix, "")
    token_from = optional(members, "token_from", parse_token_from, BEARER_HEADER)
    forward_claims = optional(members, "forward_claims", parse_forward_claims, ())
    forward_payload = optional(members, "forward_payload", lambda f: f.boolean(), False)
    cors = optional(members, "cors", parse_cors, None)
    defaults = RouteDefaults(
        issuers=frozenset(issuer.issuer for issuer in auth.issuers) if auth is not None else frozenset(),
        mode=Mode(mode or Mode.ENFORCE),
        upstream_host=host or PRESERVE_HOST,
        strip_prefix=strip or "",
        strip_prefix_line=prefix_field.line if prefix_field is not None else 0,
        token_from=token_from or BEARER_HEADER,
        forward_claims=forward_claims or (),
        forward_payload=bool(forward_payload),
    )
    routes = optional(members, "routes", lambda f: parse_routes(f, defaults), None)
    limits = optional(members, "limits", parse_limits, Limits())
    path_parameters = optional(members, "allow_path_parameters", lambda f: f.boolean(), False)
    trust_forwarded = optional(members, "trust_forwarded_headers", lambda f: f.boolean(), True)
    decision = optional(members, "decision_listen", _host_port, None)
    prefix = optional(members, "decision_path_prefix", _path_prefix, "")
    if listen is not None and admin is not None and _same_socket(listen, admin):
        _port_clash(members, listen, admin)
    if decision is not None:
        _decision_port_clash(members, decision, listen, admin, serving_proxy="upstream" in members)
    values = {
        "timeout": optional(members, "upstream_timeout_seconds", _positive, 30.0),
        "grace": optional(members, "shutdown_grace_seconds", _non_negative, 20.0),
        "log_level": optional(members, "log_level", lambda f: f.choice(LOG_LEVELS), "info"),
    }
    if listen is None or admin is None or auth is None or routes is None or mode is None or prefix is None:
        return None
    if host is None or strip is None or token_from is None or forward_claims is None or forward_payload is None:
        return None
    if "cors" in members and cors is None:
        return None
    if ("upstream" in members and upstream is None) or ("decision_listen" in members and decision is None):
        return None
    if limits is None or path_parameters is None or trust_forwarded is None:
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
        limits=limits,
        allow_path_parameters=path_parameters,
        trust_forwarded_headers=trust_forwarded,
        decision_listen=decision,
        decision_path_prefix=prefix,
        cors=cors,
        listen_given="listen" in members,
        digest=digest,
    )


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


def _decision_port_clash(
    members: dict[str, Field],
    decision: HostPort,
    listen: HostPort | None,
    admin: HostPort | None,
    *,
    serving_proxy: bool,
) -> None:
    others = [("admin_listen", admin)]
    if serving_proxy:
        others.insert(0, ("listen", listen))
    for key, other in others:
        if other is not None and _same_socket(decision, other):
            members["decision_listen"].error(
                f"shares port {other.port} with {key} ({other}); the decision endpoint needs its own port"
            )
            return


def _path_prefix(field: Field) -> str | None:
    text = field.string()
    if text is None:
        return None
    if text in ("", "/"):
        return ""
    if not text.startswith("/") or text.endswith("/") or "?" in text or "//" in text:
        field.error(f"expected a path prefix like /authz (starting with '/', no trailing '/', no query); got {text!r}")
        return None
    return text


def _same_socket(a: HostPort, b: HostPort) -> bool:
    """Would binding both collide? Port 0 asks the OS for a free port each time, so it never does."""
    if a.port != b.port or a.port == 0:
        return False
    return a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS


def _url(field: Field, *, what: str) -> str | None:
    text = field.string()
    if text is None:
        return None
    parts = split_url(text)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        field.error(f"expected an http(s) {what} URL without spaces, query or fragment; got {text!r}")
        return None
    try:
        _ = parts.port
    except ValueError:
        field.error(f"invalid port in {text!r} (ports are 0-65535)")
        return None
    return text


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
    cache_entries = optional(
        members, "token_cache_entries", lambda f: f.integer(minimum=0), DEFAULT_TOKEN_CACHE_ENTRIES
    )
    if "issuers" in members:
        single = [members[key] for key in ISSUER_KEYS if key in members]
        for given in single:
            given.error("give either `issuer` (one issuer) or `issuers` (a list of issuer blocks), not both")
        issuers = _issuer_list(members["issuers"])
        if single:
            return None
    else:
        if "issuer" not in members:
            field.missing("issuer", " (the token's `iss` must equal it exactly)")
        one = _issuer(members)
        issuers = (one,) if one is not None else None
    if issuers is None or cache_entries is None:
        return None
    return AuthConfig(issuers=issuers, token_cache_entries=int(cache_entries))


def _issuer_list(field: Field) -> tuple[IssuerConfig, ...] | None:
    items = field.sequence(empty="list at least one issuer block ({issuer: URL, ...})")
    if items is None:
        return None
    issuers = []
    for item in items:
        members = item.mapping(ISSUER_KEYS)
        if members is None:
            continue
        if "issuer" not in members:
            item.missing("issuer", " (the token's `iss` must equal it exactly)")
        issuers.append(_issuer(members))
    if len(issuers) != len(items) or None in issuers:
        return None
    found = tuple(issuer for issuer in issuers if issuer is not None)
    seen: set[str] = set()
    for item, issuer in zip(items, found, strict=True):
        if issuer.issuer in seen:
            item.error(f"issuer {issuer.issuer!r} is listed twice")
            return None
        seen.add(issuer.issuer)
    return found


def _issuer(members: dict[str, Field]) -> IssuerConfig | None:
    issuer = optional(members, "issuer", lambda f: _url(f, what="issuer"), None)
    jwks_uri = optional(members, "jwks_uri", lambda f: _url(f, what="JWKS"), "")
    algorithms = optional(members, "algorithms", _algorithms, ASYMMETRIC_ALGORITHMS)
    leeway = optional(members, "leeway_seconds", _non_negative, 60.0)
    refresh = optional(members, "jwks_refresh_seconds", lambda f: f.number(minimum=1), 300.0)
    cooldown = optional(members, "jwks_refetch_cooldown_seconds", _non_negative, 5.0)
    if issuer is None or jwks_uri is None or algorithms is None or None in (leeway, refresh, cooldown):
        return None
    return IssuerConfig(
        issuer=issuer,
        jwks_uri=jwks_uri or None,
        algorithms=algorithms,
        leeway_seconds=float(leeway or 0),
        jwks_refresh_seconds=float(refresh or 0),
        jwks_refetch_cooldown_seconds=float(cooldown or 0),
    )


def _algorithms(field: Field) -> frozenset[str] | None:
    items = field.strings(empty="must list at least one algorithm")
    if items is None:
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
