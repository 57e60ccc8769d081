"""What the request claims: the bearer token (RFC 6750 section 2.1), the organization it names, identity headers."""

from __future__ import annotations

import operator
from urllib.parse import urlencode

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scopegate.bearer import bearer_token, find_token, is_identity_header, organization_id
from scopegate.errors import BadRequest, InvalidToken, MissingOrganization, MissingToken, Reason, Rejection
from scopegate.request import Headers, query_without
from scopegate.rules import OrganizationFrom, OrganizationSource, TokenFrom, TokenSource

JWT = "eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ1In0.c2ln"


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers.of(pairs)


# --- bearer_token ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        pytest.param(f"Bearer {JWT}", JWT, id="jwt"),
        pytest.param(f"bearer {JWT}", JWT, id="lower-case-scheme"),
        pytest.param(f"BEARER {JWT}", JWT, id="upper-case-scheme"),
        pytest.param("Bearer abc==", "abc==", id="padding"),
        pytest.param("Bearer a-b.c_d~e+f/g=", "a-b.c_d~e+f/g=", id="every-b64token-character"),
        pytest.param("Bearer  abc", "abc", id="extra-space-before-token"),
        pytest.param("Bearer abc  ", "abc", id="trailing-space"),
        pytest.param("  Bearer abc", "abc", id="leading-space"),
        pytest.param("Bearer abc\t", "abc", id="trailing-tab-is-header-whitespace"),
    ],
)
def test_bearer_token_accepted(value: str, token: str) -> None:
    assert bearer_token(headers(("Authorization", value))) == token


def test_authorization_header_name_is_case_insensitive() -> None:
    assert bearer_token(headers(("authorization", "Bearer abc"))) == "abc"


@pytest.mark.parametrize(
    ("sent", "detail"),
    [
        pytest.param((), "no_authorization_header", id="none"),
        pytest.param((("X-Authorization", "Bearer abc"),), "no_authorization_header", id="other-header"),
        pytest.param((("Authorization", "Basic dXNlcjpwYXNz"),), "not_bearer_scheme", id="basic"),
        pytest.param((("Authorization", "Basic x"),), "not_bearer_scheme", id="basic-x"),
        pytest.param((("Authorization", "Bearerabc"),), "not_bearer_scheme", id="no-space"),
        pytest.param((("Authorization", "Bearer\tabc"),), "not_bearer_scheme", id="tab-is-not-the-separator"),
        pytest.param((("Authorization", "Token abc"),), "not_bearer_scheme", id="token-scheme"),
        pytest.param((("Authorization", ""),), "not_bearer_scheme", id="empty-header"),
    ],
)
def test_missing_token(sent: tuple[tuple[str, str], ...], detail: str) -> None:
    with pytest.raises(MissingToken) as caught:
        bearer_token(headers(*sent))
    assert caught.value.detail == detail
    assert caught.value.reason is Reason.MISSING_TOKEN
    assert caught.value.status == 401


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param((("Authorization", "Bearer a"), ("Authorization", "Bearer b")), id="two-bearer"),
        pytest.param((("Authorization", "Bearer a"), ("authorization", "Bearer a")), id="same-token-twice"),
        pytest.param((("Authorization", "Basic x"), ("Authorization", "Bearer a")), id="basic-and-bearer"),
    ],
)
def test_several_authorization_headers_are_a_bad_request(sent: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadRequest) as caught:
        bearer_token(headers(*sent))
    assert caught.value.detail == "several_authorization_headers"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Bearer", id="scheme-only"),
        pytest.param("Bearer ", id="empty"),
        pytest.param("Bearer a b", id="two-tokens"),
        pytest.param('Bearer a"', id="quote"),
        pytest.param("Bearer a,b", id="comma"),
        pytest.param("Bearer =abc", id="padding-first"),
        pytest.param("Bearer ab=c", id="padding-inside"),
        pytest.param("Bearer a\\b", id="backslash"),
        pytest.param("Bearer \tabc", id="tab-before-token"),
        pytest.param("Bearer t\u00f6ken", id="non-ascii"),
        pytest.param("Bearer \uff41bc", id="fullwidth-letter"),
        pytest.param("Bearer abc\u0660", id="arabic-digit"),
    ],
)
def test_malformed_token_is_invalid(value: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        bearer_token(headers(("Authorization", value)))
    assert caught.value.detail == "malformed"
    assert caught.value.reason is Reason.INVALID_TOKEN


_AUTHORIZATION = st.one_of(
    st.text(),
    st.builds(
        operator.add,
        st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Bearer", "Basic ", " Bearer ", ""]),
        st.text(alphabet=st.sampled_from('AZaz09-._~+/= \t"\\,\x00\u00e9\u0660'), max_size=20),
    ),
)


@given(st.lists(_AUTHORIZATION, max_size=3))
@example(["Bearer \x00"])
@example(["Bearer \udcff"])
@example(["Bearer " + "a" * 100_000])
def test_any_authorization_value_gives_a_token_or_a_rejection(values: list[str]) -> None:
    sent = headers(*(("Authorization", value) for value in values))
    try:
        token, reason = bearer_token(sent), Reason.OK
    except Rejection as exc:
        token, reason = "", exc.reason
    if reason is not Reason.OK:
        assert reason in (Reason.MISSING_TOKEN, Reason.BAD_REQUEST, Reason.INVALID_TOKEN)
        return
    assert len(values) == 1
    assert token
    assert token.isascii()
    assert token in values[0]


# --- organization_id ------------------------------------------------------------------------------------------

PATH = OrganizationSource(source=OrganizationFrom.PATH, name="org_id")
HEADER = OrganizationSource(source=OrganizationFrom.HEADER, name="X-Organization-Id")
QUERY = OrganizationSource(source=OrganizationFrom.QUERY, name="org")


def org(
    source: OrganizationSource,
    *,
    params: dict[str, str] | None = None,
    sent: tuple[tuple[str, str], ...] = (),
    query: tuple[tuple[str, str], ...] = (),
) -> str:
    return organization_id(source, params or {}, headers(*sent), urlencode(query))


@pytest.mark.parametrize(
    ("source", "params", "sent", "query", "expected"),
    [
        pytest.param(PATH, {"org_id": "acme"}, (), (), "acme", id="path"),
        pytest.param(PATH, {"org_id": "a:b@c!~"}, (), (), "a:b@c!~", id="path-visible-ascii"),
        pytest.param(HEADER, {}, (("X-Organization-Id", "acme"),), (), "acme", id="header"),
        pytest.param(HEADER, {}, (("x-organization-id", "acme"),), (), "acme", id="header-any-case"),
        pytest.param(QUERY, {}, (), (("org", "acme"),), "acme", id="query"),
        pytest.param(QUERY, {}, (("org", "globex"),), (("org", "acme"),), "acme", id="query-not-header"),
        pytest.param(HEADER, {"X-Organization-Id": "globex"}, (("X-Organization-Id", "acme"),), (), "acme", id="hdr"),
        pytest.param(PATH, {"org_id": "x" * 256}, (), (), "x" * 256, id="longest"),
    ],
)
def test_organization_id_found(
    source: OrganizationSource,
    params: dict[str, str],
    sent: tuple[tuple[str, str], ...],
    query: tuple[tuple[str, str], ...],
    expected: str,
) -> None:
    assert org(source, params=params, sent=sent, query=query) == expected


@pytest.mark.parametrize(
    ("source", "params", "sent", "query", "detail"),
    [
        pytest.param(PATH, {}, (), (), "absent", id="path-absent"),
        pytest.param(PATH, {"other": "acme"}, (), (), "absent", id="path-other-param"),
        pytest.param(HEADER, {}, (), (), "absent", id="header-absent"),
        pytest.param(HEADER, {}, (), (("X-Organization-Id", "acme"),), "absent", id="header-not-query"),
        pytest.param(QUERY, {}, (), (), "absent", id="query-absent"),
        pytest.param(QUERY, {}, (), (("Org", "acme"),), "absent", id="query-name-is-case-sensitive"),
        pytest.param(
            HEADER, {}, (("X-Organization-Id", "acme"), ("x-organization-id", "acme")), (), "several", id="hdr-twice"
        ),
        pytest.param(QUERY, {}, (), (("org", "acme"), ("org", "globex")), "several", id="query-twice"),
        pytest.param(PATH, {"org_id": ""}, (), (), "invalid", id="empty"),
        pytest.param(PATH, {"org_id": "   "}, (), (), "invalid", id="whitespace-only"),
        pytest.param(HEADER, {}, (("X-Organization-Id", "\t"),), (), "invalid", id="tab-only"),
        pytest.param(QUERY, {}, (), (("org", ""),), "invalid", id="query-empty"),
        pytest.param(PATH, {"org_id": "acm\u00e9"}, (), (), "invalid", id="non-ascii"),
        pytest.param(PATH, {"org_id": "ac me"}, (), (), "invalid", id="inner-space"),
        pytest.param(PATH, {"org_id": " acme"}, (), (), "invalid", id="leading-space"),
        pytest.param(QUERY, {}, (), (("org", "acme "),), "invalid", id="trailing-space"),
        pytest.param(PATH, {"org_id": "acme\ufffd"}, (), (), "invalid", id="replacement-char"),
        pytest.param(PATH, {"org_id": "a\x00"}, (), (), "invalid", id="nul"),
        pytest.param(PATH, {"org_id": "x" * 257}, (), (), "invalid", id="too-long"),
    ],
)
def test_organization_id_refused(
    source: OrganizationSource,
    params: dict[str, str],
    sent: tuple[tuple[str, str], ...],
    query: tuple[tuple[str, str], ...],
    detail: str,
) -> None:
    with pytest.raises(MissingOrganization) as caught:
        org(source, params=params, sent=sent, query=query)
    assert caught.value.detail == detail
    assert caught.value.status == 400
    assert repr(source.name) in caught.value.description


@given(st.sampled_from([PATH, HEADER, QUERY]), st.lists(st.text(max_size=300), max_size=3))
def test_any_organization_value_gives_visible_ascii_or_a_rejection(
    source: OrganizationSource, values: list[str]
) -> None:
    pairs = tuple((source.name, value) for value in values)
    params = {source.name: values[0]} if values else {}
    try:
        found, detail = org(source, params=params, sent=pairs, query=pairs), ""
    except MissingOrganization as exc:
        found, detail = "", exc.detail
    if detail:
        assert detail in ("absent", "several", "invalid")
        return
    assert found == values[0]
    assert 1 <= len(found) <= 256
    assert all("!" <= ch <= "~" for ch in found)


# --- identity headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        pytest.param("X-Auth-Subject", True, id="canonical"),
        pytest.param("x-auth-organization-id", True, id="lower"),
        pytest.param("X-AUTH-SCOPES", True, id="upper"),
        pytest.param("x-Auth-", True, id="prefix-only"),
        pytest.param("X-Authorization", False, id="x-authorization"),
        pytest.param("Authorization", False, id="authorization"),
        pytest.param("X-Auth", False, id="no-dash"),
        pytest.param("X_Auth_Subject", True, id="underscores-read-as-dashes-by-cgi"),
        pytest.param("x-auth_subject", True, id="mixed-separators"),
        pytest.param("Y-X-Auth-Subject", False, id="not-a-prefix"),
    ],
)
def test_is_identity_header(name: str, identity: bool) -> None:
    assert is_identity_header(name) is identity


# --- token sources ----------------------------------------------------------------------------------------------

HEADER = TokenSource(TokenFrom.HEADER)
COOKIE = TokenSource(TokenFrom.COOKIE, "session")
QUERY = TokenSource(TokenFrom.QUERY, "access_token")


@pytest.mark.parametrize(
    ("sources", "sent", "query", "expected"),
    [
        pytest.param((HEADER, COOKIE), [("Authorization", "Bearer h")], "", ("h", HEADER), id="header"),
        pytest.param((HEADER, COOKIE), [("Cookie", "a=1; session=c; b=2")], "", ("c", COOKIE), id="cookie"),
        pytest.param((COOKIE,), [("Cookie", 'session="q"')], "", ("q", COOKIE), id="quoted-cookie"),
        pytest.param((HEADER, QUERY), [], "x=1&access_token=t", ("t", QUERY), id="query"),
        pytest.param(
            (HEADER, COOKIE), [("Authorization", "Basic eDp5"), ("Cookie", "session=c")], "", ("c", COOKIE),
            id="basic-auth-is-no-bearer-token",
        ),
        pytest.param((COOKIE,), [("Authorization", "Bearer h"), ("Cookie", "session=c")], "", ("c", COOKIE),
                     id="unlisted-header-is-ignored"),
        pytest.param((HEADER, COOKIE), [("Cookie", "sessionx=c")], "", MissingToken, id="other-cookie-name"),
        pytest.param((HEADER, QUERY), [], "token=t", MissingToken, id="other-parameter"),
        pytest.param(
            (HEADER, COOKIE), [("Authorization", "Bearer h"), ("Cookie", "session=c")], "", BadRequest,
            id="two-places",
        ),
        pytest.param((COOKIE,), [("Cookie", "session=a"), ("Cookie", "session=b")], "", BadRequest,
                     id="cookie-twice"),
        pytest.param((QUERY,), [], "access_token=a&access_token=b", BadRequest, id="parameter-twice"),
    ],
)  # fmt: skip
def test_find_token(
    sources: tuple[TokenSource, ...], sent: list[tuple[str, str]], query: str, expected: object
) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):  # type: ignore[call-overload]
            find_token(sources, headers(*sent), query)
    else:
        assert find_token(sources, headers(*sent), query) == expected


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("access_token=t", ""),
        ("a=1&access_token=t&b=%20x", "a=1&b=%20x"),
        ("access%5Ftoken=t&a=1", "a=1"),
        ("access_token_2=t", "access_token_2=t"),
        ("a=1;b=2", "a=1;b=2"),
    ],
)
def test_query_without_the_token_keeps_the_rest_byte_for_byte(query: str, kept: str) -> None:
    assert query_without(query, "access_token") == kept
