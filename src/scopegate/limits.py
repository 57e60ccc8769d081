"""The proxy port's HTTP/1.1 limits (the config's `limits:` block): each bounds what one client can make it hold.

A request over a limit is refused before anything reaches the upstream, with the status the README's table names.
"""

from __future__ import annotations

from dataclasses import dataclass

from scopegate.yamlnodes import Field, optional


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """HTTP/1.1 limits on the proxy port: a request over them is refused before anything reaches the upstream."""

    max_request_line_bytes: int = 16384  # -> 414
    max_header_bytes: int = 32768  # all header fields together -> 431
    max_header_count: int = 100  # -> 431
    max_body_bytes: int | None = None  # None: unlimited -> 413
    request_header_timeout_seconds: float = 10.0  # the whole request head must arrive within this -> 408
    keepalive_timeout_seconds: float = 75.0  # an idle client connection is closed after this
    max_connections: int = 10000  # open client connections per process; more are answered 503 and closed
    max_token_bytes: int = 16384  # a longer bearer token is refused as invalid_token (401) before any decoding
    send_timeout_seconds: float = 60.0  # a client that reads nothing of its response for this long is cut off


_LIMIT_KEYS = (
    "max_request_line_bytes",
    "max_header_bytes",
    "max_header_count",
    "max_body_bytes",
    "request_header_timeout_seconds",
    "keepalive_timeout_seconds",
    "max_connections",
    "max_token_bytes",
    "send_timeout_seconds",
)


def parse_limits(field: Field) -> Limits | None:
    members = field.mapping(_LIMIT_KEYS)
    if members is None:
        return None
    default = Limits()

    def whole(key: str, minimum: int, fallback: int | None) -> int | None:
        return optional(members, key, lambda f: f.integer(minimum=minimum), fallback)

    line = whole("max_request_line_bytes", 64, default.max_request_line_bytes)
    header_bytes = whole("max_header_bytes", 256, default.max_header_bytes)
    header_count = whole("max_header_count", 4, default.max_header_count)
    body = whole("max_body_bytes", 0, None)
    header_timeout = optional(
        members, "request_header_timeout_seconds", _positive, default.request_header_timeout_seconds
    )
    keepalive = optional(members, "keepalive_timeout_seconds", _positive, default.keepalive_timeout_seconds)
    connections = whole("max_connections", 1, default.max_connections)
    token = whole("max_token_bytes", 256, default.max_token_bytes)
    send = optional(members, "send_timeout_seconds", _positive, default.send_timeout_seconds)
    if line is None or header_bytes is None or header_count is None or header_timeout is None or keepalive is None:
        return None
    if connections is None or token is None or send is None:
        return None
    if body is None and "max_body_bytes" in members:
        return None
    return Limits(
        max_request_line_bytes=line,
        max_header_bytes=header_bytes,
        max_header_count=header_count,
        max_body_bytes=body,
        request_header_timeout_seconds=header_timeout,
        keepalive_timeout_seconds=keepalive,
        max_connections=connections,
        max_token_bytes=token,
        send_timeout_seconds=send,
    )


def _positive(field: Field) -> float | None:
    return field.number(minimum=0, strictly_above=True)
