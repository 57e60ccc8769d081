"""HTTP/1.1 framing rules on top of llhttp's strict mode (`wire.read_framing`), as a table; and the wire helpers.

The end-to-end corpus of hostile requests, sent as raw bytes through a running proxy, is `test_framing.py`; this
module pins the pure function that decides how a parsed request head is framed, one row per rule.
"""

from __future__ import annotations

import pytest

from scopegate.errors import BadRequest, Reason
from scopegate.limits import Limits
from scopegate.wire import Framing, connection_line, encode_response, read_framing, status_line

LIMITS = Limits(max_body_bytes=1000)


def fields(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes, bytes]]:
    return [(name.lower().encode(), name.encode(), value.encode("utf-8")) for name, value in pairs]


HOST = ("Host", "api.example.com")
PLAIN = Framing(None, False, False, False, frozenset())


@pytest.mark.parametrize(
    ("sent", "version", "upgrade", "expected"),
    [
        pytest.param([HOST], "1.1", False, PLAIN, id="plain-get"),
        pytest.param([], "1.0", False, PLAIN, id="http10-without-host"),
        pytest.param([HOST, ("Content-Length", "10")], "1.1", False, Framing(10, False, False, False, frozenset()),
                     id="content-length"),
        pytest.param([HOST, ("Content-Length", "1000")], "1.1", False, Framing(1000, False, False, False, frozenset()),
                     id="content-length-at-the-limit"),
        pytest.param([HOST, ("Transfer-Encoding", "chunked")], "1.1", False,
                     Framing(None, True, False, False, frozenset()), id="chunked"),
        pytest.param([HOST, ("Transfer-Encoding", "Chunked ")], "1.1", False,
                     Framing(None, True, False, False, frozenset()), id="chunked-any-case-trailing-space"),
        pytest.param([HOST, ("Content-Length", "3"), ("Expect", "100-continue")], "1.1", False,
                     Framing(3, False, True, False, frozenset()), id="expect-100-continue"),
        pytest.param([("Content-Length", "3"), ("Expect", "100-Continue")], "1.0", False,
                     Framing(3, False, False, False, frozenset()), id="expect-on-http10-is-not-honoured"),
        pytest.param([HOST, ("Connection", "keep-alive, X-Private")], "1.1", False,
                     Framing(None, False, False, False, frozenset({b"keep-alive", b"x-private"})),
                     id="connection-options"),
        pytest.param([HOST, ("Connection", "Upgrade"), ("Upgrade", "websocket")], "1.1", True,
                     Framing(None, False, False, True, frozenset({b"upgrade"})), id="websocket"),
        pytest.param([HOST, ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c")], "1.1", True,
                     Framing(None, False, False, False, frozenset({b"upgrade", b"http2-settings"})),
                     id="h2c-upgrade-is-a-plain-request"),
        pytest.param([HOST, ("Upgrade", "websocket")], "1.1", False, PLAIN, id="upgrade-without-connection-option"),
    ],
)  # fmt: skip
def test_framing_of_acceptable_requests(
    sent: list[tuple[str, str]], version: str, upgrade: bool, expected: Framing
) -> None:
    assert read_framing(fields(*sent), version, upgrade, LIMITS) == expected


@pytest.mark.parametrize(
    ("sent", "version", "upgrade", "detail", "status"),
    [
        pytest.param([], "1.1", False, "host_header", 400, id="http11-without-host"),
        pytest.param([HOST, HOST], "1.1", False, "host_header", 400, id="two-hosts"),
        pytest.param([HOST, HOST], "1.0", False, "host_header", 400, id="two-hosts-http10"),
        pytest.param([HOST, ("Transfer-Encoding", "identity, chunked")], "1.1", False, "transfer_encoding", 400,
                     id="te-identity-then-chunked"),
        pytest.param([HOST, ("Transfer-Encoding", "gzip, chunked")], "1.1", False, "transfer_encoding", 400,
                     id="te-gzip-then-chunked"),
        pytest.param([HOST, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], "1.1", False,
                     "transfer_encoding", 400, id="te-twice"),
        pytest.param([("Transfer-Encoding", "chunked")], "1.0", False, "transfer_encoding", 400, id="te-on-http10"),
        pytest.param([HOST, ("Content-Length", "1001")], "1.1", False, "body_too_large", 413, id="body-over-limit"),
        pytest.param([HOST, ("Expect", "something-else")], "1.1", False, "expectation", 417, id="unknown-expect"),
        pytest.param([HOST, ("Expect", "100-continue"), ("Expect", "100-continue")], "1.1", False, "expectation",
                     417, id="expect-twice"),
        pytest.param([HOST], "2.0", False, "unsupported_http_version", 505, id="http2-on-http1-port"),
        pytest.param([], "0.9", False, "bad_http_version", 400, id="http09"),
        pytest.param([HOST, ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Content-Length", "5")], "1.1",
                     True, "upgrade_with_body", 400, id="upgrade-with-a-body"),
    ],
)  # fmt: skip
def test_framing_refusals(sent: list[tuple[str, str]], version: str, upgrade: bool, detail: str, status: int) -> None:
    with pytest.raises(BadRequest) as refused:
        read_framing(fields(*sent), version, upgrade, LIMITS)
    assert (refused.value.reason, refused.value.detail, refused.value.status) == (Reason.BAD_REQUEST, detail, status)


def test_unlimited_body_by_default() -> None:
    framing = read_framing(fields(HOST, ("Content-Length", str(10**12))), "1.1", False, Limits())
    assert framing.content_length == 10**12


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        pytest.param(200, None, b"HTTP/1.1 200 OK\r\n", id="standard-phrase"),
        pytest.param(418, b"I'm a teapot", b"HTTP/1.1 418 I'm a teapot\r\n", id="upstream-phrase"),
        pytest.param(299, None, b"HTTP/1.1 299 \r\n", id="unknown-status-empty-phrase"),
        pytest.param(200, b"", b"HTTP/1.1 200 \r\n", id="upstream-sent-no-phrase"),
    ],
)
def test_status_line(status: int, reason: bytes | None, line: bytes) -> None:
    assert status_line(status, reason) == line


@pytest.mark.parametrize(
    ("keep_alive", "version", "line"),
    [
        pytest.param(True, "1.1", b"", id="http11-keeps-by-default"),
        pytest.param(False, "1.1", b"Connection: close\r\n", id="http11-close"),
        pytest.param(True, "1.0", b"Connection: keep-alive\r\n", id="http10-keep-alive-said"),
        pytest.param(False, "1.0", b"Connection: close\r\n", id="http10-close"),
    ],
)
def test_connection_line(keep_alive: bool, version: str, line: bytes) -> None:
    assert connection_line(keep_alive, version) == line


def test_an_encoded_response_is_framed_by_its_length_and_head_has_no_body() -> None:
    full = encode_response(401, [("Content-Type", "application/json")], b"{}", keep_alive=False, version="1.1",
                           head_only=False)  # fmt: skip
    head, _, body = full.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\nServer: scopegate\r\nDate: ")
    assert b"\r\nContent-Length: 2\r\nConnection: close" in head
    assert body == b"{}"
    head_only = encode_response(401, [], b"{}", keep_alive=True, version="1.1", head_only=True)
    assert head_only.endswith(b"Content-Length: 2\r\n\r\n"), "HEAD: the length the body would have, no body"
