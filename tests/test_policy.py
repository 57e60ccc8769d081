"""The policy decision as tables: (route, organization the request names, token claims) -> reason.

Claims are built by `tokens.claims_from_payload`, the same reading of a payload the verifier uses, so a row's
`scope` string is split exactly as a real token's would be.
"""

from __future__ import annotations

from typing import Any

import pytest

from scopegate.config import parse_config
from scopegate.errors import Reason
from scopegate.policy import ALLOW, Decision, claim_at, claim_satisfies, decide
from scopegate.rules import ClaimCondition, RouteRule
from scopegate.tokens import Claims, claims_from_payload

API = "https://api.example.com"
ACME = "urn:logto:organization:acme"

_CONFIG = parse_config(
    f"""
upstream: http://127.0.0.1:3000
auth:
  issuer: https://tenant.logto.app/oidc
routes:
  - name: global
    match: {{ path: "/api/reports/{{report_id}}" }}
    resource: {API}
    scopes: [read:report]
  - name: global-two-scopes
    match: {{ path: "/api/exports" }}
    resource: {API}
    scopes: [read:report, export:report]
  - name: global-no-scopes
    match: {{ path: "/api/ping" }}
    resource: {API}
  - name: org
    match: {{ path: "/orgs/{{org_id}}/members" }}
    organization: {{ from: path, name: org_id }}
    scopes: [invite:member]
  - name: org-api
    match: {{ path: "/api/orgs/{{org_id}}/projects/**" }}
    resource: {API}
    organization: {{ from: path, name: org_id }}
    scopes: {{ any: [read:project, admin:project] }}
  - name: claims
    match: {{ path: "/admin/**" }}
    resource: {API}
    claims: {{ roles: admin, email_verified: true, level: 1, tier: "1" }}
  - name: public
    match: {{ path: "/public/**" }}
    public: true
"""
)
ROUTES: dict[str, RouteRule] = {rule.name: rule for rule in _CONFIG.routes}
ADMIN = {"roles": "admin", "email_verified": True, "level": 1, "tier": "1"}


def token(**payload: Any) -> Claims:
    return claims_from_payload({"iss": "https://tenant.logto.app/oidc", "sub": "user-1", **payload})


def row(route: str, org: str | None, claims: Claims, expected: object, name: str) -> Any:
    """One table row: the route by name, the organization the request names, the claims, what `decide` gives."""
    return pytest.param(ROUTES[route], org, claims, expected, id=name)


ROWS = [
    # 1. Global API resource: aud = the API, no organization_id, the scopes.
    row("global", None, token(aud=API, scope="read:report"), Reason.OK, "global-ok"),
    row("global", None, token(aud=[API, "https://other"], scope="read:report"), Reason.OK, "global-aud-list"),
    row("global", None, token(aud=["https://other", API], scope="x read:report y"), Reason.OK, "global-extra-scopes"),
    row("global-no-scopes", None, token(aud=API), Reason.OK, "global-no-scope-needed"),
    row("global-two-scopes", None, token(aud=API, scope="export:report read:report"), Reason.OK, "global-all-scopes"),
    row("global", None, token(aud="https://other", scope="read:report"), Reason.WRONG_AUDIENCE, "global-wrong-aud"),
    row("global", None, token(aud=API + "/", scope="read:report"), Reason.WRONG_AUDIENCE, "global-aud-trailing-slash"),
    row("global", None, token(aud=[], scope="read:report"), Reason.WRONG_AUDIENCE, "global-aud-empty-list"),
    row("global", None, token(scope="read:report"), Reason.WRONG_AUDIENCE, "global-no-aud"),
    row("global", None, token(aud=ACME, scope="read:report"), Reason.WRONG_AUDIENCE, "org-token-on-global-route"),
    row(
        "global",
        None,
        token(aud=API, organization_id="acme", scope="read:report"),
        Reason.ORGANIZATION_TOKEN,
        "global-token-with-organization-id",
    ),
    row("global", None, token(aud=API), Reason.INSUFFICIENT_SCOPE, "global-no-scope"),
    row("global", None, token(aud=API, scope=""), Reason.INSUFFICIENT_SCOPE, "global-empty-scope"),
    row("global-two-scopes", None, token(aud=API, scope="read:report"), Reason.INSUFFICIENT_SCOPE, "global-one-of-two"),
    # The token's scope is split on single spaces, exactly: no substring, prefix, case or tab tricks.
    row("global", None, token(aud=API, scope="read:reports"), Reason.INSUFFICIENT_SCOPE, "scope-plural"),
    row("global", None, token(aud=API, scope="read:repor"), Reason.INSUFFICIENT_SCOPE, "scope-prefix"),
    row("global", None, token(aud=API, scope="read:report2"), Reason.INSUFFICIENT_SCOPE, "scope-suffix"),
    row("global", None, token(aud=API, scope="xread:report"), Reason.INSUFFICIENT_SCOPE, "scope-prefixed"),
    row("global", None, token(aud=API, scope="READ:REPORT"), Reason.INSUFFICIENT_SCOPE, "scope-case"),
    row("global", None, token(aud=API, scope="read:report,x"), Reason.INSUFFICIENT_SCOPE, "scope-comma-is-no-sep"),
    row("global", None, token(aud=API, scope="a\tread:report"), Reason.INSUFFICIENT_SCOPE, "scope-tab-is-no-sep"),
    row("global", None, token(aud=API, scope="read:report\n"), Reason.INSUFFICIENT_SCOPE, "scope-newline-kept"),
    row("global", None, token(aud=API, scope="a  read:report"), Reason.OK, "scope-double-space"),
    row("global", None, token(aud=API, scope=" read:report "), Reason.OK, "scope-outer-spaces"),
    row("global", None, token(aud=API, read_report=True, scp="read:report"), Reason.INSUFFICIENT_SCOPE, "only-scope"),
    # 2. Organization permissions: aud = urn:logto:organization:<org in the request>, the scopes.
    row("org", "acme", token(aud=ACME, scope="invite:member"), Reason.OK, "org-ok"),
    row("org", "acme", token(aud=[API, ACME], scope="invite:member"), Reason.OK, "org-aud-list"),
    row(
        "org",
        "acme",
        token(aud="urn:logto:organization:globex", scope="invite:member"),
        Reason.WRONG_ORGANIZATION,
        "org-token-for-another-org",
    ),
    row("org", "acme", token(aud=ACME + "2", scope="invite:member"), Reason.WRONG_ORGANIZATION, "org-id-prefix"),
    row("org", "acme2", token(aud=ACME, scope="invite:member"), Reason.WRONG_ORGANIZATION, "org-id-extended"),
    row("org", "ACME", token(aud=ACME, scope="invite:member"), Reason.WRONG_ORGANIZATION, "org-id-case"),
    row("org", "acme", token(aud=API, scope="invite:member"), Reason.WRONG_AUDIENCE, "global-token-on-org-route"),
    row("org", "acme", token(scope="invite:member"), Reason.WRONG_AUDIENCE, "org-no-aud"),
    row("org", "acme", token(aud=ACME), Reason.INSUFFICIENT_SCOPE, "org-no-scope"),
    row("org", None, token(aud=ACME, scope="invite:member"), Reason.WRONG_ORGANIZATION, "org-none-named"),
    row(
        "org",
        None,
        token(aud="urn:logto:organization:None", scope="invite:member"),
        Reason.WRONG_ORGANIZATION,
        "org-none-is-not-the-string-none",
    ),
    # 3. Organization-level API resource: aud = the API, organization_id = the org in the request, the scopes.
    row("org-api", "acme", token(aud=API, organization_id="acme", scope="read:project"), Reason.OK, "org-api-read"),
    row("org-api", "acme", token(aud=API, organization_id="acme", scope="admin:project"), Reason.OK, "org-api-admin"),
    row(
        "org-api",
        "acme",
        token(aud=API, organization_id="acme", scope="admin:project read:project"),
        Reason.OK,
        "org-api-both",
    ),
    row(
        "org-api",
        "acme",
        token(aud=API, scope="read:project"),
        Reason.WRONG_ORGANIZATION,
        "org-api-organization-id-missing",
    ),
    row(
        "org-api",
        "acme",
        token(aud=API, organization_id="globex", scope="read:project"),
        Reason.WRONG_ORGANIZATION,
        "org-api-another-org",
    ),
    row(
        "org-api",
        "acme",
        token(aud=API, organization_id="Acme", scope="read:project"),
        Reason.WRONG_ORGANIZATION,
        "org-api-org-case",
    ),
    row(
        "org-api",
        "acme",
        token(aud="https://other", organization_id="acme", scope="read:project"),
        Reason.WRONG_AUDIENCE,
        "org-api-wrong-aud",
    ),
    row(
        "org-api",
        "acme",
        token(aud=ACME, organization_id="acme", scope="read:project"),
        Reason.WRONG_AUDIENCE,
        "org-token-on-org-api-route",
    ),
    row(
        "org-api",
        "acme",
        token(aud=API, organization_id="acme", scope="write:project"),
        Reason.INSUFFICIENT_SCOPE,
        "org-api-any-none",
    ),
    row(
        "org-api",
        "acme",
        token(aud=API, organization_id="acme", scope="read:projects"),
        Reason.INSUFFICIENT_SCOPE,
        "org-api-any-substring",
    ),
    # Custom claim conditions: equal, or contained in a list claim; types must match exactly.
    row("claims", None, token(aud=API, **ADMIN), Reason.OK, "claims-equal"),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": ["user", "admin"]}), Reason.OK, "claims-list-contains"),
    row(
        "claims",
        None,
        token(aud=API, **{**ADMIN, "roles": ["user", "administrator"]}),
        Reason.CLAIM_MISMATCH,
        "claims-list-lacks",
    ),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": []}), Reason.CLAIM_MISMATCH, "claims-list-empty"),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": [["admin"]]}), Reason.CLAIM_MISMATCH, "claims-nested"),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": "Admin"}), Reason.CLAIM_MISMATCH, "claims-case"),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": "admin "}), Reason.CLAIM_MISMATCH, "claims-space"),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": {"admin": 1}}), Reason.CLAIM_MISMATCH, "claims-object"),
    row(
        "claims",
        None,
        token(aud=API, **{k: v for k, v in ADMIN.items() if k != "roles"}),
        Reason.CLAIM_MISMATCH,
        "claims-missing",
    ),
    row("claims", None, token(aud=API, **{**ADMIN, "roles": None}), Reason.CLAIM_MISMATCH, "claims-null"),
    row(
        "claims",
        None,
        token(aud=API, **{**ADMIN, "email_verified": "true"}),
        Reason.CLAIM_MISMATCH,
        "claims-true-vs-string",
    ),
    row("claims", None, token(aud=API, **{**ADMIN, "email_verified": 1}), Reason.CLAIM_MISMATCH, "claims-true-vs-1"),
    row("claims", None, token(aud=API, **{**ADMIN, "email_verified": [True]}), Reason.OK, "claims-true-in-list"),
    row("claims", None, token(aud=API, **{**ADMIN, "email_verified": [1]}), Reason.CLAIM_MISMATCH, "claims-1-in-list"),
    row("claims", None, token(aud=API, **{**ADMIN, "level": True}), Reason.CLAIM_MISMATCH, "claims-1-vs-true"),
    row("claims", None, token(aud=API, **{**ADMIN, "level": "1"}), Reason.CLAIM_MISMATCH, "claims-1-vs-string"),
    row("claims", None, token(aud=API, **{**ADMIN, "level": 1.0}), Reason.CLAIM_MISMATCH, "claims-1-vs-float"),
    row("claims", None, token(aud=API, **{**ADMIN, "tier": 1}), Reason.CLAIM_MISMATCH, "claims-string-vs-1"),
    # Order: audience, then scopes, then claims; the first failure is the reason.
    row("global", None, token(aud="https://other"), Reason.WRONG_AUDIENCE, "audience-before-scope"),
    row("claims", None, token(aud="https://other"), Reason.WRONG_AUDIENCE, "audience-before-claims"),
    row("global", None, token(aud=API, organization_id="acme"), Reason.ORGANIZATION_TOKEN, "org-id-before-scope"),
    # A route with neither resource nor organization never reaches `decide` (config refuses it), but fails closed.
    row("public", None, token(aud=API, scope="read:report"), Reason.WRONG_AUDIENCE, "no-audience-fails-closed"),
]


@pytest.mark.parametrize(("route", "organization_id", "claims", "reason"), ROWS)
def test_decide(route: RouteRule, organization_id: str | None, claims: Claims, reason: Reason) -> None:
    decision = decide(route, organization_id, claims)
    assert decision.reason is reason
    assert decision.allowed is (reason is Reason.OK)
    if reason is Reason.OK:
        assert decision == ALLOW


@pytest.mark.parametrize(
    ("route", "organization_id", "claims", "detail"),
    [
        row("global", None, token(aud="https://other"), "resource_not_in_aud", "wrong-aud"),
        row("global", None, token(aud=API, organization_id="acme"), "organization_id_on_global_route", "org-id"),
        row("global", None, token(aud=API), "missing: read:report", "one-missing"),
        row("global-two-scopes", None, token(aud=API), "missing: read:report export:report", "two-missing"),
        row("global-two-scopes", None, token(aud=API, scope="read:report"), "missing: export:report", "second"),
        row("org-api", "acme", token(aud=API), "organization_id_missing", "org-id-missing"),
        row("org-api", "acme", token(aud=API, organization_id="x"), "organization_id_mismatch", "org-mismatch"),
        row(
            "org-api",
            "acme",
            token(aud=API, organization_id="acme"),
            "needs one of: read:project admin:project",
            "any-none",
        ),
        row("org", "acme", token(aud="urn:logto:organization:x"), "organization_audience_mismatch", "org-aud"),
        row("org", "acme", token(aud=API), "not_an_organization_token", "not-org-token"),
        row("claims", None, token(aud=API, **{**ADMIN, "level": 2}), "claim level", "claim"),
    ],
)
def test_decision_detail_names_the_finer_cause(
    route: RouteRule, organization_id: str | None, claims: Claims, detail: str
) -> None:
    decision = decide(route, organization_id, claims)
    assert not decision.allowed
    assert decision.detail == detail


def test_denials_describe_themselves_without_quotes_or_token_content() -> None:
    secret = "s3cr3t-subject"
    claims = token(aud="urn:logto:organization:x", sub=secret, scope="x")
    for rule in ROUTES.values():
        decision = decide(rule, "acme", claims)
        assert not decision.allowed
        assert secret not in decision.description
        assert '"' not in decision.description
        assert "\\" not in decision.description


def test_decision_allowed_follows_the_reason() -> None:
    assert Decision(Reason.OK).allowed
    assert Decision(Reason.PUBLIC).allowed
    assert not Decision(Reason.INSUFFICIENT_SCOPE, "missing: a").allowed


@pytest.mark.parametrize(
    ("value", "expected", "satisfied"),
    [
        pytest.param("admin", "admin", True, id="str-equal"),
        pytest.param("admins", "admin", False, id="str-differs"),
        pytest.param(["a", "admin"], "admin", True, id="list-contains"),
        pytest.param(["a", "b"], "admin", False, id="list-lacks"),
        pytest.param([], "admin", False, id="empty-list"),
        pytest.param(("admin",), "admin", False, id="tuple-is-not-a-json-list"),
        pytest.param("admin", ["admin"], True, id="one-value-list-is-any-of"),
        pytest.param("owner", ["admin", "owner"], True, id="any-of"),
        pytest.param("guest", ["admin", "owner"], False, id="none-of"),
        pytest.param(["guest", "owner"], ["admin", "owner"], True, id="list-claim-overlaps"),
        pytest.param(["guest"], ["admin", "owner"], False, id="list-claim-does-not-overlap"),
        pytest.param(1, ["1", True], False, id="any-of-keeps-strict-types"),
        pytest.param(None, "admin", False, id="absent"),
        pytest.param(True, True, True, id="bool-equal"),
        pytest.param(1, True, False, id="int-is-not-bool"),
        pytest.param(True, 1, False, id="bool-is-not-int"),
        pytest.param("1", 1, False, id="str-is-not-int"),
        pytest.param(1, 1, True, id="int-equal"),
        pytest.param(1.0, 1, False, id="float-is-not-int"),
        pytest.param(0.5, 0.5, True, id="float-equal"),
        pytest.param([1, True], True, True, id="list-mixed-bool"),
        pytest.param([1, "true"], True, False, id="list-mixed-no-bool"),
    ],
)
def test_claim_satisfies(value: object, expected: Any, satisfied: bool) -> None:
    values = tuple(expected) if isinstance(expected, list) else (expected,)
    assert claim_satisfies(value, ClaimCondition(name="c", path=("c",), values=values)) is satisfied


@pytest.mark.parametrize(
    ("raw", "path", "found"),
    [
        pytest.param({"app": {"role": "admin"}}, ("app", "role"), "admin", id="nested"),
        pytest.param({"app.role": "admin"}, ("app.role",), "admin", id="dotted-own-name"),
        pytest.param({"app.role": "admin"}, ("app", "role"), None, id="dotted-name-is-not-nested"),
        pytest.param({"app": "admin"}, ("app", "role"), None, id="step-into-a-string"),
        pytest.param({"app": ["role"]}, ("app", "role"), None, id="step-into-a-list"),
        pytest.param({}, ("a", "b", "c"), None, id="absent"),
        pytest.param({"a": {"b": {"c": [1, 2]}}}, ("a", "b", "c"), [1, 2], id="deep-list"),
    ],
)
def test_claim_at_reaches_into_nested_objects(raw: dict[str, Any], path: tuple[str, ...], found: object) -> None:
    assert claim_at(raw, path) == found


@pytest.mark.parametrize(
    ("value", "param", "satisfied"),
    [
        pytest.param("user-1", "user-1", True, id="equal"),
        pytest.param("user-1", "user-2", False, id="other-user"),
        pytest.param("a@b.example", "a%40b.example", True, id="compared-decoded"),
        pytest.param("a b", "a%20b", True, id="encoded-space"),
        pytest.param(["user-1"], "user-1", False, id="list-claim-is-not-a-subject"),
        pytest.param(7, "7", False, id="number-is-not-text"),
        pytest.param(None, "user-1", False, id="absent"),
    ],
)
def test_a_claim_equal_to_a_path_parameter(value: object, param: str, satisfied: bool) -> None:
    condition = ClaimCondition(name="sub", path=("sub",), param="user_id")
    assert claim_satisfies(value, condition, {"user_id": param}) is satisfied
    assert claim_satisfies(value, condition, {}) is False, "no such parameter matched: never satisfied"
