"""The one decision: what a request says in, a `Verdict` out, through the stages in their one order.

    normalize path -> (CORS preflight: answer) -> match route -> (public: allow) -> organization id
        -> token (from the route's sources) -> credentials -> policy (issuer, audience, scopes, claims) -> audit mode

Every front door decides through `Gate.decide`: the proxy port, the decision endpoint, `scopegate explain` and
`scopegate test`. Only how the request arrives and how the verdict leaves differ, so two front doors can never
disagree about a request: there is no second copy of the stage order to drift.

`decide` is synchronous whenever the credentials are (a public route, a refused request, a token already in the
verified-token cache) and returns a coroutine only when a token must be verified: the common case costs no task,
no future and no coroutine. No I/O here beyond what the credentials do; no framing, no aiohttp.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from scopegate.bearer import check_format, find_token, organization_id
from scopegate.config import Config
from scopegate.cors import Cors, Pairs, is_preflight
from scopegate.errors import RESPONSES, BadPath, CorsOriginNotAllowed, NoRoute, Reason, Rejection
from scopegate.issuers import Verifier
from scopegate.policy import ORGANIZATION_CHECKED, claim_at, decide
from scopegate.request import Headers, RequestFacts, query_without
from scopegate.routing import Router, normalize_path
from scopegate.rules import Mode, RouteRule, TokenFrom
from scopegate.tokens import Claims

# Denials that audit mode forwards anyway. A hostile path, an ambiguous request or missing signing keys are never
# forwarded: audit relaxes the rules, not the proxy's own safety.
AUDITABLE = frozenset(
    {
        Reason.MISSING_TOKEN,
        Reason.INVALID_TOKEN,
        Reason.WRONG_AUDIENCE,
        Reason.WRONG_ORGANIZATION,
        Reason.ORGANIZATION_TOKEN,
        Reason.INSUFFICIENT_SCOPE,
        Reason.CLAIM_MISMATCH,
        Reason.MISSING_ORGANIZATION,
    }
)
ALLOW, DENY, AUDIT_DENY = "allow", "deny", "audit_deny"

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER_SAFE = "".join(chr(code) for code in range(0x20, 0x7F) if chr(code) != "%")
_LOGGED_PATH_MAX = 512

# Request ids: a random per-process prefix and a counter. Unique across processes and restarts like uuid4, without
# a system call per request; spawned workers are fresh interpreters, so each draws its own prefix.
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count(1)


class Credentials(Protocol):
    """Where the gate gets a token's verified claims; raises a `Rejection` when there are none to be had."""

    def claims(self, token: str) -> Claims | Awaitable[Claims]:
        """The claims now when they are at hand, or an awaitable when the token must be verified first.

        `token` is what the request carries, its format not checked yet."""
        ...


class BearerCredentials:
    """A bearer token verified against the issuer: the verified-token cache first, then in full."""

    __slots__ = ("_verifier",)

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier

    def claims(self, token: str) -> Claims | Awaitable[Claims]:
        credentials = token
        # A remembered token passed the format check when it was verified: only a new one is checked again.
        claims = self._verifier.cached(credentials)
        if claims is not None:
            return claims
        token = check_format(credentials)
        # A new token whose key is cached is verified at once; only one that needs a JWKS fetch is awaited.
        claims = self._verifier.verify_now(token)
        return claims if claims is not None else self._verifier.verify(token)


@dataclass(slots=True)
class Verdict:
    """One request's decision, with everything the response, the decision log and the metrics need."""

    request_id: str
    method: str
    path: str = ""  # normalized; the raw target, escaped and bounded, when it was refused
    query: str = ""  # raw, as the client sent it
    route: RouteRule | None = None
    decision: str = DENY
    reason: Reason = Reason.OK
    detail: str = ""  # the finer cause, for the log
    description: str = ""  # for the client's error_description; "" means the reason's default
    status: int = 0  # a rejection's status; 0 while the request is (to be) forwarded
    sub: str | None = None
    client_id: str | None = None
    organization_id: str | None = None
    identity: tuple[tuple[str, str], ...] = ()  # scopegate's X-Auth-* headers for the upstream
    forward_token: bool = False  # the client's Authorization header goes upstream: verified, or the route says so
    cors: Pairs | None = None  # CORS headers for the response; None: no `cors` block, the upstream's own pass
    preflight: Pairs = ()  # a CORS preflight scopegate answers itself (204 with these), never forwarded

    @property
    def forward(self) -> bool:
        return self.decision != DENY

    @property
    def route_name(self) -> str:
        return self.route.name if self.route is not None else ""

    @property
    def required_scopes(self) -> tuple[str, ...]:
        return self.route.scopes.scopes if self.route is not None else ()

    def refuse(self, reason: Reason, detail: str, description: str = "", status: int | None = None) -> Verdict:
        """Deny with `reason`; the status defaults to the reason's (`errors.RESPONSES`)."""
        self.decision, self.reason, self.detail, self.description = DENY, reason, detail, description
        self.status = status or RESPONSES[reason].status
        self.identity = ()
        self.forward_token = False
        return self


class Gate:
    """The stages in order over one set of route rules; `credentials` turns a request into verified claims."""

    __slots__ = ("_allow_path_parameters", "_cors", "_credentials", "_router")

    def __init__(
        self,
        router: Router[RouteRule],
        credentials: Credentials,
        *,
        allow_path_parameters: bool = False,
        cors: Cors | None = None,
    ) -> None:
        self._router = router
        self._credentials = credentials
        self._allow_path_parameters = allow_path_parameters
        self._cors = cors

    @classmethod
    def of(cls, config: Config, credentials: Credentials) -> Gate:
        """The gate over a config's routes and path settings."""
        return cls(
            build_router(config), credentials, allow_path_parameters=config.allow_path_parameters, cors=config.cors
        )

    def decide(self, request: RequestFacts, request_id: str) -> Verdict | Coroutine[Any, Any, Verdict]:
        """The verdict, or a coroutine resolving to it when a token has to be verified first."""
        verdict = Verdict(request_id, request.method)
        try:
            verdict.path, verdict.query = split_target(request.target, self._allow_path_parameters)
        except Rejection as exc:
            verdict.path = loggable_target(request.target)
            return _refused(verdict, None, exc)
        route: RouteRule | None = None
        if self._cors is not None:
            origin = request.headers.get("Origin")
            verdict.cors = self._cors.response_headers(origin)
            requested = request.headers.get("Access-Control-Request-Method")
            if is_preflight(request.method, origin, requested):
                return self._preflight(verdict, self._cors, origin or "", requested or "")
        try:
            match = self._router.match(request.method, verdict.path)
            if match is None:
                raise NoRoute("no_route")
            route = verdict.route = match.target
            if route.public:
                verdict.decision, verdict.reason, verdict.identity = ALLOW, Reason.PUBLIC, _route_only(route)
                verdict.forward_token = route.forward_unverified_token
                return verdict
            if route.organization is not None:
                verdict.organization_id = organization_id(
                    route.organization, match.params, request.headers, verdict.query
                )
            token, source = find_token(route.token_from, request.headers, verdict.query)
            if source.kind is TokenFrom.QUERY:  # the app gets the query without it, and it is never logged
                verdict.query = query_without(verdict.query, source.name)
            claims = self._credentials.claims(token)
        except Rejection as exc:
            return _refused(verdict, route, exc)
        if isinstance(claims, Claims):
            return _conclude(verdict, route, claims, match.params)
        return _conclude_after(verdict, route, claims, match.params)

    def _preflight(self, verdict: Verdict, cors: Cors, origin: str, requested: str) -> Verdict:
        """A CORS preflight carries no token by design: answered here, for a path some route serves."""
        match = self._router.match(requested, verdict.path)
        if match is None:
            return _refused(verdict, None, NoRoute("no_route_for_preflight"))
        verdict.route = match.target
        if not cors.allows(origin):
            return _refused(verdict, None, CorsOriginNotAllowed("origin_not_allowed"))
        verdict.decision, verdict.reason, verdict.preflight = (
            ALLOW,
            Reason.CORS_PREFLIGHT,
            cors.preflight_headers(origin),
        )
        return verdict

    def route_for(self, request: RequestFacts) -> RouteRule | None:
        """The route a request would be decided by (None: refused path or no match), deciding nothing."""
        try:
            path, _ = split_target(request.target, self._allow_path_parameters)
        except Rejection:
            return None
        match = self._router.match(request.method, path)
        return match.target if match is not None else None

    async def decide_now(self, request: RequestFacts, request_id: str = "-") -> Verdict:
        """`decide`, awaited: for front doors that are coroutines anyway (explain, policy tests)."""
        verdict = self.decide(request, request_id)
        return verdict if isinstance(verdict, Verdict) else await verdict


def build_router(config: Config) -> Router[RouteRule]:
    return Router([(rule.template, rule.methods, rule) for rule in config.routes])


async def _conclude_after(
    verdict: Verdict, route: RouteRule, pending: Awaitable[Claims], params: Mapping[str, str]
) -> Verdict:
    try:
        claims = await pending
    except Rejection as exc:
        return _refused(verdict, route, exc)
    return _conclude(verdict, route, claims, params)


def _conclude(verdict: Verdict, route: RouteRule, claims: Claims, params: Mapping[str, str]) -> Verdict:
    """Policy on verified claims, then audit mode; identity headers only for what was verified."""
    verdict.sub, verdict.client_id = claims.subject, claims.client_id
    requested = verdict.organization_id
    if requested is None:
        verdict.organization_id = claims.organization_id
    decision = decide(route, requested if route.organization is not None else None, claims, params)
    verdict.reason, verdict.detail, verdict.description = decision.reason, decision.detail, decision.description
    if decision.allowed:
        verdict.decision = ALLOW
    elif route.mode is Mode.AUDIT and decision.reason in AUDITABLE:
        verdict.decision = AUDIT_DENY
    else:
        return verdict.refuse(decision.reason, decision.detail, decision.description)
    # The organization the request named is vouched for only once policy has compared it with the token.
    organization = requested if decision.reason in ORGANIZATION_CHECKED else None
    verdict.identity = _identity(route, claims, organization, audited=verdict.decision == AUDIT_DENY)
    verdict.forward_token = True
    return verdict


def _refused(verdict: Verdict, route: RouteRule | None, exc: Rejection) -> Verdict:
    """A stage refused the request; audit mode forwards the auditable refusals, without any identity."""
    if route is not None and route.mode is Mode.AUDIT and exc.reason in AUDITABLE:
        verdict.decision, verdict.reason, verdict.detail = AUDIT_DENY, exc.reason, exc.detail
        verdict.identity = (*_route_only(route), _AUDIT_DENIED)
        verdict.forward_token = route.forward_unverified_token
        return verdict
    return verdict.refuse(exc.reason, exc.detail, exc.description, exc.status)


# Tells the upstream that policy denied what it is being asked to serve (audit mode), so it can refuse it itself.
_AUDIT_DENIED = ("X-Auth-Decision", AUDIT_DENY)


def _route_only(route: RouteRule) -> tuple[tuple[str, str], ...]:
    return (("X-Auth-Route", route.name),)


def _identity(
    route: RouteRule, claims: Claims, organization: str | None, *, audited: bool
) -> tuple[tuple[str, str], ...]:
    headers = [("X-Auth-Route", route.name), ("X-Auth-Scopes", header_value(claims.scope))]
    if audited:
        headers.append(_AUDIT_DENIED)
    if claims.subject is not None:
        headers.append(("X-Auth-Subject", header_value(claims.subject)))
    if claims.client_id is not None:
        headers.append(("X-Auth-Client-Id", header_value(claims.client_id)))
    if route.organization is not None and organization is not None:
        headers.append(("X-Auth-Organization-Id", organization))
    for forwarded in route.forward_claims:
        value = claim_at(claims.raw, forwarded.path)
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            headers.append((forwarded.header, header_value(text)))
    if route.forward_payload:
        payload = json.dumps(dict(claims.raw), separators=(",", ":"), ensure_ascii=False).encode()
        headers.append(("X-Auth-Claims", base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")))
    return tuple(headers)


def header_value(value: str) -> str:
    """Claims are attacker-influenced text: anything outside visible ASCII, and `%`, is percent-encoded.

    `%` is encoded too so that the encoding is reversible: a claim holding `\r` and one holding the text `%0D`
    must never reach the upstream as the same header value.
    """
    # For ASCII text, isprintable() is exactly "space or visible": no control character, no DEL.
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=_HEADER_SAFE)


def split_target(target: str, allow_path_parameters: bool = False) -> tuple[str, str]:
    """The normalized path and the raw query of a request target (origin-form or absolute-form)."""
    if not target.startswith("/"):
        if not target.startswith(("http://", "https://")):
            raise BadPath("not_absolute", "the request target must be an absolute path")
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw_path, _, query = target.partition("?")
    return normalize_path(raw_path, allow_parameters=allow_path_parameters), query


def request_id(headers: Headers) -> str:
    """The client's X-Request-Id when it is a sane token, else a new one."""
    incoming = headers.get("X-Request-Id")
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def loggable_target(raw: str) -> str:
    """A refused path as it came, without its query (which may carry a token), bounded, control characters escaped."""
    path = raw.partition("?")[0]
    return path[:_LOGGED_PATH_MAX].encode("unicode_escape", "backslashreplace").decode("ascii")
