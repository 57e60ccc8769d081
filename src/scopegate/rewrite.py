"""What is forwarded: the request head sent upstream and the response head sent back, built in single passes.

What was authorized is exactly what is forwarded: the normalized path and the raw query on the request line, the
client's end-to-end fields as they came. Hop-by-hop fields (RFC 9110 section 7.6.1, and any the Connection field
names) and client-sent identity fields (`X-Auth-*`, `X_Auth_*`) are dropped, and so is an `Authorization` field
scopegate did not verify; scopegate's identity fields, `X-Forwarded-*` and `X-Request-Id` are added; the framing
fields are stated anew for the body as it is relayed.
"""

from __future__ import annotations

from scopegate.bearer import IDENTITY_HEADER_PREFIX
from scopegate.gate import Verdict
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.rules import PRESERVE_HOST, UPSTREAM_HOST
from scopegate.upstream import ResponseFraming, UpstreamPool
from scopegate.wire import SERVER_LINE, date_line

# RFC 9110 section 7.6.1, plus the non-standard Proxy-Connection some clients still send.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# `expect` is answered by scopegate itself (100 Continue once the request is authorized), `content-length` is
# re-stated from the framing, `x-request-id` and `x-forwarded-for` are scopegate's to set.
_REQUEST_DROPPED = HOP_BY_HOP | {b"expect", b"content-length", b"x-request-id", b"x-forwarded-for"}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}
# Looked at one by one; every other field passes unless it is an identity header or named in Connection.
_REQUEST_SPECIAL = _REQUEST_DROPPED | {b"host", b"x-forwarded-proto", b"x-forwarded-host", b"authorization"}
# `X-Auth-*` in any case, with `_` for `-` too: CGI-style servers read `X_Auth_Sub` as `X-Auth-Sub`.
_IDENTITY_PREFIXES = (
    IDENTITY_HEADER_PREFIX.encode(),
    IDENTITY_HEADER_PREFIX.replace("-", "_").encode(),
    b"x_auth-",
    b"x-auth_",
)
# Methods that get `Content-Length: 0` when they carry no body, as many servers want it for them.
_BODYLESS_LENGTH = frozenset({"POST", "PUT", "PATCH"})

_RESPONSE_SPECIAL = _RESPONSE_DROPPED | {b"server", b"date"}
_PLAIN_OPTIONS = frozenset({b"keep-alive", b"close", b""})  # Connection options that name no other field
_TUNNEL_DROPPED = frozenset({b"content-length", b"transfer-encoding", b"keep-alive", b"proxy-connection"})


def response_fields(fields: list[tuple[bytes, bytes, bytes]], verdict: Verdict | None = None) -> list[bytes]:
    """The upstream's end-to-end header fields, plus Server and Date when it sent none.

    With a `cors` block scopegate owns CORS: the upstream's `Access-Control-*` fields give way to the verdict's.
    """
    kept = []
    server = date = False
    connection: list[bytes] = []
    cors = verdict.cors if verdict is not None else None
    for lower, name, value in fields:
        if cors is not None and lower.startswith(b"access-control-"):
            continue
        if lower in _RESPONSE_SPECIAL:
            if lower == b"server":
                server = True
            elif lower == b"date":
                date = True
            else:
                if lower == b"connection" and value.strip().lower() not in _PLAIN_OPTIONS:
                    connection.append(value)  # the common `Connection: keep-alive` names no field
                continue
        kept.append(b"%s: %s\r\n" % (name, value))
    if connection:
        kept = _without_listed(kept, connection)
    if not server:
        kept.append(SERVER_LINE)
    if not date:
        kept.append(date_line())
    if cors:
        kept.append("".join(f"{name}: {value}\r\n" for name, value in cors).encode("latin-1"))
    return kept


def _without_listed(kept: list[bytes], connection: list[bytes]) -> list[bytes]:
    """Drop the fields the Connection header lists: hop-by-hop for this message too (RFC 9110 section 7.6.1)."""
    listed = {token.strip().lower() for value in connection for token in value.split(b",")} - _PLAIN_OPTIONS
    if not listed:
        return kept
    return [line for line in kept if line.split(b":", 1)[0].lower() not in listed]


def declared_length(framing: ResponseFraming) -> bytes:
    """A HEAD or 304 response may state the length the body would have: pass that on."""
    length = framing.content_length
    return b"" if length is None else b"Content-Length: %d\r\n" % length


def request_head(request: IncomingRequest, verdict: Verdict, pool: UpstreamPool, client: ClientConnection) -> bytes:
    """The request head sent upstream: the client's end-to-end fields, then X-Forwarded-*, X-Request-Id, identity."""
    framing = request.framing
    query = verdict.query
    route = verdict.route
    path = verdict.path if route is None else route.upstream_path(verdict.path)
    target = pool.base_path + path + ("?" + query if query else "")
    parts = [b"%s %s HTTP/1.1\r\n" % (request.method_bytes, target.encode("latin-1"))]
    append = parts.append
    earlier: list[bytes] = []
    host = proto = forwarded_host = b""
    listed = framing.connection_tokens
    trusted = pool.trust_forwarded
    chosen = PRESERVE_HOST if route is None else route.upstream_host
    for lower, name, value in request.facts.headers.fields:
        if lower in _REQUEST_SPECIAL:
            if lower in listed:
                continue
            if lower == b"host":
                host = value
                if chosen != PRESERVE_HOST:
                    continue  # replaced below; X-Forwarded-Host still says the client's
            elif lower == b"authorization":
                # A token nobody verified must not reach the app looking like one that was (`alg: none`...).
                if not verdict.forward_token:
                    continue
            elif lower == b"x-forwarded-proto" and trusted:
                proto = value
            elif lower == b"x-forwarded-host" and trusted:
                forwarded_host = value
            else:
                if lower == b"x-forwarded-for" and trusted:
                    earlier.append(value)
                continue
        elif lower.startswith(_IDENTITY_PREFIXES) or lower in listed:
            continue
        append(b"%s: %s\r\n" % (name, value))
    if chosen == UPSTREAM_HOST or (chosen == PRESERVE_HOST and not host):
        append(pool.host_line)
    elif chosen != PRESERVE_HOST:
        append(f"Host: {chosen}\r\n".encode("ascii"))
    if earlier:
        append(b"X-Forwarded-For: %s, %s\r\n" % (b", ".join(earlier), client.peer_bytes))
    else:
        append(client.forwarded_for)
    # Behind an Ingress that terminated TLS these already say https and the public host: keep them.
    if not proto:
        append(b"X-Forwarded-Proto: http\r\n")
    if not forwarded_host:
        append(b"X-Forwarded-Host: %s\r\n" % (host or client.local_bytes))
    lines = [f"X-Request-Id: {verdict.request_id}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in verdict.identity)
    append("".join(lines).encode("latin-1"))
    if framing.websocket:
        append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    elif framing.chunked:
        append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif framing.content_length is not None:
        append(b"Content-Length: %d\r\n\r\n" % framing.content_length)
    elif request.method in _BODYLESS_LENGTH:
        append(b"Content-Length: 0\r\n\r\n")
    else:
        append(b"\r\n")
    return b"".join(parts)


def tunnel_fields(fields: list[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    """The fields of a 101 answer: Upgrade and Connection stay (the client must see the switch), framing goes."""
    return [b"%s: %s\r\n" % (name, value) for lower, name, value in fields if lower not in _TUNNEL_DROPPED]
