"""The decision endpoint's front door: an ingress asks about an original request; the answer is 200 or the rejection.

    ingress -> decision request (the original method and URI in headers) -> Gate.decide -> 200 + identity | rejection

ingress-nginx (`auth-url`) and nginx (`auth_request`) send `X-Original-Method` with `X-Original-URI` (path and
query) or `X-Original-URL` (a full URL); Traefik (`ForwardAuth`) and Caddy (`forward_auth`) send
`X-Forwarded-Method` with `X-Forwarded-Uri`; Envoy's `ext_authz` HTTP service sends the original method and path
as the decision request's own (behind an optional `path_prefix`, stripped here). The token and organization
header are the decision request's own headers, which the ingress copies from the client's request.

Those ingresses copy every other client header too, so a client can add a description of its own (an
`X-Original-URI: /public/x` beside ingress-nginx's `X-Original-URL`, or beside Traefik's `X-Forwarded-Uri`):
whichever descriptions are present must name the same method and target, else the request is a 400.

An allowed request gets 200 with an empty body and the identity headers the proxy port would forward, for the
ingress to copy upstream. A denied one gets exactly what the proxy port would answer. Nothing else differs: the
decision is the gate's, and its log line and metrics record are `FrontDoor`'s, the same as for proxied requests;
but for a path not in normal form, which the proxy port forwards normalized and an ingress forwards as it came, so
the decision endpoint refuses it (400 `bad_path`, `not_normalized`).
"""

from __future__ import annotations

import re

from scopegate.bearer import is_identity_header
from scopegate.errors import BadPath, BadRequest
from scopegate.frontdoor import FrontDoor, Ruleset
from scopegate.gate import Verdict, split_target
from scopegate.http1 import ClientConnection, IncomingRequest
from scopegate.request import Headers, RequestFacts
from scopegate.rules import HTTP_METHODS
from scopegate.wire import encode_response

# (method header, URI headers in order of preference) per ingress family. The first family present is decided
# about; any other present must describe the same request.
_ORIGINAL = (
    ("X-Original-Method", ("X-Original-URI", "X-Original-URL")),
    ("X-Forwarded-Method", ("X-Forwarded-Uri",)),
)
_METHODS = frozenset(HTTP_METHODS)
# X-Original-URL as ingress-nginx builds it, `$scheme://$http_host$request_uri`: the host is the client's Host header,
# so it is held to RFC 3986's authority characters, and the path must follow it: a `?` or `#` in the Host would
# otherwise move where the path starts (`http://x?/admin/y` read as the path `/` with a query).
_URL = re.compile(r"(?i:https?)://[A-Za-z0-9\-._~%!$&'()*+,;=:@\[\]]*(/.*)?", re.DOTALL)
# Envoy's ext_authz removes these from the upstream request: the client's own `X-Auth-*` headers that the identity
# headers it copies (`allowed_upstream_headers`) do not overwrite.
_ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"


def original_request(facts: RequestFacts, path_prefix: str) -> RequestFacts:
    """The request the ingress asks about, its target in origin form (path and query); `BadRequest` when it is
    described by halves, twice, or two ways.

    Ingresses pass the client's own headers on to the decision request (ingress-nginx, Traefik and Caddy all do),
    overwriting only the ones they set. A description the client added beside the ingress's must not choose what
    is decided, so every description present has to name the same method and target, whatever the family.
    """
    headers = facts.headers
    described = [found for found in (_described(headers, *family) for family in _ORIGINAL) if found is not None]
    if not described:
        own = _origin_form(facts.target, "the decision request's target")
        return RequestFacts(facts.method, _without_prefix(own, path_prefix), headers)
    if any(other != described[0] for other in described[1:]):
        raise BadRequest("conflicting_original_requests", "the original request is described in two ways")
    method, target = described[0]
    return RequestFacts(method, target, headers)


def _described(headers: Headers, method_name: str, uri_names: tuple[str, ...]) -> tuple[str, str] | None:
    """One family's (method, target), None when it is absent; its URI headers, when several, must agree."""
    methods = headers.getall(method_name)
    uris = [(name, value) for name in uri_names for value in headers.getall(name)]
    if not methods and not uris:
        return None
    if not methods or not uris:
        given = method_name if methods else uris[0][0]
        missing = f"{' or '.join(uri_names)}" if methods else method_name
        raise BadRequest("half_original_request", f"{given} was sent without {missing}")
    if len(methods) > 1 or len({name for name, _ in uris}) < len(uris):
        raise BadRequest("several_original_requests", f"send exactly one {method_name} and one URI header")
    targets = [_origin_form(value, name) for name, value in uris]
    if any(target != targets[0] for target in targets[1:]):
        raise BadRequest("conflicting_original_requests", f"{' and '.join(uri_names)} name different targets")
    return _method(methods[0]), targets[0]


def _origin_form(target: str, source: str) -> str:
    """The path and query of `target`: itself when it starts with `/`, else taken from an http(s) URL."""
    if target.startswith("/"):
        return target
    url = _URL.fullmatch(target)
    if url is None:
        raise BadRequest("bad_original_target", f"{source} is neither a path nor an http(s) URL with a path")
    return url.group(1) or "/"


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


def require_normal_form(target: str, *, allow_path_parameters: bool) -> None:
    """`BadPath` unless the path of `target` (origin form) is already what is decided about: its normal form.

    The proxy port forwards the normalized path, so what the upstream serves is what was decided. An ingress
    forwards the path as the client sent it: `/admin/x/../../public/y` would be allowed as `/public/y` and served
    by many upstreams as `/admin/...`, and nginx even sends `/admin/x#/../../public/y`, which they read as `/admin/x`.
    """
    try:
        path, _ = split_target(target, allow_path_parameters)
    except BadPath:
        return  # a hostile path: the gate refuses it, logged and answered as on the proxy port
    if path != target.partition("?")[0]:
        raise BadPath(
            "not_normalized",
            "the request path is not in normal form (dot segments, '//', '#' or needless percent-encoding)",
        )


def _client_identity_headers(headers: Headers, identity: tuple[tuple[str, str], ...]) -> str:
    """The client's own `X-Auth-*` names that no identity header overwrites, for Envoy to remove.

    Envoy sets the identity headers (`allowed_upstream_headers`, which overwrite a same-named header) before it
    removes the listed ones: a name scopegate sets itself must not be listed, or its own value would go too.
    """
    own = {name.lower().encode("latin-1") for name, _ in identity}
    names = {
        name.decode("latin-1")
        for lower, name, _ in headers.fields
        if lower not in own and is_identity_header(name.decode("latin-1"))
    }
    return ",".join(sorted(names))


class DecisionDoor(FrontDoor):
    """`http1.RequestHandler` for `decision_listen`."""

    def facts(self, request: IncomingRequest, rules: Ruleset) -> RequestFacts:
        original = original_request(request.facts, rules.config.decision_path_prefix)
        require_normal_form(original.target, allow_path_parameters=rules.config.allow_path_parameters)
        return original

    def admit(
        self, connection: ClientConnection, request: IncomingRequest, verdict: Verdict, rules: Ruleset, started: float
    ) -> None:
        keep_alive = connection.reusable_after(request) and request.complete
        headers = [("X-Request-Id", verdict.request_id), *verdict.identity]
        forged = _client_identity_headers(request.facts.headers, verdict.identity)
        if forged:
            headers.append((_ENVOY_REMOVE, forged))
        connection.write(
            encode_response(
                200, headers, b"", keep_alive=keep_alive, version=request.version, head_only=request.method == "HEAD"
            )
        )
        self.record(verdict, 200, started, None)
        connection.finish(request, keep_alive=keep_alive)
