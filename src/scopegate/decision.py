"""The decision endpoint's front door: an ingress asks about an original request; the answer is 200 or the rejection.

    ingress -> decision request (the original method and URI in headers) -> Gate.decide -> 200 + identity | rejection

ingress-nginx (`auth-url`) and nginx (`auth_request`) send `X-Original-Method` with `X-Original-URI` (path and
query) or `X-Original-URL` (a full URL); Traefik (`ForwardAuth`) and Caddy (`forward_auth`) send
`X-Forwarded-Method` with `X-Forwarded-Uri`; Envoy's `ext_authz` HTTP service sends the original method and path
as the decision request's own (behind an optional `path_prefix`, stripped here). The token and organization
header are the decision request's own headers, which the ingress copies from the client's request.

An allowed request gets 200 with an empty body and the identity headers the proxy port would forward, for the
ingress to copy upstream. A denied one gets exactly what the proxy port would answer. Nothing else differs: the
decision is the gate's, and its log line and metrics record are `FrontDoor`'s, the same as for proxied requests.
"""

from __future__ import annotations

from scopegate.bearer import is_identity_header
from scopegate.errors import BadRequest
from scopegate.frontdoor import FrontDoor, Ruleset
from scopegate.gate import Verdict
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.request import Headers, RequestFacts
from scopegate.rules import HTTP_METHODS
from scopegate.wire import encode_response

# (method header, URI headers in order of preference) per ingress family, tried in this order.
_ORIGINAL = (
    ("X-Original-Method", ("X-Original-URI", "X-Original-URL")),
    ("X-Forwarded-Method", ("X-Forwarded-Uri",)),
)
_METHODS = frozenset(HTTP_METHODS)
# Envoy's ext_authz removes these from the upstream request: the client's own `X-Auth-*` headers, which the
# identity headers it copies (`allowed_upstream_headers`) would otherwise only overwrite, never remove.
_ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"


def original_request(facts: RequestFacts, path_prefix: str) -> RequestFacts:
    """The request the ingress asks about; `BadRequest` when it is described by halves or twice."""
    headers = facts.headers
    for method_name, uri_names in _ORIGINAL:
        methods = headers.getall(method_name)
        uris = [(name, value) for name in uri_names for value in headers.getall(name)]
        if not methods and not uris:
            continue
        if not methods or not uris:
            given = method_name if methods else uris[0][0]
            missing = f"{' or '.join(uri_names)}" if methods else method_name
            raise BadRequest("half_original_request", f"{given} was sent without {missing}")
        if len(methods) > 1 or len({name for name, _ in uris}) < len(uris):
            raise BadRequest("several_original_requests", f"send exactly one {method_name} and one URI header")
        return RequestFacts(_method(methods[0]), uris[0][1], headers)
    return RequestFacts(facts.method, _without_prefix(facts.target, path_prefix), headers)


def _method(value: str) -> str:
    method = value.strip()
    if method not in _METHODS:
        raise BadRequest("bad_original_method", "the original method is not a known upper-case HTTP method")
    return method


def _without_prefix(target: str, prefix: str) -> str:
    if not prefix:
        return target
    if target == prefix or target.startswith((prefix + "/", prefix + "?")):
        rest = target[len(prefix) :]
        return rest if rest.startswith("/") else "/" + rest
    raise BadRequest("outside_decision_path_prefix", f"the decision request's path does not start with {prefix}")


def _client_identity_headers(headers: Headers) -> str:
    names = {name.decode("latin-1") for _, name, _ in headers.fields if is_identity_header(name.decode("latin-1"))}
    return ",".join(sorted(names))


class DecisionDoor(FrontDoor):
    """`http1.RequestHandler` for `decision_listen`."""

    def facts(self, request: IncomingRequest, rules: Ruleset) -> RequestFacts:
        return original_request(request.facts, rules.config.decision_path_prefix)

    def admit(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, rules: Ruleset, started: float
    ) -> None:
        keep_alive = connection.reusable_after(request) and request.complete
        headers = [("X-Request-Id", verdict.request_id), *verdict.identity]
        forged = _client_identity_headers(request.facts.headers)
        if forged:
            headers.append((_ENVOY_REMOVE, forged))
        connection.write(
            encode_response(
                200, headers, b"", keep_alive=keep_alive, version=request.version, head_only=request.method == "HEAD"
            )
        )
        self.record(verdict, 200, started, None)
        connection.finish(request, keep_alive=keep_alive)
