"""What every front door shares: a request from `http1`, decided by the `Gate`, its outcome recorded exactly once.

    http1 (framing) -> facts -> Gate.decide (the decision) -> the door's answer -> one log line, one metrics record

A front door only says how the request arrives (`facts`: the proxy port takes the request itself, the decision
endpoint the original request an ingress describes) and how an allowed verdict leaves (`admit`: forwarded upstream,
or a 200 with identity headers). Waiting for a token's verification, answering a rejection, an internal error or a
client that went away, and writing the decision log line and the metrics record happen here, once for all doors.
The rules in force are read once when a request starts, so a reload never changes the rules a request started with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from scopegate.config import Config
from scopegate.errors import Reason, Rejection
from scopegate.gate import Credentials, Gate, Verdict, loggable_target, request_id
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.observability import Metrics, bound_logger
from scopegate.request import Headers, RequestFacts
from scopegate.responses import rejection
from scopegate.upstream import UpstreamPool
from scopegate.wire import encode_response

_LOGGED_PATH_MAX = 512
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the response

_log = structlog.get_logger("scopegate")


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A config with its compiled decision and its upstream: what a reload swaps in as one unit."""

    config: Config
    gate: Gate
    pool: UpstreamPool | None  # None when there is no upstream (a decision endpoint only)

    @classmethod
    def build(cls, config: Config, credentials: Credentials) -> Ruleset:
        pool = None
        if config.upstream is not None:
            pool = UpstreamPool(config.upstream, trust_forwarded=config.trust_forwarded_headers)
        return cls(config, Gate.of(config, credentials), pool)

    def retire(self) -> None:
        """Replaced by a reload: idle upstream connections close now, busy ones when their exchange ends."""
        if self.pool is not None:
            self.pool.close()


class FrontDoor:
    """An `http1.RequestHandler` that decides through the gate; subclasses say how requests arrive and leave."""

    def __init__(self, *, rules: Ruleset, metrics: Metrics) -> None:
        self.rules = rules  # replaced whole on reload; each request reads it once
        self._metrics = metrics
        self._pending: set[asyncio.Task[Verdict]] = set()  # verifications under way (tasks are weakly held)
        self.relog()

    def relog(self) -> None:
        """Bind the decision logger to the logging configuration in force (called after each reconfiguration)."""
        self._log = bound_logger()

    # --- what a door says ------------------------------------------------------------------------------------------

    def facts(self, request: IncomingRequest, rules: Ruleset) -> RequestFacts:
        """The request to decide about; a `Rejection` when the request does not say (decision endpoint)."""
        return request.facts

    def admit(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, rules: Ruleset, started: float
    ) -> None:
        """Act on a verdict that lets the request through; must end with `record` and `connection.finish`."""
        raise NotImplementedError

    # --- http1.RequestHandler ----------------------------------------------------------------------------------

    def handle(self, connection: ClientConnection, request: IncomingRequest) -> None:
        started = time.perf_counter()
        rules = self.rules
        self._metrics.inflight.inc()
        rid = request_id(request.facts.headers)
        try:
            try:
                facts = self.facts(request, rules)
            except Rejection as exc:
                verdict = Verdict(rid, request.method, loggable_target(request.facts.target))
                self._act(connection, request, verdict.refuse(exc.reason, exc.detail, exc.description), rules, started)
                return
            decided = rules.gate.decide(facts, rid)
            if isinstance(decided, Verdict):
                self._act(connection, request, decided, rules, started)
            else:
                self._verify_then_act(decided, connection, request, rules, started, rid)
        except Exception as exc:  # a bug of ours: answer it as one, never as the client's fault
            self._failed(connection, request, Verdict(rid, request.method), exc, started)

    def refuse(self, connection: ClientConnection, error: Rejection, method: str) -> None:
        """A request whose framing is broken: answered, logged and counted like any refusal, then closed."""
        started = time.perf_counter()
        verdict = Verdict(request_id(Headers()), method).refuse(
            error.reason, error.detail, error.description, error.status
        )
        self.send_rejection(connection, verdict, version="1.1", keep_alive=False, head_only=method == "HEAD")
        # Warning, not info: a flood of these is an attack or a broken client, worth an alert, not a traceback.
        self.record(verdict, verdict.status, started, None, counted_inflight=False, level="warning")

    async def stop(self) -> None:
        """Cancel verifications still under way (shutdown)."""
        for task in list(self._pending):
            task.cancel()

    # --- the request's way through -----------------------------------------------------------------------------

    def _verify_then_act(
        self,
        pending: Coroutine[Any, Any, Verdict],
        connection: ClientConnection,
        request: IncomingRequest,
        rules: Ruleset,
        started: float,
        rid: str,
    ) -> None:
        task = asyncio.ensure_future(pending)
        self._pending.add(task)

        def decided(finished: asyncio.Task[Verdict]) -> None:
            self._pending.discard(finished)
            if finished.cancelled():  # shutdown: nothing safe can be said, so cut
                self._metrics.inflight.dec()
                connection.cut()
                return
            failure = finished.exception()
            if failure is not None:
                self._failed(connection, request, Verdict(rid, request.method), failure, started)
                return
            verdict = finished.result()
            if connection.closed:
                verdict.detail = gone_detail(connection, verdict.detail)
                self.record(verdict, CLIENT_GONE, started, None)
                return
            try:
                self._act(connection, request, verdict, rules, started)
            except Exception as exc:
                self._failed(connection, request, verdict, exc, started)

        task.add_done_callback(decided)

    def _act(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, rules: Ruleset, started: float
    ) -> None:
        if verdict.forward:
            self.admit(connection, request, verdict, rules, started)
            return
        keep_alive = connection.reusable_after(request) and request.complete
        self.send_rejection(
            connection, verdict, version=request.version, keep_alive=keep_alive, head_only=request.method == "HEAD"
        )
        self.record(verdict, verdict.status, started, None)
        connection.finish(request, keep_alive=keep_alive)

    def _failed(
        self,
        connection: ClientConnection,
        request: IncomingRequest,
        verdict: Verdict,
        exc: BaseException,
        started: float,
    ) -> None:
        """An unexpected exception: logged with its traceback, answered 500 when nothing was sent yet, counted."""
        _log.error("internal_error", request_id=verdict.request_id, exc_info=exc)
        verdict.refuse(Reason.INTERNAL_ERROR, type(exc).__name__)
        if not verdict.path:
            verdict.path = loggable_target(request.facts.target)
        if not connection.closed:
            self.send_rejection(
                connection, verdict, version=request.version, keep_alive=False, head_only=request.method == "HEAD"
            )
        self.record(verdict, verdict.status, started, None, level="error")
        connection.finish(request, keep_alive=False)

    # --- how an outcome leaves ---------------------------------------------------------------------------------

    def send_rejection(
        self, connection: ClientConnection, verdict: Verdict, *, version: str, keep_alive: bool, head_only: bool
    ) -> None:
        shape = rejection(
            verdict.reason, verdict.description, required_scopes=verdict.required_scopes, status=verdict.status
        )
        headers = [*shape.headers.items(), ("X-Request-Id", verdict.request_id), *(verdict.cors or ())]
        connection.write(
            encode_response(
                shape.status, headers, shape.body, keep_alive=keep_alive, version=version, head_only=head_only
            )
        )

    def record(
        self,
        verdict: Verdict,
        status: int,
        started: float,
        upstream_seconds: float | None,
        *,
        counted_inflight: bool = True,
        level: str = "info",
    ) -> None:
        """The request's one decision log line and metrics record."""
        seconds = time.perf_counter() - started
        if counted_inflight:
            self._metrics.inflight.dec()
        self._metrics.meter(verdict.route_name).record(verdict.decision, verdict.reason, seconds, upstream_seconds)
        route = verdict.route
        extra = {}
        if route is not None and route.strip_prefix and verdict.forward:
            extra["forwarded_path"] = route.upstream_path(verdict.path)[:_LOGGED_PATH_MAX]
        (self._log.info if level == "info" else getattr(self._log, level))(
            "decision",
            **extra,
            route=verdict.route_name,
            decision=verdict.decision,
            reason=verdict.reason.value,
            detail=verdict.detail,
            status=status,
            method=verdict.method,
            path=verdict.path[:_LOGGED_PATH_MAX],
            sub=verdict.sub,
            client_id=verdict.client_id,
            organization_id=verdict.organization_id,
            duration_ms=round(seconds * 1000, 3),
            request_id=verdict.request_id,
        )


def gone_detail(connection: ClientConnection, otherwise: str) -> str:
    if connection.cut_at_shutdown:
        return "cut_at_shutdown"
    return "client_not_reading" if connection.cut_for_not_reading else otherwise
