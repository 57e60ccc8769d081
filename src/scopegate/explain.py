"""`scopegate explain`: run one request through the same stages as the proxy, without serving anything.

It answers "what would scopegate do with this request?" — which route matches, what that route requires, and the
decision with its reason — so a rule can be checked before it is deployed. With `--token` the token is verified for
real (the issuer's JWKS is fetched); with `--claims` the claims are taken as given and the output says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict, MultiDict
from yarl import URL

from scopegate.app import build_verifier
from scopegate.bearer import organization_id
from scopegate.config import Config
from scopegate.errors import RESPONSES, MissingToken, NoRoute, Reason, Rejection
from scopegate.pipeline import build_router
from scopegate.policy import Decision, decide
from scopegate.routing import normalize_path
from scopegate.rules import RouteRule, ScopeMode
from scopegate.tokens import Claims, claims_from_payload


@dataclass
class Explanation:
    method: str
    path: str = ""
    route: RouteRule | None = None
    token_note: str = ""
    decision: Decision = field(default_factory=lambda: Decision(Reason.NO_ROUTE))

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    def lines(self, config: Config) -> list[str]:
        out = [f"request:   {self.method} {self.path or '(path refused)'}"]
        if self.route is not None:
            out.append(f"route:     {self.route.name} ({config.source or '<config>'}:{self.route.line})")
            out.append(f"requires:  {describe_requirements(self.route)}")
        else:
            out.append("route:     none matches")
        if self.token_note:
            out.append(f"token:     {self.token_note}")
        reason = self.decision.reason
        verdict = "allow" if self.allowed else f"deny -> {RESPONSES[reason].status} {RESPONSES[reason].error}"
        detail = f" ({self.decision.detail})" if self.decision.detail else ""
        out.append(f"decision:  {verdict}; reason {reason.value}{detail}")
        return out


def describe_requirements(route: RouteRule) -> str:
    if route.public:
        return "nothing (public route; identity headers are still stripped)"
    parts = []
    if route.resource is not None:
        parts.append(f"aud contains {route.resource}")
    if route.organization is not None:
        where = f"{route.organization.source.value} {route.organization.name!r}"
        if route.resource is not None:
            parts.append(f"organization_id equal to the organization id from the {where}")
        else:
            parts.append(f"an organization token for the organization id from the {where}")
    elif route.resource is not None:
        parts.append("no organization_id claim (global token)")
    if route.scopes.scopes:
        joiner = "all of" if route.scopes.mode is ScopeMode.ALL else "any of"
        parts.append(f"scopes {joiner} [{', '.join(route.scopes.scopes)}]")
    parts.extend(f"claim {c.name} = {json.dumps(c.value)}" for c in route.claims)
    return "; ".join(parts)


async def explain(
    config: Config,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> Explanation:
    """Explain one request; `token` is verified against the issuer's JWKS, `claims` are taken as they are."""
    result = Explanation(method=method.upper())
    try:
        target = URL(url, encoded=True)
        result.path = normalize_path(target.raw_path or "/")
        match = build_router(config).match(result.method, result.path)
        if match is None:
            raise NoRoute("no_route")
        result.route = match.target
        if match.target.public:
            result.decision = Decision(Reason.PUBLIC)
            return result
        org = _organization(match.target, match.params, headers or {}, target)
        verified = await _claims(config, token, claims, result)
        result.decision = decide(match.target, org, verified)
    except Rejection as exc:
        result.decision = Decision(exc.reason, exc.detail, exc.description)
    return result


def _organization(route: RouteRule, params: Mapping[str, str], headers: Mapping[str, str], url: URL) -> str | None:
    if route.organization is None:
        return None
    return organization_id(route.organization, params, CIMultiDict(headers), MultiDict(url.query))


async def _claims(config: Config, token: str | None, claims: Mapping[str, Any] | None, result: Explanation) -> Claims:
    if claims is not None:
        result.token_note = "claims given with --claims: signature, issuer and expiry NOT checked"
        return claims_from_payload(claims)
    if token is None:
        raise MissingToken("no_token", "no token given (use --token JWT or --claims JSON)")
    result.token_note = "verifying against the issuer's JWKS"
    async with aiohttp.ClientSession() as session:
        keys, verifier = build_verifier(config.auth, session)
        await keys.refresh()
        verified = await verifier.verify(token)
    result.token_note = "signature verified against the issuer's JWKS"
    return verified
