"""Rejections on the wire: status, JSON body and the exact RFC 6750 `WWW-Authenticate` challenge per reason."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scopegate.errors import RESPONSES, RETRY_AFTER_SECONDS, Challenge, Reason
from scopegate.responses import RejectionResponse, rejection

# RFC 6750 section 3 with RFC 7235 quoted strings that need no escapes: no `"`, no `\\`, visible ASCII and space.
_CHALLENGE = re.compile(r'Bearer realm="scopegate"(, (error|error_description|scope)="[ !#-\[\]-~]*")*')
FORBIDDEN = (Reason.WRONG_ORGANIZATION, Reason.ORGANIZATION_TOKEN, Reason.INSUFFICIENT_SCOPE, Reason.CLAIM_MISMATCH)


def body(response: RejectionResponse) -> Any:
    return json.loads(response.body)


BARE = 'Bearer realm="scopegate"'
INVALID = f'{BARE}, error="invalid_token", error_description='
SCOPE = f'{BARE}, error="insufficient_scope"'


@pytest.mark.parametrize(
    ("reason", "status", "error", "challenge"),
    [
        pytest.param(Reason.MISSING_TOKEN, 401, "invalid_request", BARE, id="missing_token"),
        pytest.param(
            Reason.INVALID_TOKEN, 401, "invalid_token", f'{INVALID}"the access token is invalid"', id="invalid_token"
        ),
        pytest.param(
            Reason.WRONG_AUDIENCE,
            401,
            "invalid_token",
            f'{INVALID}"the access token is not for this resource"',
            id="wrong_audience",
        ),
        *(pytest.param(reason, 403, "insufficient_scope", SCOPE, id=reason) for reason in FORBIDDEN),
        pytest.param(Reason.MISSING_ORGANIZATION, 400, "invalid_request", None, id="missing_organization"),
        pytest.param(Reason.NO_ROUTE, 404, "no_route", None, id="no_route"),
        pytest.param(Reason.JWKS_UNAVAILABLE, 503, "temporarily_unavailable", None, id="jwks_unavailable"),
        pytest.param(Reason.UPSTREAM_ERROR, 502, "bad_gateway", None, id="upstream_error"),
        pytest.param(Reason.UPSTREAM_TIMEOUT, 504, "gateway_timeout", None, id="upstream_timeout"),
        pytest.param(Reason.BAD_PATH, 400, "invalid_request", None, id="bad_path"),
        pytest.param(Reason.BAD_REQUEST, 400, "invalid_request", None, id="bad_request"),
    ],
)
def test_rejection_for_each_reason(reason: Reason, status: int, error: str, challenge: str | None) -> None:
    response = rejection(reason)
    assert response.status == status
    assert response.content_type == "application/json"
    assert body(response) == {"error": error, "error_description": RESPONSES[reason].description}
    assert response.headers.get("WWW-Authenticate") == challenge
    assert ("Retry-After" in response.headers) is (reason is Reason.JWKS_UNAVAILABLE)


def test_every_rejecting_reason_has_a_response_and_allowing_ones_do_not() -> None:
    assert set(RESPONSES) == {reason for reason in Reason if not reason.allows}


def test_jwks_unavailable_asks_the_client_to_retry() -> None:
    response = rejection(Reason.JWKS_UNAVAILABLE)
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert RETRY_AFTER_SECONDS > 0


def test_description_replaces_the_default_in_body_and_challenge() -> None:
    response = rejection(Reason.INVALID_TOKEN, "the access token has expired")
    assert body(response) == {"error": "invalid_token", "error_description": "the access token has expired"}
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="scopegate", error="invalid_token", error_description="the access token has expired"'
    )


def test_missing_token_challenge_never_carries_an_error_code() -> None:
    response = rejection(Reason.MISSING_TOKEN, "use the Bearer authentication scheme")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="scopegate"'
    assert body(response)["error_description"] == "use the Bearer authentication scheme"


@pytest.mark.parametrize("reason", FORBIDDEN)
def test_forbidden_challenge_names_the_required_scopes(reason: Reason) -> None:
    response = rejection(reason, "the access token lacks scopes this route requires", required_scopes=("a", "b"))
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="scopegate", error="insufficient_scope", scope="a b"'
    assert body(response)["error_description"] == "the access token lacks scopes this route requires"


def test_required_scopes_are_ignored_where_no_scope_challenge_applies() -> None:
    assert rejection(Reason.INVALID_TOKEN, required_scopes=("a",)).headers["WWW-Authenticate"] == (
        'Bearer realm="scopegate", error="invalid_token", error_description="the access token is invalid"'
    )
    assert "WWW-Authenticate" not in rejection(Reason.NO_ROUTE, required_scopes=("a",)).headers


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        pytest.param(Reason.BAD_PATH, 414, id="uri-too-long"),
        pytest.param(Reason.INVALID_TOKEN, 401, id="same-as-default"),
    ],
)
def test_status_override(reason: Reason, status: int) -> None:
    response = rejection(reason, status=status)
    assert response.status == status
    assert body(response)["error"] == RESPONSES[reason].error


@pytest.mark.parametrize(
    ("description", "safe"),
    [
        pytest.param('say "hi"', "say 'hi'", id="double-quote"),
        pytest.param("a\\b", "a?b", id="backslash"),
        pytest.param("line\nbreak\r\n", "line?break??", id="newline"),
        pytest.param("tab\there", "tab?here", id="tab"),
        pytest.param("caf\u00e9", "caf?", id="non-ascii"),
        pytest.param("nul\x00", "nul?", id="nul"),
        pytest.param("del\x7f", "del?", id="del"),
        pytest.param("visible !#$%&'()*+,-./:;<=>?@[]^_`{|}~", "visible !#$%&'()*+,-./:;<=>?@[]^_`{|}~", id="kept"),
    ],
)
def test_description_is_made_safe_for_a_quoted_string(description: str, safe: str) -> None:
    response = rejection(Reason.INVALID_TOKEN, description)
    assert body(response)["error_description"] == safe
    assert response.headers["WWW-Authenticate"].endswith(f'error_description="{safe}"')


def test_scopes_are_made_safe_too() -> None:
    challenge = rejection(Reason.INSUFFICIENT_SCOPE, required_scopes=('a"b', "c\nd")).headers["WWW-Authenticate"]
    assert challenge == 'Bearer realm="scopegate", error="insufficient_scope", scope="a\'b c?d"'


@given(st.sampled_from(sorted(RESPONSES)), st.text(), st.lists(st.text(max_size=10), max_size=3))
@example(Reason.INVALID_TOKEN, '"\\"\r\n', [])
@example(Reason.INSUFFICIENT_SCOPE, "", ['"', "\n"])
def test_challenge_is_always_one_well_formed_header(reason: Reason, description: str, scopes: list[str]) -> None:
    response = rejection(reason, description, required_scopes=tuple(scopes))
    challenge = response.headers.get("WWW-Authenticate")
    if RESPONSES[reason].challenge is Challenge.NONE:
        assert challenge is None
    else:
        assert challenge is not None
        assert _CHALLENGE.fullmatch(challenge), challenge
    description_sent = body(response)["error_description"]
    assert all(" " <= ch <= "~" and ch not in '"\\' for ch in description_sent)
    assert len(description_sent) == len(description or RESPONSES[reason].description)
