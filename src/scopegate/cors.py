"""CORS, when the config's `cors:` block is set: scopegate owns it, so browsers on another origin can call the API.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) carries no token by design: the gate
answers it itself, before the token stage, and it never reaches the upstream. Every other response to an allowed
origin — forwarded or rejected — carries `Access-Control-Allow-Origin`, so a browser can even read a 401. The
upstream's own `Access-Control-*` headers are dropped: two CORS policies would contradict each other.

Everything a response needs is computed here, once per request, as header pairs; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scopegate.rules import split_url
from scopegate.yamlnodes import Field, optional

Pairs = tuple[tuple[str, str], ...]

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_HEADERS = ("Authorization", "Content-Type")
DEFAULT_MAX_AGE_SECONDS = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class Cors:
    origins: frozenset[str]  # exact `scheme://host[:port]` values
    any_origin: bool  # `*`: only without credentials
    methods: tuple[str, ...] = DEFAULT_METHODS
    headers: tuple[str, ...] = DEFAULT_HEADERS
    expose: tuple[str, ...] = ()
    credentials: bool = False
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: str | None) -> Pairs:
        """For any response but a preflight: empty when the request has no allowed origin."""
        if origin is None or not self.allows(origin):
            return ()
        pairs = [("Access-Control-Allow-Origin", "*" if self.any_origin else origin), ("Vary", "Origin")]
        if self.credentials:
            pairs.append(("Access-Control-Allow-Credentials", "true"))
        if self.expose:
            pairs.append(("Access-Control-Expose-Headers", ", ".join(self.expose)))
        return tuple(pairs)

    def preflight_headers(self, origin: str) -> Pairs:
        """For the 204 answer to a preflight from an allowed origin."""
        pairs = [
            ("Access-Control-Allow-Origin", "*" if self.any_origin else origin),
            ("Vary", "Origin"),
            ("Access-Control-Allow-Methods", ", ".join(self.methods)),
            ("Access-Control-Allow-Headers", ", ".join(self.headers)),
            ("Access-Control-Max-Age", str(self.max_age_seconds)),
        ]
        if self.credentials:
            pairs.append(("Access-Control-Allow-Credentials", "true"))
        return tuple(pairs)


def is_preflight(method: str, origin: str | None, requested_method: str | None) -> bool:
    return method == "OPTIONS" and origin is not None and requested_method is not None


# --- the config's `cors:` block ---------------------------------------------------------------------------

_CORS_KEYS = (
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "allow_credentials",
    "max_age_seconds",
)


def parse_cors(field: Field) -> Cors | None:
    members = field.mapping(_CORS_KEYS)
    if members is None:
        return None
    if "allow_origins" not in members:
        field.missing("allow_origins")
        return None
    origins = _origins(members["allow_origins"])
    methods = optional(members, "allow_methods", _method_names, DEFAULT_METHODS)
    headers = optional(members, "allow_headers", _header_names, DEFAULT_HEADERS)
    expose = optional(members, "expose_headers", _header_names, ())
    credentials = optional(members, "allow_credentials", lambda f: f.boolean(), False)
    max_age = optional(members, "max_age_seconds", lambda f: f.integer(minimum=0), DEFAULT_MAX_AGE_SECONDS)
    if origins is None or methods is None or headers is None or expose is None or credentials is None:
        return None
    if max_age is None:
        return None
    if "*" in origins and credentials:
        members["allow_origins"].error(
            "'*' cannot be used with allow_credentials: true (browsers refuse it); list the origins instead"
        )
        return None
    return Cors(
        origins=frozenset(origins - {"*"}),
        any_origin="*" in origins,
        methods=methods,
        headers=headers,
        expose=expose,
        credentials=credentials,
        max_age_seconds=max_age,
    )


def _origins(field: Field) -> frozenset[str] | None:
    items = field.strings(empty="list at least one origin (scheme://host[:port]) or '*'")
    if items is None:
        return None
    ok = True
    for origin, item in items:
        parts = split_url(origin) if origin != "*" else None
        if origin != "*" and (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
        ):
            item.error(
                f"expected an origin like https://app.example.com (scheme://host[:port], no path) or '*';"
                f" got {origin!r}"
            )
            ok = False
    return frozenset(origin for origin, _ in items) if ok else None


def _method_names(field: Field) -> tuple[str, ...] | None:
    items = field.strings()
    if items is None:
        return None
    bad = [item for method, item in items if not method.isupper() or not method.isalpha()]
    for item in bad:
        item.error("expected an upper-case HTTP method name")
    return None if bad else tuple(method for method, _ in items)


def _header_names(field: Field) -> tuple[str, ...] | None:
    items = field.strings()
    if items is None:
        return None
    bad = [item for name, item in items if not _TOKEN.fullmatch(name)]
    for item in bad:
        item.error("expected a header name")
    return None if bad else tuple(name for name, _ in items)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
