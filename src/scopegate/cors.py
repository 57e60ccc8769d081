"""CORS, when the config's `cors:` block is set: scopegate owns it, so browsers on another origin can call the API.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) carries no token by design: the gate
answers it itself, before the token stage, and it never reaches the upstream. Every other response to an allowed
origin — forwarded or rejected — carries `Access-Control-Allow-Origin`, so a browser can even read a 401. The
upstream's own `Access-Control-*` headers are dropped: two CORS policies would contradict each other.

Everything a response needs is computed here, once per request, as header pairs; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

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
