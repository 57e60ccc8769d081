"""The request handler: the stages in order, one decision log line and one metrics record per request.

    normalize path -> match route -> (public: forward) -> organization id -> bearer token -> verify -> decide
                   -> forward or reject

Every stage either returns or raises a `Rejection`; `Pipeline.handle` turns the outcome into a response, a log line
and a metric in one place. The rules in force are read once at the start of a request, so a reload never changes the
rules a request started with.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from aiohttp import web

from scopegate.bearer import bearer_token, organization_id
from scopegate.config import Config
from scopegate.errors import BadPath, NoRoute, Reason, Rejection
from scopegate.observability import Metrics
from scopegate.policy import Decision, decide
from scopegate.proxy import BROKEN_BY_CLIENT, BROKEN_BY_UPSTREAM, Forward, Forwarded, Upstream, wants_websocket
from scopegate.responses import rejection
from scopegate.routing import RouteMatch, Router, normalize_path
from scopegate.rules import Mode, RouteRule
from scopegate.tokens import Claims, TokenVerifier

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
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER_SAFE = re.compile(r"[ -~]*")
_LOGGED_PATH_MAX = 512

log = structlog.get_logger("scopegate")


def build_router(config: Config) -> Router[RouteRule]:
    return Router([(rule.template, rule.methods, rule) for rule in config.routes])


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A config with its compiled router and upstream: what a reload swaps in as one unit."""

    config: Config
    router: Router[RouteRule]
    upstream: Upstream

    @classmethod
    def build(cls, config: Config, session: aiohttp.ClientSession) -> Ruleset:
        upstream = Upstream(session, config.upstream, config.upstream_timeout_seconds)
        return cls(config, build_router(config), upstream)


@dataclass(slots=True)
class Record:
    """What the decision log and metrics say about one request, filled in as the stages run."""

    method: str
    path: str
    request_id: str
    route: str = ""
    decision: str = "deny"
    reason: Reason = Reason.OK
    detail: str = ""
    status: int = 0
    sub: str | None = None
    client_id: str | None = None
    organization_id: str | None = None
    upstream_seconds: float | None = None


class Pipeline:
    def __init__(self, *, rules: Ruleset, verifier: TokenVerifier, metrics: Metrics) -> None:
        self.rules = rules  # replaced whole on reload; each request reads it once
        self._verifier = verifier
        self._metrics = metrics

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        record = Record(request.method, "", _request_id(request))
        self._metrics.inflight.inc()
        response: web.StreamResponse | None = None
        try:
            response = await self._process(request, self.rules, record)
            return response
        finally:
            self._metrics.inflight.dec()
            record.status = response.status if response is not None else 499  # 499: the client went away
            self._observe(record, time.perf_counter() - started)

    async def _process(self, request: web.BaseRequest, rules: Ruleset, record: Record) -> web.StreamResponse:
        route: RouteRule | None = None
        try:
            record.path = _loggable(request.raw_path)  # replaced by the normalized path once it is known
            record.path, query = _split_target(request)
            match = rules.router.match(request.method, record.path)
            if match is None:
                raise NoRoute("no_route")
            route = match.target
            record.route = route.name
            if route.public:
                record.decision, record.reason = "allow", Reason.PUBLIC
                return await self._forward(request, rules.upstream, record, query, {"X-Auth-Route": route.name})
            return await self._protected(request, rules.upstream, match, record, query)
        except Rejection as exc:
            record.reason, record.detail = exc.reason, exc.detail
            scopes = route.scopes.scopes if route is not None else ()
            return _with_request_id(
                rejection(exc.reason, exc.description, required_scopes=scopes, status=exc.status), record
            )

    async def _protected(
        self, request: web.BaseRequest, upstream: Upstream, match: RouteMatch[RouteRule], record: Record, query: str
    ) -> web.StreamResponse:
        route = match.target
        claims, decision = await self._authorize(request, route, match, record)
        record.reason, record.detail = decision.reason, decision.detail
        if decision.allowed:
            record.decision = "allow"
        elif route.mode is Mode.AUDIT and decision.reason in AUDITABLE:
            record.decision = "audit_deny"
        else:
            response = rejection(decision.reason, decision.description, required_scopes=route.scopes.scopes)
            return _with_request_id(response, record)
        identity = _identity(route, claims, record.organization_id) if claims else {"X-Auth-Route": route.name}
        return await self._forward(request, upstream, record, query, identity)

    async def _authorize(
        self, request: web.BaseRequest, route: RouteRule, match: RouteMatch[RouteRule], record: Record
    ) -> tuple[Claims | None, Decision]:
        """The verified claims (when the token verified) and the decision; hard failures propagate."""
        claims: Claims | None = None
        try:
            if route.organization is not None:
                record.organization_id = organization_id(
                    route.organization, match.params, request.headers, request.rel_url.query
                )
            claims = await self._verifier.verify(bearer_token(request.headers))
        except Rejection as exc:
            if exc.reason not in AUDITABLE:
                raise
            return claims, Decision(exc.reason, exc.detail, exc.description)
        record.sub, record.client_id = claims.subject, claims.client_id
        if record.organization_id is None:
            record.organization_id = claims.organization_id
        decision = decide(route, record.organization_id if route.organization else None, claims)
        return claims, decision

    async def _forward(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        record: Record,
        query: str,
        identity: Mapping[str, str],
    ) -> web.StreamResponse:
        """Upstream failures raise out to `_process`; the record keeps the policy's decision with their reason."""
        forward = Forward(path=record.path, query=query, identity=identity, request_id=record.request_id)
        if wants_websocket(request):
            result: Forwarded = await upstream.forward_websocket(request, forward)
        else:
            result = await upstream.forward(request, forward)
        record.upstream_seconds = result.upstream_seconds
        if result.broken_by == BROKEN_BY_UPSTREAM:
            record.reason, record.detail = Reason.UPSTREAM_ERROR, "upstream_broke_off_mid_body"
        elif result.broken_by == BROKEN_BY_CLIENT:
            record.detail = "client_closed_mid_body"
        return result.response

    def _observe(self, record: Record, seconds: float) -> None:
        m = self._metrics
        m.requests.labels(record.route, record.decision, record.reason.value).inc()
        m.request_duration.labels(record.route).observe(seconds)
        if record.upstream_seconds is not None:
            m.upstream_duration.labels(record.route).observe(record.upstream_seconds)
        log.info(
            "decision",
            route=record.route,
            decision=record.decision,
            reason=record.reason.value,
            detail=record.detail,
            status=record.status,
            method=record.method,
            path=record.path[:_LOGGED_PATH_MAX],
            sub=record.sub,
            client_id=record.client_id,
            organization_id=record.organization_id,
            duration_ms=round(seconds * 1000, 3),
            request_id=record.request_id,
        )


def _split_target(request: web.BaseRequest) -> tuple[str, str]:
    """The normalized path and the raw query of the request target (origin-form or absolute-form)."""
    target = request.raw_path
    if not target.startswith("/"):
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            raise BadPath("not_absolute", "the request target must be an absolute path")
    raw_path, _, query = target.partition("?")
    return normalize_path(raw_path), query


def _loggable(raw: str) -> str:
    """A refused path as it came, bounded and with control characters escaped (it may be hostile)."""
    return raw[:_LOGGED_PATH_MAX].encode("unicode_escape", "backslashreplace").decode("ascii")


def _request_id(request: web.BaseRequest) -> str:
    incoming = request.headers.get("X-Request-Id", "")
    return incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _identity(route: RouteRule, claims: Claims, organization: str | None) -> dict[str, str]:
    headers = {"X-Auth-Route": route.name, "X-Auth-Scopes": _header_value(claims.scope)}
    if claims.subject is not None:
        headers["X-Auth-Subject"] = _header_value(claims.subject)
    if claims.client_id is not None:
        headers["X-Auth-Client-Id"] = _header_value(claims.client_id)
    if route.organization is not None and organization is not None:
        headers["X-Auth-Organization-Id"] = organization
    return headers


def _header_value(value: str) -> str:
    """Claims are attacker-influenced text: anything outside visible ASCII is percent-encoded, never passed raw."""
    return value if _HEADER_SAFE.fullmatch(value) else quote(value, safe="".join(map(chr, range(0x20, 0x7F))))


def _with_request_id(response: web.StreamResponse, record: Record) -> web.StreamResponse:
    response.headers["X-Request-Id"] = record.request_id
    return response
