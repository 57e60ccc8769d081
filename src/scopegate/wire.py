"""HTTP/1.1 message rules and wire formatting: pure functions, no I/O, shared by the proxy port's two sides.

The framing is ours, so are its attacks. On top of llhttp's strict mode (which refuses Content-Length beside
Transfer-Encoding, repeated or signed Content-Length, obs-fold, bare CR or LF, control characters in values, bad
tokens in names, chunk-size overflow, unknown methods) `read_framing` refuses what llhttp lets through:

- a Transfer-Encoding other than exactly `chunked`, or any on HTTP/1.0 (RFC 9112 section 6.1)     -> 400
- no Host on HTTP/1.1, or more than one Host (RFC 9112 section 3.2)                              -> 400
- an Expect other than 100-continue                                                               -> 417
- a version other than HTTP/1.0 and HTTP/1.1                                                      -> 505 (0.9: 400)
- a Content-Length over `limits.max_body_bytes` (a chunked body is cut when it passes it)         -> 413

The connection (`http1.py`) enforces the size and time limits. `tests/test_wire.py` pins these rules row by row;
`tests/test_framing.py` sends each trick through a running proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from scopegate.errors import BadRequest
from scopegate.limits import Limits
from scopegate.responses import SERVER_HEADER


@dataclass(frozen=True, slots=True)
class Framing:
    """How a request is framed, read from its header fields once they are complete."""

    content_length: int | None
    chunked: bool
    expect_continue: bool
    websocket: bool  # a WebSocket upgrade: after the head, the connection becomes a byte tunnel
    connection_tokens: frozenset[bytes]  # lower-cased Connection options: hop-by-hop for this message too

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def read_framing(fields: list[tuple[bytes, bytes, bytes]], version: str, upgrade: bool, limits: Limits) -> Framing:
    """The request's framing, or `BadRequest` for what llhttp's strict mode lets through but a proxy must not."""
    if version not in ("1.1", "1.0"):
        if version.startswith(("0.", "1.")):
            raise BadRequest("bad_http_version", "the request's HTTP version is not supported")
        raise BadRequest("unsupported_http_version", "use HTTP/1.1 on this port", status=505)
    hosts = transfer = expect = 0
    content_length: int | None = None
    chunked = expect_continue = False
    tokens: set[bytes] = set()
    upgrade_to = b""
    for lower, _, value in fields:
        if lower == b"host":
            hosts += 1
        elif lower == b"transfer-encoding":
            transfer += 1
            chunked = value.strip().lower() == b"chunked"
        elif lower == b"content-length":
            content_length = int(value)  # llhttp allows exactly one, digits only
        elif lower == b"expect":
            expect += 1
            expect_continue = value.strip().lower() == b"100-continue"
        elif lower == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
        elif lower == b"upgrade":
            upgrade_to = value.strip().lower()
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise BadRequest("host_header", "send exactly one Host header")
    if transfer and (not chunked or transfer > 1 or version == "1.0"):
        raise BadRequest("transfer_encoding", "the only Transfer-Encoding accepted is chunked, on HTTP/1.1")
    if expect and (not expect_continue or expect > 1):
        raise BadRequest("expectation", "the only expectation supported is 100-continue", status=417)
    limit = limits.max_body_bytes
    if limit is not None and content_length is not None and content_length > limit:
        raise BadRequest("body_too_large", f"the request body is larger than {limit} bytes", status=413)
    websocket = upgrade and upgrade_to == b"websocket" and b"upgrade" in tokens
    if upgrade and (chunked or content_length):
        raise BadRequest("upgrade_with_body", "an upgrade request must not carry a body")
    return Framing(content_length, chunked, expect_continue and version == "1.1", websocket, frozenset(tokens))


_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus}
SERVER_LINE = f"Server: {SERVER_HEADER}\r\n".encode()
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _DateLine:
    """The Date header line, formatted once per second rather than once per response."""

    second = 0
    line = b""


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """`HTTP/1.1 <status> <reason>`: the upstream's own reason phrase when given, else the standard one."""
    if reason is None:
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def date_line() -> bytes:
    now = int(time.time())
    if now != _DateLine.second:
        _DateLine.second, _DateLine.line = now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
    return _DateLine.line


def encode_response(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, keep_alive: bool, version: str, head_only: bool
) -> bytes:
    """A complete response scopegate answers itself (a rejection), framed by Content-Length."""
    parts = [status_line(status), SERVER_LINE, date_line()]
    parts.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    if status != 204:  # RFC 9110 section 8.6: a 204 carries no Content-Length
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(connection_line(keep_alive, version))
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def connection_line(keep_alive: bool, version: str) -> bytes:
    """What to say about the connection: HTTP/1.1 keeps it by default, HTTP/1.0 closes it by default."""
    if not keep_alive:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if version == "1.0" else b""
