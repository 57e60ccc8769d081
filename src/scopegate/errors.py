"""Why a request ends the way it does, and what the client is told about it.

Every request ends with exactly one `Reason`. The reason is the `reason` field of the decision log, the `reason` label
of `scopegate_requests_total`, and — through `RESPONSES`, the one table in the project that maps failures to HTTP —
the status, the RFC 6750 error code and the `WWW-Authenticate` challenge of a rejection.

Stages report failures by raising a `Rejection` subclass (one class per failure kind); the pure policy stage returns
a `Decision` with a reason instead. Third-party exceptions (pyjwt, aiohttp, yaml) are translated at the stage that
meets them and never reach the pipeline.

    ScopegateError
    ├── ConfigError            the config file is invalid; carries every problem as "FILE:LINE: message"
    ├── JwksFetchError         discovery or the JWKS could not be fetched or parsed (cached keys keep serving)
    └── Rejection              a request is refused; `reason` says why, `detail` says the finer cause
        ├── BadPath            the path is ambiguous or hostile after normalization      -> 400 / 414
        ├── NoRoute            no route rule matches the method and path (default deny)  -> 404
        ├── BadRequest         the request is malformed (several Authorization headers)   -> 400
        ├── MissingOrganization the route needs an organization id the request lacks    -> 400
        ├── MissingToken       no bearer token                                           -> 401
        ├── InvalidToken       the token fails a syntax, signature or claim check        -> 401
        ├── JwksUnavailable    no signing keys were ever loaded                          -> 503
        ├── CorsOriginNotAllowed a CORS preflight from an origin not allowed              -> 403
        ├── Overloaded         more client connections open than the limit allows          -> 503
        ├── UpstreamError      the upstream could not be reached or broke off            -> 502
        └── UpstreamTimeout    the upstream did not answer in time                       -> 504
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


class Reason(enum.StrEnum):
    """The closed set of request outcomes; values are the contract's log and metric label values."""

    OK = "ok"
    PUBLIC = "public"
    MISSING_TOKEN = "missing_token"
    INVALID_TOKEN = "invalid_token"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ORGANIZATION = "wrong_organization"
    ORGANIZATION_TOKEN = "organization_token"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    CLAIM_MISMATCH = "claim_mismatch"
    MISSING_ORGANIZATION = "missing_organization"
    NO_ROUTE = "no_route"
    JWKS_UNAVAILABLE = "jwks_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    BAD_PATH = "bad_path"
    BAD_REQUEST = "bad_request"
    CORS_PREFLIGHT = "cors_preflight"  # answered by scopegate itself: 204 with the CORS headers
    CORS_ORIGIN = "cors_origin"  # a preflight from an origin the `cors` block does not allow
    OVERLOADED = "overloaded"  # more client connections than `limits.max_connections`
    INTERNAL_ERROR = "internal_error"  # a bug in scopegate: logged with its traceback, answered 500

    @property
    def allows(self) -> bool:
        return self in (Reason.OK, Reason.PUBLIC, Reason.CORS_PREFLIGHT)


class Challenge(enum.Enum):
    """Which `WWW-Authenticate` header a rejection carries (RFC 6750 section 3)."""

    NONE = enum.auto()  # no challenge header at all
    BARE = enum.auto()  # Bearer realm="scopegate" — no error code, the client sent no token
    INVALID_TOKEN = enum.auto()  # ... error="invalid_token", error_description="..."
    INSUFFICIENT_SCOPE = enum.auto()  # ... error="insufficient_scope", scope="..."


@dataclass(frozen=True, slots=True)
class Response:
    """What a rejection looks like on the wire."""

    status: int
    error: str  # the JSON body's "error" member
    challenge: Challenge
    description: str  # default "error_description" when the stage gives none


_INVALID_TOKEN = Response(401, "invalid_token", Challenge.INVALID_TOKEN, "the access token is invalid")
_FORBIDDEN = Response(403, "insufficient_scope", Challenge.INSUFFICIENT_SCOPE, "")

RESPONSES: dict[Reason, Response] = {
    Reason.MISSING_TOKEN: Response(401, "invalid_request", Challenge.BARE, "a bearer access token is required"),
    Reason.INVALID_TOKEN: _INVALID_TOKEN,
    Reason.WRONG_AUDIENCE: Response(
        401, "invalid_token", Challenge.INVALID_TOKEN, "the access token is not for this resource"
    ),
    Reason.WRONG_ORGANIZATION: _FORBIDDEN,
    Reason.ORGANIZATION_TOKEN: _FORBIDDEN,
    Reason.INSUFFICIENT_SCOPE: _FORBIDDEN,
    Reason.CLAIM_MISMATCH: _FORBIDDEN,
    Reason.MISSING_ORGANIZATION: Response(
        400, "invalid_request", Challenge.NONE, "the request carries no organization id"
    ),
    Reason.NO_ROUTE: Response(404, "no_route", Challenge.NONE, "no route matches this request"),
    Reason.JWKS_UNAVAILABLE: Response(
        503, "temporarily_unavailable", Challenge.NONE, "signing keys are not available yet"
    ),
    Reason.UPSTREAM_ERROR: Response(502, "bad_gateway", Challenge.NONE, "the upstream could not be reached"),
    Reason.UPSTREAM_TIMEOUT: Response(504, "gateway_timeout", Challenge.NONE, "the upstream did not answer in time"),
    Reason.BAD_PATH: Response(400, "invalid_request", Challenge.NONE, "the request path is ambiguous"),
    Reason.BAD_REQUEST: Response(400, "invalid_request", Challenge.NONE, "the request is malformed"),
    Reason.CORS_ORIGIN: Response(403, "origin_not_allowed", Challenge.NONE, "this origin may not call the API"),
    Reason.OVERLOADED: Response(
        503, "temporarily_unavailable", Challenge.NONE, "too many connections are open; retry later"
    ),
    Reason.INTERNAL_ERROR: Response(500, "server_error", Challenge.NONE, "scopegate failed to handle the request"),
}

# Seconds a client is asked to wait after a 503 for missing signing keys.
RETRY_AFTER_SECONDS = 5


class ScopegateError(Exception):
    """Base of every error scopegate raises on purpose."""


class ConfigError(ScopegateError):
    """The config file is invalid. `problems` holds every problem found, each as "FILE:LINE: message"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class JwksFetchError(ScopegateError):
    """Discovery or the JWKS could not be fetched or parsed. The key cache keeps its old keys when this happens."""


class Rejection(ScopegateError):
    """A request is refused. `detail` is a short, bounded cause for the log; `description` goes to the client."""

    reason: ClassVar[Reason]

    def __init__(self, detail: str, description: str | None = None, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.description = description or RESPONSES[self.reason].description
        self.status = status or RESPONSES[self.reason].status


class BadPath(Rejection):
    """The request path is ambiguous after normalization: encoded `/` or `\\`, raw `\\`, NUL, `..` above the root."""

    reason = Reason.BAD_PATH


class NoRoute(Rejection):
    """No route rule matches the request's method and normalized path: default deny."""

    reason = Reason.NO_ROUTE


class BadRequest(Rejection):
    """The request is malformed in a way that makes the token ambiguous (several Authorization headers)."""

    reason = Reason.BAD_REQUEST


class MissingOrganization(Rejection):
    """The route takes its organization id from the request, and the request has none (or several)."""

    reason = Reason.MISSING_ORGANIZATION


class MissingToken(Rejection):
    """No `Authorization: Bearer` token was sent (or another scheme was)."""

    reason = Reason.MISSING_TOKEN


class InvalidToken(Rejection):
    """The token fails a syntax, signature, key, algorithm or registered-claim check."""

    reason = Reason.INVALID_TOKEN


class JwksUnavailable(Rejection):
    """No signing keys have ever been loaded, so no token can be verified: fail closed."""

    reason = Reason.JWKS_UNAVAILABLE


class CorsOriginNotAllowed(Rejection):
    """A CORS preflight from an origin the `cors` block does not list."""

    reason = Reason.CORS_ORIGIN


class Overloaded(Rejection):
    """The connection would be one more than `limits.max_connections`: answered at once and closed."""

    reason = Reason.OVERLOADED


class UpstreamError(Rejection):
    """The upstream refused the connection, reset it, or sent a broken response."""

    reason = Reason.UPSTREAM_ERROR


class UpstreamTimeout(Rejection):
    """The upstream did not send response headers within `upstream_timeout_seconds`."""

    reason = Reason.UPSTREAM_TIMEOUT
