"""What the soak sends and what scopegate must answer: one case per kind of request, on the routes of soakrules.py.

The expectations are written from the README's contract (the decision table, audit mode, paths, HTTP/1.1 framing),
never taken from scopegate's own code: each case names the status, the `decision` and `reason` the decision log must
show, the route, and, when the request must reach the upstream, the path the upstream must see and which identity
headers it must get. Every rule set the soak loads makes the same decisions, so a reload changes no expectation.

Two cases change their answer mid-run, on a clock (`Case.clock`): tokens of the rotated-out key (`old-key-dropped`:
200 until scopegate has dropped the key from its JWKS, then 401) and a token that expires mid-run (`expiry`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .soakrules import SLOW_SECONDS
from .soaktokens import ORG

ALLOW, DENY, AUDIT_DENY = "allow", "deny", "audit_deny"

# Rejection bodies' "error" by reason (README: Decisions; Responses).
ERROR_CODES = {
    "missing_token": "invalid_request",
    "invalid_token": "invalid_token",
    "wrong_audience": "invalid_token",
    "wrong_organization": "insufficient_scope",
    "organization_token": "insufficient_scope",
    "insufficient_scope": "insufficient_scope",
    "claim_mismatch": "insufficient_scope",
    "missing_organization": "invalid_request",
    "no_route": "no_route",
    "bad_path": "invalid_request",
    "bad_request": "invalid_request",
    "upstream_error": "bad_gateway",
    "upstream_timeout": "gateway_timeout",
}


@dataclass(frozen=True)
class Expect:
    """One acceptable outcome: the client's status, the decision log's decision/reason/route, what the upstream got.

    `upstream_path` None: the request must never reach the upstream. `identity`: which X-Auth-* headers the upstream
    must get, `token` (from the verified token's claims, and the Authorization header) or `route` (X-Auth-Route
    only). `injected`: a 5xx the soak caused on purpose (an upstream fault, or a request refused with a 5xx).
    """

    status: int
    decision: str
    reason: str
    route: str
    upstream_path: str | None = None
    identity: str = "token"
    organization: str | None = None
    injected: bool = False

    @property
    def forwarded(self) -> bool:
        return self.upstream_path is not None

    @property
    def echoed(self) -> bool:
        """The answer is the upstream's own (the echo's account of the request), not scopegate's."""
        return self.forwarded and self.reason not in ("upstream_error", "upstream_timeout")

    @property
    def audited(self) -> bool:
        return self.decision == AUDIT_DENY


@dataclass(frozen=True)
class Case:
    """One kind of request, sent again and again; `raw` cases go as exact bytes on a connection of their own."""

    name: str
    expect: Expect
    method: str = "GET"
    target: str = "/"
    profile: str | None = None  # whose token: a profile of soaktokens.PROFILES
    malformed: str | None = None  # a name of soaktokens.MALFORMED
    key: str = "current"  # which key's tokens: "current" (follows the rotation) or "old"
    authorization: str = "bearer"  # "bearer", "twice" (two Authorization headers), "basic"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    spoof: bool = False  # also send X-Auth-* / X_Auth_* headers, which must never reach the upstream
    raw: bytes | None = None
    weight: int = 1
    exclusive: bool = False  # at most one in flight at a time (the slow upstream)
    later: Expect | None = None  # the outcome once `clock` has passed
    clock: str | None = None
    smuggled_id: str | None = None  # a request id hidden in `raw` that must reach neither the upstream nor the log
    kind: str = ""  # the table row: set by Plan, from the group the case is listed in


SPOOFED = (
    ("X-Auth-Subject", "spoofed-admin"),
    ("X-Auth-Route", "spoofed"),
    ("x-auth-organization-id", ORG),
    ("X_Auth_Scopes", "manage:tenant"),
)
ORG_BODY = b'{"email": "new.member@example.com", "role": "member"}'
UPLOAD_BODY = bytes(range(256)) * 8


def _allowed(route: str, path: str, *, organization: str | None = None) -> Expect:
    return Expect(200, ALLOW, "ok", route, path, organization=organization)


def _denied(status: int, reason: str, route: str) -> Expect:
    return Expect(status, DENY, reason, route)


def _audited(reason: str, path: str, identity: str) -> Expect:
    return Expect(200, AUDIT_DENY, reason, "beta-audit", path, identity=identity)


def _public(path: str) -> Expect:
    return Expect(200, ALLOW, "public", "public", path, identity="route")


REPORT = "/api/reports/42"
BAD_TOKEN_TARGET = "/api/reports/9"
PROJECTS = f"/api/orgs/{ORG}/projects/p-1/tasks"
MEMBERS = f"/orgs/{ORG}/members"


def _global_cases() -> list[Case]:
    route = "reports-read"
    return [
        Case("allow", _allowed(route, REPORT), target=REPORT, profile="global-read", spoof=True, weight=8),
        Case("allow-head", _allowed(route, REPORT), method="HEAD", target=REPORT, profile="global-read"),
        Case(
            "insufficient-scope",
            _denied(403, "insufficient_scope", route),
            target=REPORT,
            profile="global-weak",
        ),
        Case("no-token", _denied(401, "missing_token", route), target=REPORT, weight=2),
        Case(
            "organization-token",
            _denied(403, "organization_token", route),
            target=REPORT,
            profile="global-with-org",
        ),
        Case("org-audience", _denied(401, "wrong_audience", route), target=REPORT, profile="org-invite"),
    ]


def _organization_cases() -> list[Case]:
    route = "org-member-invite"

    def invite(name: str, expect: Expect, profile: str, weight: int = 1) -> Case:
        return Case(name, expect, method="POST", target=MEMBERS, profile=profile, body=ORG_BODY,
                    spoof=True, weight=weight)  # fmt: skip

    return [
        invite("allow", _allowed(route, MEMBERS, organization=ORG), "org-invite", weight=5),
        invite("other-org", _denied(403, "wrong_organization", route), "org-invite-other"),
        invite("global-token", _denied(401, "wrong_audience", route), "global-read"),
        invite("no-scope", _denied(403, "insufficient_scope", route), "org-no-scope"),
    ]


def _org_resource_cases() -> list[Case]:
    projects, settings = "org-projects", "org-settings"
    header = (("X-Organization-Id", ORG),)
    return [
        Case(
            "allow-path",
            _allowed(projects, PROJECTS, organization=ORG),
            target=PROJECTS,
            profile="orgres-read",
            spoof=True,
            weight=5,
        ),
        Case(
            "allow-header",
            _allowed(settings, "/api/settings", organization=ORG),
            method="PUT",
            target="/api/settings",
            profile="orgres-settings",
            headers=header,
            weight=3,
        ),
        Case(
            "other-org",
            _denied(403, "wrong_organization", projects),
            target=PROJECTS,
            profile="orgres-other",
        ),
        Case(
            "no-org-claim",
            _denied(403, "wrong_organization", projects),
            target=PROJECTS,
            profile="global-project",
        ),
        Case(
            "header-missing",
            _denied(400, "missing_organization", settings),
            target="/api/settings",
            profile="orgres-settings",
        ),
        Case(
            "header-twice",
            _denied(400, "missing_organization", settings),
            target="/api/settings",
            profile="orgres-settings",
            headers=(*header, ("X-Organization-Id", "org-globex")),
        ),
    ]


def _claims_cases() -> list[Case]:
    route, path = "admin-only", "/admin/users"
    return [
        Case("allow", _allowed(route, path), target=path, profile="admin", spoof=True, weight=4),
        Case("string-not-bool", _denied(403, "claim_mismatch", route), target=path, profile="admin-string-flag"),
        Case("wrong-role", _denied(403, "claim_mismatch", route), target=path, profile="admin-viewer"),
    ]


def _audit_cases() -> list[Case]:
    path = "/beta/feature"
    allowed = Expect(200, ALLOW, "ok", "beta-audit", path)
    return [
        Case("allow", allowed, target=path, profile="beta", weight=3),
        Case(
            "insufficient-scope",
            _audited("insufficient_scope", path, "token"),
            target=path,
            profile="global-read",
            spoof=True,
            weight=3,
        ),
        Case("no-token", _audited("missing_token", path, "route"), target=path, spoof=True, weight=2),
        Case("expired-token", _audited("invalid_token", path, "route"), target=path, profile="expired"),
        Case("bad-signature", _audited("invalid_token", path, "route"), target=path, malformed="bad-signature"),
        Case("hostile-path", _denied(400, "bad_path", ""), target="/beta/a%2Fb", profile="beta"),
    ]


def _public_cases() -> list[Case]:
    return [
        Case("anonymous", _public("/public/docs/a"), target="/public/docs/a", spoof=True, weight=4),
        Case("with-token", _public("/public/docs/b"), target="/public/docs/b", profile="global-read"),
        Case("upload", _public("/public/upload"), method="POST", target="/public/upload", body=UPLOAD_BODY),
    ]


def _no_route_cases() -> list[Case]:
    return [
        Case("unknown-path", _denied(404, "no_route", ""), target="/nowhere/1"),
        Case(
            "method-not-routed",
            _denied(404, "no_route", ""),
            method="DELETE",
            target=REPORT,
            profile="global-read",
        ),
    ]


def _bad_token_cases() -> list[Case]:
    route = "reports-read"
    invalid = _denied(401, "invalid_token", route)
    cases = [Case(name, invalid, target=BAD_TOKEN_TARGET, malformed=name) for name in _MALFORMED_ON_GLOBAL]
    return [
        *cases,
        Case("expired", invalid, target=BAD_TOKEN_TARGET, profile="expired"),
        Case("wrong-issuer", invalid, target=BAD_TOKEN_TARGET, profile="wrong-issuer"),
        Case("bad-typ", invalid, target=BAD_TOKEN_TARGET, profile="bad-typ"),
        Case(
            "two-authorization-headers",
            _denied(400, "bad_request", route),
            target=BAD_TOKEN_TARGET,
            profile="global-read",
            authorization="twice",
        ),
        Case(
            "basic-scheme",
            _denied(401, "missing_token", route),
            target=BAD_TOKEN_TARGET,
            profile="global-read",
            authorization="basic",
        ),
    ]


_MALFORMED_ON_GLOBAL = (
    "bad-signature",
    "alg-none",
    "hs256-public-key",
    "unknown-kid",
    "garbage-parts",
    "not-b64token",
    "opaque",
    "oversized",
)


def _hostile_path_cases() -> list[Case]:
    bad_path = _denied(400, "bad_path", "")
    refused = [
        ("encoded-slash", "/public/a%2Fb"),
        ("encoded-slash-dotdot", "/public/..%2F..%2Fadmin"),
        ("encoded-nul", "/public/a%00b"),
        ("encoded-backslash", "/public/a%5Cb"),
        ("tomcat-dotdot", "/public/..;/admin/x"),
        ("dotdot-above-root", "/../admin"),
        ("encoded-crlf", "/public/a%0d%0aX-Auth-Subject:%20admin"),
    ]
    return [
        *(Case(name, bad_path, target=target) for name, target in refused),
        Case(
            "dotdot-escapes-public",
            _denied(401, "missing_token", "admin-only"),
            target="/public/%2e%2e/admin/x",
        ),
        Case(
            "encoded-dotdot-no-token",
            _denied(401, "missing_token", "admin-only"),
            target="/a/%2e%2e/admin",
        ),
        Case(
            "encoded-dotdot-admin",
            _allowed("admin-only", "/admin"),
            target="/a/%2e%2e/admin",
            profile="admin",
        ),
        Case("dot-segments-public", _public("/public/x/z"), target="//public///x/./y/../z"),
        Case(
            "dotdot-switches-org",
            _denied(403, "wrong_organization", "org-projects"),
            target=f"/api/orgs/{ORG}/projects/%2e%2e/%2e%2e/org-globex/projects",
            profile="orgres-read",
        ),
        Case("case-differs", _denied(404, "no_route", ""), target="/PUBLIC/x"),
        Case("overlong", _denied(414, "bad_path", ""), target="/public/" + "a" * 5000),
        Case(
            "raw-nul",
            _denied(400, "bad_request", ""),
            raw=_message(b"GET /public/a\x00b HTTP/1.1", b"Host: soak"),
        ),
    ]


def _message(request_line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return b"".join(line + b"\r\n" for line in (request_line, *fields)) + b"\r\n" + body


def _post(*fields: bytes, body: bytes = b"") -> bytes:
    return _message(b"POST /public/x HTTP/1.1", b"Host: soak", *fields, body=body)


def smuggled(request_id: str) -> bytes:
    return f"GET /public/smuggled HTTP/1.1\r\nHost: soak\r\nX-Request-Id: {request_id}\r\n\r\n".encode()


SMUGGLED_ID = "soak-smuggled"


def _framing_cases() -> list[Case]:
    refused = _denied(400, "bad_request", "")
    sneak = smuggled(SMUGGLED_ID)
    rows: list[tuple[str, bytes, int]] = [
        ("cl-te-desync", _post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + sneak), 400),
        (
            "te-cl-desync",
            _post(
                b"Content-Length: 4",
                b"Transfer-Encoding: chunked",
                body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(sneak), sneak),
            ),
            400,
        ),
        ("cl-twice", _post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcde"), 400),
        ("te-gzip", _post(b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400),
        ("obs-fold", _message(b"GET /public/x HTTP/1.1", b"Host: soak", b"X-A: 1", b" 2"), 400),
        ("bare-lf", b"GET /public/x HTTP/1.1\nHost: soak\n\n", 400),
        ("host-missing", _message(b"GET /public/x HTTP/1.1"), 400),
        ("host-twice", _message(b"GET /public/x HTTP/1.1", b"Host: soak", b"Host: other"), 400),
        ("method-lower-case", _message(b"get /public/x HTTP/1.1", b"Host: soak"), 400),
        ("http-2.0", _message(b"GET /public/x HTTP/2.0", b"Host: soak"), 505),
        ("expect-other", _post(b"Expect: 200-ok", b"Content-Length: 5", body=b"hello"), 417),
        ("fields-too-big", _message(b"GET /public/x HTTP/1.1", b"Host: soak", b"X-Big: " + b"b" * 40000), 431),
        ("request-line-too-long", _message(b"GET /public/" + b"a" * 17000 + b" HTTP/1.1", b"Host: soak"), 414),
    ]
    return [
        Case(
            name,
            Expect(status, DENY, "bad_request", "", injected=status >= 500) if status != 400 else refused,
            raw=raw,
            smuggled_id=SMUGGLED_ID if b"smuggled" in raw else None,
        )
        for name, raw, status in rows
    ]


def _rotation_cases() -> list[Case]:
    route = "reports-read"
    return [
        Case(
            "old-key-token",
            _allowed(route, REPORT),
            target=REPORT,
            profile="global-read",
            key="old",
            weight=3,
            later=_denied(401, "invalid_token", route),
            clock="old-key-dropped",
        ),
    ]


def _expiry_cases() -> list[Case]:
    route = "reports-read"
    return [
        Case(
            "expiring-token",
            _allowed(route, REPORT),
            target=REPORT,
            profile="expiring",
            weight=3,
            later=_denied(401, "invalid_token", route),
            clock="expiry",
        ),
    ]


def _fault_cases() -> list[Case]:
    status = "/status/503/soak"
    return [
        Case(
            "status-503",
            Expect(503, ALLOW, "ok", "fault-status", status, injected=True),
            target=status,
            profile="global-read",
        ),
        Case(
            "status-500",
            Expect(500, ALLOW, "ok", "fault-status", "/status/500/soak", injected=True),
            target="/status/500/soak",
            profile="global-read",
        ),
        Case(
            "reset",
            Expect(502, ALLOW, "upstream_error", "fault-reset", "/reset/soak", injected=True),
            target="/reset/soak",
            profile="global-read",
        ),
        Case(
            "slow",
            Expect(504, ALLOW, "upstream_timeout", "fault-slow", f"/slow/{SLOW_SECONDS}", injected=True),
            target=f"/slow/{SLOW_SECONDS}",
            profile="global-read",
            exclusive=True,
        ),
    ]


KINDS = (
    "global",
    "organization",
    "org_resource",
    "claims",
    "audit",
    "public",
    "no_route",
    "bad_token",
    "hostile_path",
    "bad_framing",
    "rotation",
    "expiry",
    "upstream_fault",
)


@dataclass(frozen=True)
class Plan:
    cases: tuple[Case, ...]

    @classmethod
    def default(cls) -> Plan:
        groups = {
            "global": _global_cases(),
            "organization": _organization_cases(),
            "org_resource": _org_resource_cases(),
            "claims": _claims_cases(),
            "audit": _audit_cases(),
            "public": _public_cases(),
            "no_route": _no_route_cases(),
            "bad_token": _bad_token_cases(),
            "hostile_path": _hostile_path_cases(),
            "bad_framing": _framing_cases(),
            "rotation": _rotation_cases(),
            "expiry": _expiry_cases(),
            "upstream_fault": _fault_cases(),
        }
        assert tuple(groups) == KINDS
        return cls(
            tuple(
                replace(case, kind=kind, name=f"{kind}/{case.name}") for kind, cases in groups.items() for case in cases
            )
        )
