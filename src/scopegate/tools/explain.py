"""`scopegate explain`: decide one request exactly as the proxy would, without serving anything.

It answers "what would scopegate do with this request?" — which route matches, what that route requires, and the
decision with its reason — so a rule can be checked before it is deployed. With `--token` the token is verified for
real (the issuer's JWKS is fetched); with `--claims` the claims are taken as given and the output says so.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from scopegate.app import build_verifier
from scopegate.bearer import check_format
from scopegate.config import Config
from scopegate.errors import RESPONSES, MissingToken, Reason
from scopegate.gate import Credentials, Gate
from scopegate.issuers import KeyCaches, Verifier
from scopegate.policy import Decision
from scopegate.request import Headers
from scopegate.rules import BEARER_HEADER, RouteRule, ScopeMode, TokenFrom, TokenSource
from scopegate.tokens import Claims
from scopegate.tools.offline import GIVEN_CLAIMS_TOKEN, GivenClaims, decide_offline, target_of


@dataclass
class Explanation:
    method: str
    path: str = ""
    route: RouteRule | None = None
    token_note: str = ""
    decision: Decision = field(default_factory=lambda: Decision(Reason.NO_ROUTE))
    identity: tuple[tuple[str, str], ...] = ()  # the identity headers the upstream would receive

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
        if self.allowed or self.identity:
            out.extend(f"forwards:  {name}: {value}" for name, value in self.identity)
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
    if route.issuers:
        parts.append(f"issued by one of [{', '.join(sorted(route.issuers))}]")
    if route.token_from != BEARER_HEADER:
        parts.append("the token from " + " or ".join(_place(source) for source in route.token_from))
    return "; ".join(parts)


def _place(source: TokenSource) -> str:
    return "the Authorization header" if source.kind is TokenFrom.HEADER else f"{source.kind.value} {source.name!r}"


async def explain(
    config: Config,
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    token: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> Explanation:
    """Explain one request; `token` is verified against the issuer's JWKS, `claims` are taken as they are.

    The decision is the server's own (`Gate.decide`); only the request arrives from the command line and the
    credentials from `--token` or `--claims` instead of the Authorization header.
    """
    result = Explanation(method=method)
    carried = token if token is not None else GIVEN_CLAIMS_TOKEN if claims is not None else None
    async with aiohttp.ClientSession() as session:
        credentials = _credentials(config, session, token, claims, result)
        gate = Gate.of(config, credentials)
        verdict = await decide_offline(gate, method, target_of(url), Headers.of(headers), token=carried)
    result.path = "" if verdict.reason is Reason.BAD_PATH else verdict.path
    result.route = verdict.route
    result.decision = Decision(verdict.reason, verdict.detail, verdict.description)
    result.identity = verdict.identity
    return result


class _GivenClaims(GivenClaims):
    """`--claims`: taken as they are, nothing verified, and the report says so."""

    def __init__(self, payload: Mapping[str, Any], result: Explanation) -> None:
        super().__init__(payload)
        self._result = result

    def claims(self, token: str) -> Claims:
        self._result.token_note = "claims given with --claims: signature, issuer and expiry NOT checked"
        return super().claims(token)


class _GivenToken:
    """`--token`: verified for real, against the issuer's JWKS fetched now."""

    def __init__(self, keys: KeyCaches, verifier: Verifier, result: Explanation) -> None:
        self._keys, self._verifier, self._result = keys, verifier, result

    def claims(self, token: str) -> Awaitable[Claims]:
        self._result.token_note = "verifying against the issuer's JWKS"
        return self._verified(token)

    async def _verified(self, token: str) -> Claims:
        await self._keys.refresh()
        verified = await self._verifier.verify(check_format(token))
        self._result.token_note = "signature verified against the issuer's JWKS"
        return verified


class _NoToken:
    def claims(self, token: str) -> Claims:
        raise MissingToken("no_token", "no token given (use --token JWT or --claims JSON)")


def _credentials(
    config: Config,
    session: aiohttp.ClientSession,
    token: str | None,
    claims: Mapping[str, Any] | None,
    result: Explanation,
) -> Credentials:
    if claims is not None:
        return _GivenClaims(claims, result)
    if token is None:
        return _NoToken()
    keys, verifier = build_verifier(config.auth, session, max_token_bytes=config.limits.max_token_bytes)
    return _GivenToken(keys, verifier, result)
