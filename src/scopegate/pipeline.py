"""The proxy port's front door: an allowed request is forwarded to the upstream and its response relayed.

    http1 (framing) -> Gate.decide (the decision) -> Exchange (forward) | rejection -> one log line, one metrics record

How requests are decided and their outcomes recorded is `frontdoor.FrontDoor`'s, shared with the decision endpoint;
this module only says what "allowed" means on the proxy port.
"""

from __future__ import annotations

from scopegate.errors import Reason
from scopegate.frontdoor import CLIENT_GONE, FrontDoor, Ruleset, gone_detail
from scopegate.gate import Verdict
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.proxy import BROKEN_BY_CLIENT, BROKEN_BY_UPSTREAM, Exchange
from scopegate.wire import encode_response

__all__ = ["Pipeline", "Ruleset"]


class Pipeline(FrontDoor):
    """`http1.RequestHandler` for the proxy port."""

    def admit(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, rules: Ruleset, started: float
    ) -> None:
        if verdict.preflight:
            self._answer_preflight(connection, request, verdict, started)
            return
        assert rules.pool is not None, "the proxy port is served only with an upstream"
        timeout = rules.config.upstream_timeout_seconds
        Exchange(connection, request, verdict, rules.pool, timeout, lambda done: self._forwarded(done, started)).start()

    def _answer_preflight(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, started: float
    ) -> None:
        keep_alive = connection.reusable_after(request) and request.complete
        headers = [("X-Request-Id", verdict.request_id), *verdict.preflight]
        connection.write(
            encode_response(204, headers, b"", keep_alive=keep_alive, version=request.version, head_only=False)
        )
        self.record(verdict, 204, started, None)
        connection.finish(request, keep_alive=keep_alive)

    def _forwarded(self, exchange: Exchange, started: float) -> None:
        """The exchange is over: answer a failure before the response, log, then let the connection move on."""
        verdict, connection, request = exchange.verdict, exchange.client, exchange.request
        failure = exchange.failure
        keep_alive = exchange.keep_alive
        status = exchange.status
        if failure is not None:
            verdict.reason, verdict.detail = failure.reason, failure.detail
            verdict.description, verdict.status = failure.description, failure.status
            status = failure.status
            keep_alive = connection.reusable_after(request) and request.complete
            if not connection.closed:
                head_only = request.method == "HEAD"
                self.send_rejection(
                    connection, verdict, version=request.version, keep_alive=keep_alive, head_only=head_only
                )
            else:
                status = CLIENT_GONE
        elif exchange.broken_by == BROKEN_BY_UPSTREAM:
            verdict.reason, verdict.detail = Reason.UPSTREAM_ERROR, "upstream_broke_off_mid_body"
        elif exchange.broken_by == BROKEN_BY_CLIENT:
            verdict.detail = gone_detail(connection, "client_closed_mid_body")
            status = status or CLIENT_GONE
        self.record(verdict, status, started, exchange.upstream_seconds)
        connection.finish(request, keep_alive=keep_alive and not exchange.broken_by)
