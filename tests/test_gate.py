"""The one decision (`gate.Gate`), as tables: what a request says in, the verdict out; no network, no framing.

Every front door decides through `Gate.decide`, so these rows hold for the proxy port and `explain` alike. The
credentials here are claims given as they are (the stage that verifies tokens has its own tests).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Mapping
from typing import Any

import pytest

from scopegate.bearer import check_format
from scopegate.config import parse_config
from scopegate.errors import MissingToken, Reason
from scopegate.gate import ALLOW, AUDIT_DENY, DENY, Gate, Verdict, build_router, header_value, request_id
from scopegate.request import Headers, RequestFacts
from scopegate.tokens import Claims, claims_from_payload

API = "https://api.example.com"
CONFIG = parse_config(f"""
upstream: http://127.0.0.1:1
auth: {{issuer: http://127.0.0.1:2/oidc}}
routes:
  - name: reports
    match: {{ path: "/api/reports/{{id}}", methods: [GET] }}
    resource: {API}
    scopes: [read:report]
  - name: org-projects
    match: {{ path: "/api/orgs/{{org}}/projects/**" }}
    resource: {API}
    organization: {{ from: path, name: org }}
    scopes: [read:project]
  - name: beta
    match: {{ path: "/beta/{{org}}/**" }}
    resource: {API}
    organization: {{ from: path, name: org }}
    scopes: [beta]
    mode: audit
  - name: public
    match: {{ path: "/public/**" }}
    public: true
""")


class GivenClaims:
    """Credentials for the table: the real bearer extraction, then the row's claims instead of a verification."""

    def __init__(self, payload: Mapping[str, Any] | None) -> None:
        self._payload = payload

    def claims(self, token: str) -> Claims:
        check_format(token)
        if self._payload is None:
            raise MissingToken("no_authorization_header")
        return claims_from_payload(self._payload)


def decide(method: str, target: str, payload: Mapping[str, Any] | None, *headers: tuple[str, str]) -> Verdict:
    sent = Headers.of([("Authorization", "Bearer t"), *headers] if payload is not None else headers)
    verdict = Gate(build_router(CONFIG), GivenClaims(payload)).decide(RequestFacts(method, target, sent), "rid")
    assert isinstance(verdict, Verdict), "claims at hand: the decision is synchronous"
    return verdict


def token(*, scope: str = "", aud: str = API, org: str | None = None, sub: str = "u1") -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": sub, "client_id": "c1", "aud": aud, "scope": scope, "exp": 9e9}
    if org is not None:
        payload["organization_id"] = org
    return payload


@pytest.mark.parametrize(
    ("method", "target", "payload", "decision", "reason", "status"),
    [
        pytest.param("GET", "/api/reports/1", token(scope="read:report"), ALLOW, Reason.OK, 0, id="allowed"),
        pytest.param("GET", "/api/reports/1", None, DENY, Reason.MISSING_TOKEN, 401, id="no-token"),
        pytest.param("GET", "/api/reports/1", token(), DENY, Reason.INSUFFICIENT_SCOPE, 403, id="no-scope"),
        pytest.param("POST", "/api/reports/1", token(scope="read:report"), DENY, Reason.NO_ROUTE, 404,
                     id="method-not-routed"),
        pytest.param("GET", "/nowhere", None, DENY, Reason.NO_ROUTE, 404, id="no-route"),
        pytest.param("GET", "/public/../api/reports/1", None, DENY, Reason.MISSING_TOKEN, 401,
                     id="dot-segments-resolved-before-matching"),
        pytest.param("GET", "/public/a%2fb", None, DENY, Reason.BAD_PATH, 400, id="encoded-slash"),
        pytest.param("GET", "*", None, DENY, Reason.BAD_PATH, 400, id="asterisk-form"),
        pytest.param("GET", "/public/x", None, ALLOW, Reason.PUBLIC, 0, id="public"),
        pytest.param("GET", "http://evil.example/public/x", None, ALLOW, Reason.PUBLIC, 0, id="absolute-form"),
        pytest.param("GET", "/api/orgs/acme/projects/1", token(scope="read:project", org="acme"), ALLOW, Reason.OK,
                     0, id="org-api-allowed"),
        pytest.param("GET", "/api/orgs/acme/projects/1", token(scope="read:project", org="globex"), DENY,
                     Reason.WRONG_ORGANIZATION, 403, id="org-api-other-org"),
        pytest.param("GET", "/beta/acme/x", None, AUDIT_DENY, Reason.MISSING_TOKEN, 0, id="audit-no-token"),
        pytest.param("GET", "/beta/acme/x", token(org="globex"), AUDIT_DENY, Reason.WRONG_ORGANIZATION, 0,
                     id="audit-other-org"),
    ],
)  # fmt: skip
def test_verdicts(
    method: str, target: str, payload: dict[str, Any] | None, decision: str, reason: Reason, status: int
) -> None:
    verdict = decide(method, target, payload)
    assert (verdict.decision, verdict.reason, verdict.status) == (decision, reason, status)
    assert verdict.forward is (decision != DENY)


def test_a_refused_path_is_logged_as_sent_but_escaped_and_bounded() -> None:
    verdict = decide("GET", "/public/a%2fb\x00" + "x" * 2000, None)
    assert verdict.reason is Reason.BAD_PATH
    assert verdict.path.startswith("/public/a%2fb\\x00x")
    assert len(verdict.path) <= 520


def test_several_authorization_headers_are_never_audited() -> None:
    verdict = decide("GET", "/beta/acme/x", token(scope="beta", org="acme"), ("Authorization", "Bearer u"))
    assert (verdict.decision, verdict.reason, verdict.status) == (DENY, Reason.BAD_REQUEST, 400)


@pytest.mark.parametrize(
    ("payload", "reason", "organization_header"),
    [
        pytest.param(token(scope="beta", org="acme"), Reason.OK, "acme", id="allowed-org-vouched"),
        pytest.param(token(org="acme"), Reason.INSUFFICIENT_SCOPE, "acme", id="scope-missing-org-was-compared"),
        pytest.param(token(scope="beta", org="globex"), Reason.WRONG_ORGANIZATION, None, id="other-org-not-vouched"),
        pytest.param(token(scope="beta"), Reason.WRONG_ORGANIZATION, None, id="no-org-claim-not-vouched"),
        pytest.param(None, Reason.MISSING_TOKEN, None, id="no-token-no-identity"),
    ],
)
def test_audit_mode_forwards_only_the_organization_policy_compared(
    payload: dict[str, Any] | None, reason: Reason, organization_header: str | None
) -> None:
    verdict = decide("GET", "/beta/acme/x", payload)
    assert verdict.reason is reason
    assert verdict.forward
    identity = dict(verdict.identity)
    assert identity.get("X-Auth-Organization-Id") == organization_header
    assert identity["X-Auth-Route"] == "beta"
    assert ("X-Auth-Subject" in identity) is (payload is not None)


def test_identity_headers_of_an_allowed_request() -> None:
    verdict = decide("GET", "/api/orgs/acme/projects/1", token(scope="read:project", org="acme", sub="caf\u00e9"))
    assert dict(verdict.identity) == {
        "X-Auth-Route": "org-projects",
        "X-Auth-Scopes": "read:project",
        "X-Auth-Subject": "caf%C3%A9",
        "X-Auth-Client-Id": "c1",
        "X-Auth-Organization-Id": "acme",
    }
    assert (verdict.sub, verdict.client_id, verdict.organization_id) == ("caf\u00e9", "c1", "acme")


class LaterClaims:
    """Credentials that must verify first: the decision comes as a coroutine."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.calls = 0

    def claims(self, token: str) -> Awaitable[Claims]:
        self.calls += 1

        async def verified() -> Claims:
            await asyncio.sleep(0)
            return claims_from_payload(self.payload)

        return verified()


async def test_a_decision_that_waits_on_verification_comes_as_a_coroutine_and_agrees() -> None:
    credentials = LaterClaims(token(scope="read:report"))
    gate = Gate(build_router(CONFIG), credentials)
    facts = RequestFacts("GET", "/api/reports/1", Headers.of([("Authorization", "Bearer t")]))
    pending = gate.decide(facts, "rid")
    assert not isinstance(pending, Verdict)
    verdict = await pending
    assert (verdict.decision, verdict.reason) == (ALLOW, Reason.OK)
    assert (await gate.decide_now(facts)).reason is Reason.OK
    assert credentials.calls == 2


def test_a_public_route_never_asks_for_credentials() -> None:
    credentials = LaterClaims(token())
    verdict = Gate(build_router(CONFIG), credentials).decide(RequestFacts("GET", "/public/x", Headers()), "rid")
    assert isinstance(verdict, Verdict)
    assert credentials.calls == 0


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        pytest.param("abc-123_x.y:z", True, id="sane"),
        pytest.param("a" * 128, True, id="longest-kept"),
        pytest.param("a" * 129, False, id="too-long"),
        pytest.param("has space", False, id="space"),
        pytest.param("", False, id="empty"),
        pytest.param("x\x00y", False, id="nul"),
    ],
)
def test_request_id(incoming: str, kept: bool) -> None:
    made = request_id(Headers.of([("X-Request-Id", incoming)]))
    if kept:
        assert made == incoming
    else:
        assert re.fullmatch("[0-9a-f]{32}", made)
    assert request_id(Headers()) != request_id(Headers()), "new ids never repeat"


@pytest.mark.parametrize(
    ("claim", "header"),
    [
        pytest.param("alice", "alice", id="visible-ascii-as-is"),
        pytest.param("a b~!", "a b~!", id="space-and-symbols"),
        pytest.param("\u00e9", "%C3%A9", id="non-ascii-encoded"),
        pytest.param("a\r\nX-Evil: 1", "a%0D%0AX-Evil: 1", id="crlf-injection-encoded"),
        pytest.param("\x7f", "%7F", id="del"),
    ],
)
def test_header_value(claim: str, header: str) -> None:
    assert header_value(claim) == header
