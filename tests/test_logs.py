"""The decision log of a real `scopegate run`: one JSON line per request with the contract's fields, and no token or
Authorization header in any output stream, whatever the request did."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from scopegate.dev.echo import echo_app
from scopegate.observability import redact
from test_operations import Site, bearer, new_site, status_of

from conftest import API, IssuerServer, Running, free_port, start_app

DECISION_FIELDS = {
    "event", "route", "decision", "reason", "detail", "status", "method", "path", "sub", "client_id",
    "organization_id", "duration_ms", "request_id", "timestamp", "level",
}  # fmt: skip


@pytest.fixture
async def own_upstream() -> AsyncIterator[Running]:
    """An echo upstream the test may stop itself."""
    running = await start_app(echo_app())
    yield running
    if running.runner.server is not None:  # still serving: the test did not get to stop it
        await running.stop()


@pytest.fixture
def site(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> Site:
    return new_site(tmp_path, issuer, upstream)


def tampered(token: str) -> str:
    """The same token with its signature's last characters changed: well-formed, wrongly signed."""
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


# --- decision log lines -----------------------------------------------------------------------------------------


async def test_each_request_writes_one_decision_line_with_every_contract_field(
    site: Site, issuer: IssuerServer
) -> None:
    site.write()
    mint = issuer.issuer.mint
    org_token = mint(subject="alice", client_id="app-1", resource=API, organization_id="acme", scopes=["read:project"])
    expired = mint(resource=API, scopes=["read:report"], ttl_seconds=-600)
    weak = mint(subject="bob", resource=API, scopes=["read:other"])
    async with site.run() as cli, aiohttp.ClientSession() as session:
        url = cli.proxy
        allowed = {**bearer(org_token), "X-Request-Id": "req-allow-1"}
        assert await status_of(session, url + "/api/orgs/acme/projects/p1", allowed) == 200
        async with session.get(url + "/api/reports/1", headers={**bearer(expired), "X-Request-Id": "req-exp"}) as r:
            assert (r.status, r.headers["X-Request-Id"]) == (401, "req-exp")
        assert await status_of(session, url + "/api/reports/1", bearer(weak)) == 403
        assert await status_of(session, url + "/nowhere/else?secret=1", {"X-Request-Id": "x" * 129}) == 404
        assert await cli.stop() == 0
    lines = [line for line in cli.stdout if line.strip()]
    objects = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    decisions = [obj for obj in objects if obj["event"] == "decision"]
    assert len(decisions) == 4
    for decision in decisions:
        assert set(decision) == DECISION_FIELDS, decision
        assert decision["level"] == "info"
        assert isinstance(decision["duration_ms"], float)
        assert decision["method"] == "GET"
    allow, expired_line, scope_line, no_route = decisions
    assert allow == allow | {
        "route": "org-projects", "decision": "allow", "reason": "ok", "detail": "", "status": 200,
        "path": "/api/orgs/acme/projects/p1", "sub": "alice", "client_id": "app-1", "organization_id": "acme",
        "request_id": "req-allow-1",
    }  # fmt: skip
    assert expired_line == expired_line | {
        "route": "reports-read", "decision": "deny", "reason": "invalid_token", "detail": "expired", "status": 401,
        "request_id": "req-exp", "sub": None,
    }  # fmt: skip
    assert scope_line == scope_line | {
        "route": "reports-read", "decision": "deny", "reason": "insufficient_scope", "status": 403, "sub": "bob",
    }  # fmt: skip
    assert scope_line["detail"].startswith("missing:")
    assert "read:report" in scope_line["detail"]
    assert no_route == no_route | {
        "route": "", "decision": "deny", "reason": "no_route", "status": 404, "path": "/nowhere/else",
    }  # fmt: skip
    assert len(no_route["request_id"]) == 32, "an over-long incoming id is replaced by a new one"
    assert len({d["request_id"] for d in decisions}) == 4


# --- no token in any output -------------------------------------------------------------------------------------


async def _attempt(session: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> int | str:
    """The status, or the kind of failure: every hostile request counts as thrown, whatever happens to it."""
    try:
        async with session.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def test_no_token_or_authorization_value_reaches_any_output_stream(tmp_path: Path, issuer: IssuerServer) -> None:
    echo = await start_app(echo_app())
    site = Site(tmp_path / "config.yaml", free_port(), free_port(), issuer.issuer.issuer, echo.url)
    site.write(extra="log_level: debug", timeout=1)
    mint = issuer.issuer.mint
    good = mint(subject="alice", resource=API, scopes=["read:report", "chat"])
    expired = mint(resource=API, scopes=["read:report"], ttl_seconds=-600)
    forged = tampered(mint(resource=API, scopes=["read:report"]))
    in_query, in_path, in_missing_path, in_header = (mint(resource=API) for _ in range(4))
    big = mint(resource=API, scopes=["read:report"], extra_claims={"pad": "p" * 12_000})
    huge = mint(resource=API, scopes=["read:report"], extra_claims={"pad": "q" * 40_000})
    huge_in_path = mint(resource=API, extra_claims={"pad": "r" * 20_000})
    opaque = "opaque-" + secrets.token_urlsafe(24)
    basic = base64.b64encode(f"user:{secrets.token_urlsafe(12)}".encode()).decode()
    ws_forged = tampered(mint(resource=API, scopes=["chat"]))
    jwts = [good, expired, forged, in_query, in_path, in_missing_path, in_header, big, huge, huge_in_path, ws_forged]
    authorization = [f"Bearer {t}" for t in (good, expired, forged, big, huge, ws_forged)]
    authorization += [f"Bearer {opaque}", f"Basic {basic}", f"bearer  {good}"]

    async with site.run() as cli, aiohttp.ClientSession() as session:
        u = cli.proxy
        outcomes = {
            "valid": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(good)),
            "expired": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(expired)),
            "bad signature": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(forged)),
            "lower-case scheme": await _attempt(
                session, "GET", u + "/api/reports/1", headers={"Authorization": f"bearer  {good}"}
            ),
            "query, public": await _attempt(session, "GET", f"{u}/public/x?access_token={in_query}"),
            "query, protected": await _attempt(session, "GET", f"{u}/api/reports/1?access_token={in_query}"),
            "path, public": await _attempt(session, "GET", f"{u}/public/{in_path}"),
            "path, no route": await _attempt(session, "GET", f"{u}/nowhere/{in_missing_path}"),
            "custom header": await _attempt(
                session, "GET", u + "/api/reports/1", headers={**bearer(good), "X-Token": in_header}
            ),
            "custom header, public": await _attempt(session, "GET", u + "/public/x", headers={"X-Token": in_header}),
            "two authorization headers": await _attempt(
                session,
                "GET",
                u + "/api/reports/1",
                headers=[("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {expired}")],
            ),
            "basic": await _attempt(session, "GET", u + "/api/reports/1", headers={"Authorization": f"Basic {basic}"}),
            "big token": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(big)),
            "header too large": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(huge)),
            "request line too large": await _attempt(session, "GET", f"{u}/nowhere/{huge_in_path}"),
            "opaque": await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(opaque)),
            "post body": await _attempt(
                session, "POST", u + "/api/reports/1", headers=bearer(forged), data=f"access_token={in_query}"
            ),
            "timeout": await _attempt(session, "GET", u + "/slow/3", headers=bearer(good)),
        }
        async with session.ws_connect(u + "/ws/chat", headers=bearer(good)) as ws:
            greeting = await ws.receive_json(timeout=5)
            await ws.send_str(f"echo {good}")
            echoed = await ws.receive_str(timeout=5)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(u + "/ws/chat", headers=bearer(ws_forged))
        await echo.stop()
        outcomes["upstream down"] = await _attempt(session, "GET", u + "/api/reports/1", headers=bearer(good))
        assert await cli.stop() == 0

    assert outcomes == {
        "valid": 200, "expired": 401, "bad signature": 401, "lower-case scheme": 200, "query, public": 200,
        "query, protected": 401, "path, public": 200, "path, no route": 404, "custom header": 200,
        "custom header, public": 200, "two authorization headers": 400, "basic": 401, "big token": 401,
        "header too large": outcomes["header too large"], "request line too large": outcomes["request line too large"],
        "opaque": 401, "post body": 401, "timeout": 504, "upstream down": 502,
    }  # fmt: skip
    assert outcomes["header too large"] in (400, 431, "ServerDisconnectedError", "ClientOSError")
    assert outcomes["request line too large"] in (400, 414, "ServerDisconnectedError", "ClientOSError")
    assert greeting["headers"]["X-Auth-Subject"] == "alice"
    assert echoed == f"echo {good}"
    assert refused.value.status == 401

    output = cli.output()
    assert len(cli.events("decision")) >= len(outcomes), "the requests were logged"
    assert "[redacted-jwt]" in output, "tokens in paths reached a log field, masked"
    for token in jwts:
        _, payload, signature = token.split(".")
        assert token not in output
        assert f"{payload}.{signature}" not in output
        assert signature not in output
    for value in authorization:
        assert value not in output
        assert value.partition(" ")[2].strip() not in output
    assert basic not in output
    assert opaque not in output


async def test_a_malformed_header_line_does_not_leak_its_token(site: Site, issuer: IssuerServer) -> None:
    site.write()
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    async with site.run() as cli:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(
            f"GET /api/reports/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert status_line.split()[1] == b"400", status_line
        assert await cli.stop() == 0
    assert token.split(".")[2] not in cli.output()


# --- the redactor -----------------------------------------------------------------------------------------------


def test_redact_masks_jwts_wherever_they_are(issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."  # alg none: an empty signature is still a token
    for text in (
        token,
        f"/public/{token}",
        f"/api?access_token={token}&x=1",
        f"error: could not verify {token!r}",
        f"Authorization: Bearer {token}",
        f"{token},{token}",
        unsigned,
    ):
        masked = redact(text)
        assert "[redacted" in masked, text
        assert token.split(".")[2] not in masked
        assert token.split(".")[1] not in masked
        assert "eyJzdWIiOiJ4In0" not in masked
    assert redact(f"/public/{token}") == "/public/[redacted-jwt]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Bearer xyz", "Bearer [redacted]", id="bearer"),
        pytest.param("header: bearer abc.def~+/==", "header: bearer [redacted]", id="lower-case-with-padding"),
        pytest.param("Bearer\txyz-123 and more", "Bearer\t[redacted] and more", id="tab"),
        pytest.param("Authorization: Bearer opaque_token_1", "Authorization: Bearer [redacted]", id="opaque"),
        pytest.param("route=reports-read status=200", "route=reports-read status=200", id="nothing-to-mask"),
        pytest.param("the bearer", "the bearer", id="bare-word"),
    ],
)
def test_redact_masks_bearer_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("scheme", ["BEARER", "BeArEr"])
def test_redact_masks_bearer_credentials_whatever_the_case(scheme: str) -> None:
    assert redact(f"{scheme} opaque-credential") == f"{scheme} [redacted]"
