"""Rejections on the wire: the JSON body and RFC 6750 challenge for a reason, built from `errors.RESPONSES`."""

from __future__ import annotations

import json

from aiohttp import web

from scopegate.errors import RESPONSES, RETRY_AFTER_SECONDS, Challenge, Reason

REALM = "scopegate"
# aiohttp would announce "Python/3.x aiohttp/3.y": version details for exactly the clients being refused.
SERVER_HEADER = "scopegate"


def rejection(
    reason: Reason,
    description: str = "",
    *,
    required_scopes: tuple[str, ...] = (),
    status: int | None = None,
) -> web.Response:
    """The response for a refused request: `{"error", "error_description"}` plus the reason's challenge."""
    shape = RESPONSES[reason]
    text = _quotable(description or shape.description)
    response = web.Response(
        status=status or shape.status,
        body=json.dumps({"error": shape.error, "error_description": text}).encode(),
        content_type="application/json",
        headers={"Server": SERVER_HEADER},
    )
    challenge = _challenge(shape.challenge, text, required_scopes)
    if challenge:
        response.headers["WWW-Authenticate"] = challenge
    if reason is Reason.JWKS_UNAVAILABLE:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


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
