"""Hostile request targets, sent as raw bytes so no client library tidies them first.

For each: the status the client gets and, when forwarded, the exact path the upstream received.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from conftest import API, IssuerServer, Proxy


@dataclass
class RawResponse:
    status: int
    body: bytes

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


async def raw_request(proxy: Proxy, target: str | bytes, headers: dict[str, str] | None = None) -> RawResponse:
    host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    line = target if isinstance(target, bytes) else target.encode("latin-1")
    head = b"GET " + line + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n".encode()
    writer.write(head + b"\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return RawResponse(int(status_line.split()[1]), _dechunk(body) if b"chunked" in rest.lower() else body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


FORWARDED = [
    pytest.param("/public//x", "/public/x", id="double-slash"),
    pytest.param("/public/a/./b/../c", "/public/a/c", id="dot-segments"),
    pytest.param("/public/%41bc", "/public/Abc", id="unreserved-decoded"),
    pytest.param("/public/a%3ab", "/public/a%3Ab", id="hex-uppercased"),
    pytest.param("/public/x/", "/public/x/", id="trailing-slash-kept"),
    pytest.param("/x/../public/y", "/public/y", id="dotdot-into-public"),
    pytest.param("http://evil.example/public/z", "/public/z", id="absolute-form"),
]


@pytest.mark.parametrize(("target", "upstream_path"), FORWARDED)
async def test_normalized_path_is_what_the_upstream_receives(proxy: Proxy, target: str, upstream_path: str) -> None:
    response = await raw_request(proxy, target)
    assert response.status == 200, response.body
    assert response.json()["path"] == upstream_path


ESCAPES_INTO_PROTECTED = [
    pytest.param("/public/../api/reports/1", id="dotdot"),
    pytest.param("/public/%2e%2e/api/reports/1", id="encoded-dotdot"),
    pytest.param("/public/%2E%2E/api/reports/1", id="encoded-dotdot-upper"),
    pytest.param("/public/.%2e/api/reports/1", id="mixed-dotdot"),
    pytest.param("/public/./../api/reports/1", id="dot-then-dotdot"),
]


@pytest.mark.parametrize("target", ESCAPES_INTO_PROTECTED)
async def test_dot_segments_cannot_escape_a_public_route(proxy: Proxy, target: str) -> None:
    """Resolved before matching: these are requests for the protected /api/reports/1, so they need a token."""
    response = await raw_request(proxy, target)
    assert response.status == 401


REFUSED = [
    pytest.param("/public/..%2Fapi/reports/1", 400, id="encoded-slash"),
    pytest.param("/public/a%2fb", 400, id="encoded-slash-lower"),
    pytest.param("/public/a%5Cb", 400, id="encoded-backslash"),
    pytest.param("/public/a\\b", 400, id="raw-backslash"),
    pytest.param("/public/a%00b", 400, id="encoded-nul"),
    pytest.param("/public/a%0d%0aX-Auth-Subject:%20admin", 400, id="encoded-crlf"),
    pytest.param("/..", 400, id="dotdot-above-root"),
    pytest.param("/public/../../etc/passwd", 400, id="dotdot-far-above-root"),
    pytest.param("/public/..;/api/reports/1", 400, id="tomcat-dotdot-semicolon"),
    pytest.param("/public/%zz", 400, id="bad-percent"),
    pytest.param("/public/" + "a" * 5000, 414, id="overlong"),
]


@pytest.mark.parametrize(("target", "status"), REFUSED)
async def test_ambiguous_paths_are_refused(proxy: Proxy, target: str, status: int) -> None:
    response = await raw_request(proxy, target)
    assert response.status == status
    assert response.json()["error"] == "invalid_request"
    assert proxy.metrics.requests.labels("", "deny", "bad_path")._value.get() == 1


async def test_raw_nul_byte_never_reaches_the_upstream(proxy: Proxy) -> None:
    response = await raw_request(proxy, b"/public/a\x00b")
    assert response.status == 400


async def test_paths_match_case_sensitively(proxy: Proxy) -> None:
    assert (await raw_request(proxy, "/PUBLIC/x")).status == 404


async def test_trailing_slash_on_a_protected_route_is_still_protected(proxy: Proxy, issuer: IssuerServer) -> None:
    assert (await raw_request(proxy, "/api/reports/1/")).status == 401
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    response = await raw_request(proxy, "/api/reports/1/", {"Authorization": f"Bearer {token}"})
    assert response.status == 200
    assert response.json()["path"] == "/api/reports/1/"


async def test_encoded_dotdot_in_org_id_cannot_switch_organization(proxy: Proxy, issuer: IssuerServer) -> None:
    """`/api/orgs/acme/projects/%2e%2e/%2e%2e/globex/projects` resolves to globex's projects: acme's token fails."""
    token = issuer.issuer.mint(resource=API, organization_id="acme", scopes=["read:project"])
    target = "/api/orgs/acme/projects/%2e%2e/%2e%2e/globex/projects"
    response = await raw_request(proxy, target, {"Authorization": f"Bearer {token}"})
    assert response.status == 403
