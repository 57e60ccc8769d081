"""Rejections: the JSON body and RFC 6750 challenge for a reason, built from `errors.RESPONSES`.

What is built here is the rejection itself, independent of the wire: the HTTP/1.1 front door encodes it
(`http1.encode_response`), and any other front door would encode the same status, headers and body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from scopegate.errors import RESPONSES, RETRY_AFTER_SECONDS, Challenge, Reason

REALM = "scopegate"
# Servers like aiohttp announce "Python/3.x aiohttp/3.y": version details for exactly the clients being refused.
SERVER_HEADER = "scopegate"


@dataclass(frozen=True, slots=True)
class RejectionResponse:
    """A refusal as status, headers and a JSON body."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers["Content-Type"]


def rejection(
    reason: Reason,
    description: str = "",
    *,
    required_scopes: tuple[str, ...] = (),
    status: int | None = None,
) -> RejectionResponse:
    """The response for a refused request: `{"error", "error_description"}` plus the reason's challenge."""
    shape = RESPONSES[reason]
    text = _quotable(description or shape.description)
    headers = {"Content-Type": "application/json"}
    challenge = _challenge(shape.challenge, text, required_scopes)
    if challenge:
        headers["WWW-Authenticate"] = challenge
    if reason is Reason.JWKS_UNAVAILABLE or reason is Reason.OVERLOADED:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    body = json.dumps({"error": shape.error, "error_description": text}).encode()
    return RejectionResponse(status or shape.status, body, headers)


def _challenge(kind: Challenge, description: str, scopes: tuple[str, ...]) -> str:
    if kind is Challenge.BARE:
        return f'Bearer realm="{REALM}"'
    if kind is Challenge.INVALID_TOKEN:
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
    if kind is Challenge.INSUFFICIENT_SCOPE:
        scope = f', scope="{_quotable(" ".join(scopes))}"' if scopes else ""  # config allows no quotes; be sure
        return f'Bearer realm="{REALM}", error="insufficient_scope"{scope}'
    return ""


def _quotable(text: str) -> str:
    """RFC 6750 error_description: visible ASCII except `"` and `\\` (it sits inside a quoted string)."""
    return "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "'" if ch == '"' else "?" for ch in text)
