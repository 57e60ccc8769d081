"""Deciding without a network: a request built from text, carrying a token where its route reads tokens.

`explain` and policy tests decide through the proxy's own `Gate`; what they cannot have is a client and an issuer.
This module stands in for both: the request comes from a command line or a test file, and the claims are given
(trusted, not verified) or a token is verified against the issuer by the caller's own credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from scopegate.errors import Reason
from scopegate.gate import Gate, Verdict
from scopegate.request import Headers, RequestFacts
from scopegate.rules import BEARER_HEADER, HTTP_METHODS, RouteRule, TokenFrom
from scopegate.tokens import Claims, claims_from_payload

# What the request carries in place of a token when the claims are given: never verified, never a JWT.
GIVEN_CLAIMS_TOKEN = "given-claims"
KNOWN_METHODS = frozenset(HTTP_METHODS)


def target_of(url: str) -> str:
    """The request target of a full URL, or a path with query as it is (a fragment is never sent)."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "") if parts.scheme else url.split("#")[0]


def carrying(facts: RequestFacts, route: RouteRule | None, token: str) -> RequestFacts:
    """The request with `token` where its route reads tokens first (the Authorization header by default)."""
    source = route.token_from[0] if route is not None else BEARER_HEADER[0]
    if source.kind is TokenFrom.COOKIE:
        return RequestFacts(facts.method, facts.target, _plus(facts.headers, "Cookie", f"{source.name}={token}"))
    if source.kind is TokenFrom.QUERY:
        joiner = "&" if "?" in facts.target else "?"
        return RequestFacts(facts.method, f"{facts.target}{joiner}{source.name}={token}", facts.headers)
    if facts.headers.getall("Authorization"):  # the request names its own: it counts
        return facts
    return RequestFacts(facts.method, facts.target, _plus(facts.headers, "Authorization", f"Bearer {token}"))


def _plus(headers: Headers, name: str, value: str) -> Headers:
    return Headers([*headers.fields, *Headers.of([(name, value)]).fields])


class GivenClaims:
    """Credentials that take claims as given: nothing signed, nothing verified; only their types are checked."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self._payload = payload

    def claims(self, token: str) -> Claims:
        return claims_from_payload(self._payload)


async def decide_offline(
    gate: Gate, method: str, target: str, headers: Headers, *, token: str | None = None
) -> Verdict:
    """The verdict the proxy port would reach for this request, `token` placed where its route reads tokens."""
    if method not in KNOWN_METHODS:  # the proxy port's HTTP parser refuses these before anything is decided
        return Verdict("-", method).refuse(Reason.BAD_REQUEST, "bad_method", "an unknown or lower-case method")
    facts = RequestFacts(method, target, headers)
    if token is not None:
        facts = carrying(facts, gate.route_for(facts), token)
    return await gate.decide_now(facts)
