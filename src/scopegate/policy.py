"""Does a verified token grant what a route requires? Logto's three scenarios as one pure function.

| route has                  | token must have                                                               |
|----------------------------|-------------------------------------------------------------------------------|
| resource only              | aud contains the resource; NO organization_id claim; the scopes               |
| organization only          | aud contains urn:logto:organization:<org id from the request>; the scopes     |
| resource + organization    | aud contains the resource; organization_id == the request's org id; the scopes|

A global access token may carry API scopes the user holds only through organization roles; that is why a global
route refuses any token with an `organization_id`, and an organization-level route insists on the matching one.

No I/O, no clock, no aiohttp: `decide` takes the route, the organization id the request names and the verified
claims, and returns a `Decision` whose reason drives the response, the log and the metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from scopegate.errors import Reason
from scopegate.rules import ORGANIZATION_AUDIENCE_PREFIX, ClaimCondition, RouteRule, ScopeMode
from scopegate.tokens import Claims


@dataclass(frozen=True, slots=True)
class Decision:
    reason: Reason
    detail: str = ""  # finer cause for the log: the missing scopes, the claim that failed, ...
    description: str = ""  # for the client's error_description; "" means the reason's default

    @property
    def allowed(self) -> bool:
        return self.reason.allows


ALLOW = Decision(Reason.OK)

# The outcomes `decide` reaches only after the audience and organization checks passed (it checks audience and
# organization first, then scopes, then claims): with these, the organization the request named is the token's.
ORGANIZATION_CHECKED = frozenset({Reason.OK, Reason.INSUFFICIENT_SCOPE, Reason.CLAIM_MISMATCH})


_NO_PARAMS: Mapping[str, str] = {}


def decide(
    route: RouteRule, organization_id: str | None, claims: Claims, params: Mapping[str, str] = _NO_PARAMS
) -> Decision:
    """The decision for a protected route; `organization_id` is the one the request names (None: route has none),
    `params` the matched template's path parameters (for `{param}` claim conditions)."""
    denial = (
        _issuer(route, claims)
        or _audience(route, organization_id, claims)
        or _scopes(route, claims)
        or _claims(route, claims, params)
    )
    return denial or ALLOW


def _issuer(route: RouteRule, claims: Claims) -> Decision | None:
    if route.issuers and claims.issuer not in route.issuers:
        return Decision(
            Reason.INVALID_TOKEN, "issuer_not_allowed", "the access token's issuer is not accepted on this route"
        )
    return None


def _audience(route: RouteRule, organization_id: str | None, claims: Claims) -> Decision | None:
    if route.resource is not None:
        if route.resource not in claims.audiences:
            return Decision(
                Reason.WRONG_AUDIENCE,
                "resource_not_in_aud",
                f"the access token is not for the API resource {route.resource}",
            )
        if route.organization is None:
            return _global_resource(claims)
        return _organization_resource(organization_id, claims)
    if route.organization is not None:
        return _organization_token(organization_id, claims)
    # Config refuses protected routes with neither; refuse here too rather than allow any token of the issuer.
    return Decision(Reason.WRONG_AUDIENCE, "route_has_no_audience")


def _global_resource(claims: Claims) -> Decision | None:
    if claims.organization_id is not None:
        return Decision(
            Reason.ORGANIZATION_TOKEN,
            "organization_id_on_global_route",
            "this API needs a global access token, not one requested for an organization",
        )
    return None


def _organization_resource(organization_id: str | None, claims: Claims) -> Decision | None:
    if claims.organization_id is None:
        return Decision(
            Reason.WRONG_ORGANIZATION,
            "organization_id_missing",
            "request the access token for the organization in the request (organization_id)",
        )
    if claims.organization_id != organization_id:
        return Decision(
            Reason.WRONG_ORGANIZATION,
            "organization_id_mismatch",
            "the access token is for another organization",
        )
    return None


def _organization_token(organization_id: str | None, claims: Claims) -> Decision | None:
    if organization_id is None:  # the pipeline always names one; never compare against "...:None"
        return Decision(Reason.WRONG_ORGANIZATION, "organization_id_unknown", "the request names no organization")
    wanted = f"{ORGANIZATION_AUDIENCE_PREFIX}{organization_id}"
    if wanted in claims.audiences:
        return None
    if any(aud.startswith(ORGANIZATION_AUDIENCE_PREFIX) for aud in claims.audiences):
        return Decision(
            Reason.WRONG_ORGANIZATION,
            "organization_audience_mismatch",
            "the organization token is for another organization",
        )
    return Decision(
        Reason.WRONG_AUDIENCE,
        "not_an_organization_token",
        "this route needs an organization token (aud urn:logto:organization:<id>)",
    )


def _scopes(route: RouteRule, claims: Claims) -> Decision | None:
    required = route.scopes.scopes
    if not required:
        return None
    missing = [scope for scope in required if scope not in claims.scopes]
    if route.scopes.mode is ScopeMode.ANY:
        if len(missing) < len(required):
            return None
        return Decision(
            Reason.INSUFFICIENT_SCOPE,
            "needs one of: " + " ".join(required),
            "the access token has none of the scopes this route accepts",
        )
    if not missing:
        return None
    return Decision(
        Reason.INSUFFICIENT_SCOPE,
        "missing: " + " ".join(missing),
        "the access token lacks scopes this route requires",
    )


def _claims(route: RouteRule, claims: Claims, params: Mapping[str, str]) -> Decision | None:
    for condition in route.claims:
        if not claim_satisfies(claim_at(claims.raw, condition.path), condition, params):
            return Decision(
                Reason.CLAIM_MISMATCH,
                f"claim {condition.name}",
                f"the access token's {condition.name} claim does not meet this route's condition",
            )
    return None


def claim_at(raw: Mapping[str, object], path: tuple[str, ...]) -> object:
    """The claim at `path` into nested objects; None when any step is missing or not an object."""
    value: object = raw
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def claim_satisfies(value: object, condition: ClaimCondition, params: Mapping[str, str] = _NO_PARAMS) -> bool:
    """Equal to one of the condition's values (or, for a list claim, holding one), or to its path parameter.

    Types must match exactly: `true` is not `1` and `"1"` is not `1`, so a claim cannot pass by coercion. A path
    parameter is compared decoded (`%40` as `@`): the claim is text, the path its percent-encoded form.
    """
    if condition.param is not None:
        wanted = params.get(condition.param)
        return wanted is not None and _same(value, unquote(wanted))
    items = value if isinstance(value, list) else (value,)
    return any(_same(item, expected) for item in items for expected in condition.values)


def _same(value: object, expected: object) -> bool:
    return type(value) is type(expected) and value == expected
