"""Path normalization, template compilation and matching, and the router's first-match-wins order."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scopegate.errors import BadPath, Reason
from scopegate.routing import (
    MAX_PATH_LENGTH,
    PathTemplate,
    RouteMatch,
    Router,
    TemplateError,
    compile_template,
    normalize_path,
)

# --- normalize_path: accepted paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("/", "/", id="root"),
        pytest.param("/api/reports/5", "/api/reports/5", id="plain"),
        pytest.param("/static/app.min.js", "/static/app.min.js", id="dots-inside-segment"),
        pytest.param("/a;b=c/d:e@f/!$&'()*+,=", "/a;b=c/d:e@f/!$&'()*+,=", id="sub-delims-kept-raw"),
        pytest.param("/api/", "/api/", id="trailing-slash-kept"),
        pytest.param("/.well-known/jwks.json", "/.well-known/jwks.json", id="dot-prefixed-segment"),
        pytest.param("/...", "/...", id="three-dots-is-a-name"),
        pytest.param("/%61%62%63", "/abc", id="unreserved-letters-decoded"),
        pytest.param("/%41%5a%30%2D%2e%5F%7e", "/AZ0-._~", id="unreserved-all-kinds-decoded"),
        pytest.param("/a%3ab", "/a%3Ab", id="reserved-escape-upper-cased"),
        pytest.param("/%c3%a9", "/%C3%A9", id="utf8-escape-upper-cased"),
        pytest.param("/%25", "/%25", id="percent-escape-kept"),
        pytest.param("/%252F", "/%252F", id="double-encoded-slash-is-not-a-slash"),
        pytest.param("//a///b//", "/a/b/", id="slashes-collapse"),
        pytest.param("/a/b/../c", "/a/c", id="dot-dot"),
        pytest.param("/a/./b", "/a/b", id="dot"),
        pytest.param("/a/.", "/a/", id="trailing-dot"),
        pytest.param("/a/..", "/", id="trailing-dot-dot-to-root"),
        pytest.param("/a/b/..", "/a/", id="trailing-dot-dot"),
        pytest.param("/.", "/", id="root-dot"),
        pytest.param("/a/%2e%2e/b", "/b", id="encoded-dot-dot-removed"),
        pytest.param("/a/%2E/b", "/a/b", id="encoded-dot-removed"),
        pytest.param("/a/.%2E/b", "/b", id="half-encoded-dot-dot-removed"),
        pytest.param("//a/./b//../%63", "/a/c", id="mixed"),
        pytest.param("/public;x/../admin", "/admin", id="parameters-on-a-normal-segment"),
        pytest.param("/caf\u00e9", "/caf%C3%A9", id="unicode-encoded"),
        pytest.param("/a b", "/a%20b", id="space-encoded"),
        pytest.param('/"{x}"', "/%22%7Bx%7D%22", id="quote-and-braces-encoded"),
        pytest.param("/a#b", "/a%23b", id="hash-encoded"),
        pytest.param("/\udcff", "/%FF", id="invalid-utf8-byte-back-to-escape"),
        pytest.param("/" + "a" * (MAX_PATH_LENGTH - 1), "/" + "a" * (MAX_PATH_LENGTH - 1), id="max-length"),
    ],
)
def test_normalize_path_accepts(raw: str, expected: str) -> None:
    """With path parameters allowed (`allow_path_parameters: true`); without, a `;` is refused, and only that."""
    assert normalize_path(raw, allow_parameters=True) == expected
    if ";" in raw:
        with pytest.raises(BadPath, match="path_parameters"):
            normalize_path(raw)
    else:
        assert normalize_path(raw) == expected


def test_normalize_path_returns_plain_path_unchanged() -> None:
    """The fast path hands back the very same object: nothing was rebuilt."""
    raw = "/api/v1/reports/42/"
    assert normalize_path(raw) is raw


# --- normalize_path: refused paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param("", "not_absolute", id="empty"),
        pytest.param("api/x", "not_absolute", id="relative"),
        pytest.param("http://h/x", "not_absolute", id="absolute-form"),
        pytest.param("*", "not_absolute", id="asterisk-form"),
        pytest.param("/..", "dot_dot_above_root", id="dot-dot-at-root"),
        pytest.param("/a/../..", "dot_dot_above_root", id="dot-dot-past-root"),
        pytest.param("/%2e%2e/x", "dot_dot_above_root", id="encoded-dot-dot-at-root"),
        pytest.param("/./../x", "dot_dot_above_root", id="dot-then-dot-dot"),
        pytest.param("/a%2Fb", "encoded_slash", id="encoded-slash-upper"),
        pytest.param("/a%2fb", "encoded_slash", id="encoded-slash-lower"),
        pytest.param("/a%5Cb", "encoded_backslash", id="encoded-backslash-upper"),
        pytest.param("/a%5cb", "encoded_backslash", id="encoded-backslash-lower"),
        pytest.param("/a\\b", "backslash", id="raw-backslash"),
        pytest.param("/a\x00b", "control_character", id="raw-nul"),
        pytest.param("/a\nb", "control_character", id="raw-newline"),
        pytest.param("/a\x7fb", "control_character", id="raw-del"),
        pytest.param("/a%00b", "encoded_control", id="encoded-nul"),
        pytest.param("/a%0ab", "encoded_control", id="encoded-newline"),
        pytest.param("/a%7Fb", "encoded_control", id="encoded-del"),
        pytest.param("/a%zz", "bad_percent_encoding", id="non-hex-escape"),
        pytest.param("/a%4", "bad_percent_encoding", id="truncated-escape"),
        pytest.param("/a%", "bad_percent_encoding", id="lone-percent"),
        pytest.param("/a%u002e", "bad_percent_encoding", id="iis-unicode-escape"),
        pytest.param("/public/..;/admin", "dot_segment_with_parameters", id="tomcat-dot-dot-semicolon"),
        pytest.param("/a/..;x/b", "dot_segment_with_parameters", id="dot-dot-with-parameter"),
        pytest.param("/a/.;x", "dot_segment_with_parameters", id="dot-with-parameter"),
        pytest.param("/a/.;jsessionid=1/b", "dot_segment_with_parameters", id="dot-with-session-id"),
        pytest.param("/a/%2e%2e;/b", "dot_segment_with_parameters", id="encoded-dot-dot-semicolon"),
        pytest.param("/a/..%3B/b", "dot_segment_with_parameters", id="dot-dot-encoded-semicolon"),
        pytest.param("/\ud800", "invalid_character", id="lone-surrogate"),
    ],
)
def test_normalize_path_refuses(raw: str, detail: str) -> None:
    """Refused even where path parameters are allowed."""
    with pytest.raises(BadPath) as caught:
        normalize_path(raw, allow_parameters=True)
    assert caught.value.detail == detail
    assert caught.value.status == 400
    assert caught.value.reason is Reason.BAD_PATH
    assert caught.value.description  # a sentence for the client, never empty


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("/admin;x/secret", id="tomcat-strips-it-to-admin-secret"),
        pytest.param("/admin%3Bx/secret", id="encoded"),
        pytest.param("/admin%3bx/secret", id="encoded-lower-case"),
        pytest.param("/a/b;", id="empty-parameter-last"),
        pytest.param("/a;jsessionid=1", id="session-id"),
        pytest.param("/a%2e;x/..", id="mixed-with-escapes"),
        pytest.param("/public/..;/admin", id="tomcat-dot-dot-semicolon"),
    ],
)
def test_path_parameters_are_refused_by_default(raw: str) -> None:
    """`/admin;x/secret` must not slip past `/admin/**` to a broader route that Tomcat would serve as /admin/secret."""
    with pytest.raises(BadPath) as caught:
        normalize_path(raw)
    assert (caught.value.detail, caught.value.status) == ("path_parameters", 400)
    assert "%3B" in caught.value.description


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("/" + "a" * MAX_PATH_LENGTH, id="one-over"),
        pytest.param("/" + "a" * 1_000_000, id="huge"),
        pytest.param("/" + "\\" * MAX_PATH_LENGTH, id="long-beats-other-problems"),
        pytest.param("/" + " " * (MAX_PATH_LENGTH // 3 + 1), id="too-long-once-encoded"),
    ],
)
def test_normalize_path_refuses_too_long_with_414(raw: str) -> None:
    with pytest.raises(BadPath) as caught:
        normalize_path(raw)
    assert caught.value.detail == "too_long"
    assert caught.value.status == 414


# --- normalize_path: properties -----------------------------------------------------------------------------

# Pieces that exercise every rule far more often than arbitrary text does.
_PIECES = st.sampled_from(
    [
        *("/", "//", ".", "..", "a", "B", ";", ";x", "~", "*", "{", ":", "@", " ", "\\", "\x00"),
        *("%", "%zz", "%2e", "%2E", "%2F", "%5c", "%41", "%3a", "%00", "%7e", "%25"),
        *("\u00e9", "\udcff"),
    ]
)
_HOSTILE_PATHS = st.one_of(
    st.lists(_PIECES, max_size=30).map("".join),
    st.text().map(lambda text: "/" + text),
    st.text(),
)
_DOT_SEGMENT = re.compile("(?:^|/)\\.{1,2}(?:/|$)")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _normalized_or_none(raw: str) -> str | None:
    try:
        return normalize_path(raw, allow_parameters=True)
    except BadPath:
        return None


@given(_HOSTILE_PATHS)
def test_by_default_no_accepted_path_has_parameters(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except BadPath:
        return
    assert ";" not in out
    assert "%3B" not in out.upper()


@given(_HOSTILE_PATHS)
@example("/a/%2e%2e/%2E/b/")
def test_normalized_path_is_canonical(raw: str) -> None:
    """Whatever is accepted is absolute, free of every ambiguity the proxy refuses, short enough and ASCII."""
    out = _normalized_or_none(raw)
    if out is None:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert not _DOT_SEGMENT.search(out)
    assert "%2F" not in out.upper()
    assert "%5C" not in out.upper()
    assert "\\" not in out
    assert not _CONTROL.search(out)
    assert out.isascii()
    assert len(out) <= MAX_PATH_LENGTH


@given(_HOSTILE_PATHS)
@example("/%c3%a9/%3a/../x y")
def test_normalize_path_is_idempotent(raw: str) -> None:
    """The upstream re-normalizing what it is sent must land on the same path the routes saw."""
    out = _normalized_or_none(raw)
    if out is not None:
        assert normalize_path(out, allow_parameters=True) == out


@given(_HOSTILE_PATHS)
def test_catch_all_template_matches_every_normalized_path(raw: str) -> None:
    out = _normalized_or_none(raw)
    if out is not None:
        assert compile_template("/**").match(out) == {}


_LITERAL_SEGMENT = st.text(alphabet="abcXYZ019-._~!$&'()+,;=:@", min_size=1, max_size=8).filter(
    lambda segment: segment.split(";", 1)[0] not in (".", "..")
)


@given(st.lists(_LITERAL_SEGMENT, min_size=1, max_size=6).map(lambda segments: "/" + "/".join(segments)))
def test_literal_template_matches_its_own_source(source: str) -> None:
    """A literal template is itself a normalized path, so a request for exactly it reaches the route."""
    template = compile_template(source)
    assert normalize_path(source, allow_parameters=True) == source
    assert template.match(source) == {}
    assert template.match(source + "/") == {}


# --- compile_template ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "param_names"),
    [
        pytest.param("/", (), id="root"),
        pytest.param("/**", (), id="catch-all"),
        pytest.param("/api", (), id="one-literal"),
        pytest.param("/api/v1/reports", (), id="literals"),
        pytest.param("/api/reports/{id}", ("id",), id="param"),
        pytest.param("/orgs/{org_id}/reports/{_id2}", ("org_id", "_id2"), id="params-in-order"),
        pytest.param("/static/**", (), id="rest"),
        pytest.param("/orgs/{org}/**", ("org",), id="param-then-rest"),
        pytest.param("/.well-known/openid-configuration", (), id="dot-prefixed-literal"),
        pytest.param("/a;v=1/b:c@d/~x_y-z.json", (), id="literal-sub-delims"),
    ],
)
def test_compile_template_accepts(source: str, param_names: tuple[str, ...]) -> None:
    template = compile_template(source)
    assert template.source == source
    assert template.param_names == param_names


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("", "must start with '/'", id="empty"),
        pytest.param("api/x", "must start with '/'", id="relative"),
        pytest.param("/api/", "write '/api'", id="trailing-slash"),
        pytest.param("/api//x", "empty segment ('//')", id="empty-segment"),
        pytest.param("//", "empty segment ('//')", id="double-slash-only"),
        pytest.param("/**/x", "whole last segment '**'", id="rest-not-last"),
        pytest.param("/a/**/**", "whole last segment '**'", id="rest-twice"),
        pytest.param("/a/*", "whole last segment '**'", id="single-star"),
        pytest.param("/a/x**", "whole last segment '**'", id="star-inside-segment"),
        pytest.param("/a/{id}.json", "either entirely literal or entirely one '{name}'", id="param-mixed"),
        pytest.param("/a/{a}{b}", "either entirely literal or entirely one '{name}'", id="two-params"),
        pytest.param("/a/{id", "either entirely literal or entirely one '{name}'", id="unclosed-brace"),
        pytest.param("/a/{}", "invalid parameter name ''", id="empty-param-name"),
        pytest.param("/a/{1id}", "invalid parameter name '1id'", id="param-name-starts-with-digit"),
        pytest.param("/a/{org-id}", "invalid parameter name 'org-id'", id="param-name-with-dash"),
        pytest.param("/{id}/x/{id}", "'{id}' appears twice", id="duplicate-param"),
        pytest.param("/a/./b", "dot segment", id="dot"),
        pytest.param("/a/..", "dot segment", id="dot-dot"),
        pytest.param("/a/..;x", "dot segment", id="dot-dot-with-parameters"),
        pytest.param("/a%20b", "percent-escapes are not allowed", id="percent"),
        pytest.param("/a b", "' ' is not allowed", id="space"),
        pytest.param("/a\tb", "'\\t' is not allowed", id="tab"),
        pytest.param("/a\\b", "'\\\\' is not allowed", id="backslash"),
        pytest.param("/caf\u00e9", "'\u00e9' is not allowed", id="non-ascii"),
        pytest.param('/a"b', "may use only letters, digits", id="quote-lists-allowed-characters"),
    ],
)
def test_compile_template_refuses(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source)
    assert message in str(caught.value)


# --- PathTemplate.match -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        pytest.param("/", "/", {}, id="root-matches-root"),
        pytest.param("/", "/x", None, id="root-matches-only-root"),
        pytest.param("/api/reports", "/api/reports", {}, id="literal"),
        pytest.param("/api/reports", "/api/reports/", {}, id="literal-trailing-slash-ignored"),
        pytest.param("/api/reports", "/api/reportsx", None, id="literal-no-prefix-match"),
        pytest.param("/api/reports", "/api/reports/1", None, id="literal-no-extra-segment"),
        pytest.param("/api", "/API", None, id="case-sensitive"),
        pytest.param("/API", "/api", None, id="case-sensitive-template"),
        pytest.param("/api/reports/{id}", "/api/reports/5", {"id": "5"}, id="param"),
        pytest.param("/api/reports/{id}", "/api/reports/5/", {"id": "5"}, id="param-trailing-slash"),
        pytest.param("/api/reports/{id}", "/api/reports/", None, id="param-not-empty"),
        pytest.param("/api/reports/{id}", "/api/reports", None, id="param-missing"),
        pytest.param("/api/reports/{id}", "/api/reports/5/6", None, id="param-one-segment-only"),
        pytest.param("/a/{x}", "/a/hello%20world", {"x": "hello world"}, id="param-decoded"),
        pytest.param("/a/{x}", "/a/%C3%A9", {"x": "\u00e9"}, id="param-decoded-utf8"),
        pytest.param("/a/{x}", "/a/%FF", {"x": "\ufffd"}, id="param-bad-utf8-replaced"),
        pytest.param("/o/{org}/r/{id}", "/o/acme/r/7", {"org": "acme", "id": "7"}, id="two-params"),
        pytest.param("/api/**", "/api", {}, id="rest-zero-segments"),
        pytest.param("/api/**", "/api/", {}, id="rest-trailing-slash"),
        pytest.param("/api/**", "/api/x", {}, id="rest-one-segment"),
        pytest.param("/api/**", "/api/x/y/z", {}, id="rest-many-segments"),
        pytest.param("/api/**", "/apix", None, id="rest-not-a-prefix-match"),
        pytest.param("/api/**", "/", None, id="rest-needs-its-prefix"),
        pytest.param("/**", "/", {}, id="catch-all-root"),
        pytest.param("/**", "/any/thing/", {}, id="catch-all-deep"),
        pytest.param("/o/{org}/**", "/o/acme/a/b", {"org": "acme"}, id="param-then-rest"),
        pytest.param("/o/{org}/**", "/o/acme", {"org": "acme"}, id="param-then-empty-rest"),
        pytest.param("/o/{org}/**", "/o/", None, id="param-then-rest-param-not-empty"),
    ],
)
def test_template_match(source: str, path: str, expected: dict[str, str] | None) -> None:
    assert compile_template(source).match(path) == expected


def test_templates_compare_by_source() -> None:
    assert compile_template("/a/{id}") == compile_template("/a/{id}")
    assert compile_template("/a/{id}") != compile_template("/a/{other}")


# --- Router -------------------------------------------------------------------------------------------------

_GET = frozenset({"GET"})
_WRITE = frozenset({"POST", "PUT"})


def _router(*entries: tuple[str, frozenset[str] | None, str]) -> Router[str]:
    compiled: list[tuple[PathTemplate, frozenset[str] | None, str]] = [
        (compile_template(source), methods, target) for source, methods, target in entries
    ]
    return Router(compiled)


_ROUTER = _router(
    ("/api/reports/{id}", _GET, "read-report"),
    ("/api/reports/{id}", _WRITE, "write-report"),
    ("/api/reports/export", None, "export"),  # shadowed by the two above for GET, POST and PUT
    ("/api/**", None, "api"),
    ("/health", _GET, "health"),
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param("GET", "/api/reports/5", RouteMatch("read-report", {"id": "5"}), id="get"),
        pytest.param("PUT", "/api/reports/5", RouteMatch("write-report", {"id": "5"}), id="other-method"),
        pytest.param("GET", "/api/reports/export", RouteMatch("read-report", {"id": "export"}), id="first"),
        pytest.param("DELETE", "/api/reports/5", RouteMatch("api", {}), id="method-filter-falls-through"),
        pytest.param("PATCH", "/api/reports/export", RouteMatch("export", {}), id="any-method"),
        pytest.param("GET", "/api", RouteMatch("api", {}), id="rest"),
        pytest.param("GET", "/health/", RouteMatch("health", {}), id="trailing-slash"),
        pytest.param("POST", "/health", None, id="no-method-match"),
        pytest.param("GET", "/other", None, id="no-path-match"),
        pytest.param("get", "/health", None, id="method-is-exact"),
    ],
)
def test_router_match(method: str, path: str, expected: RouteMatch[str] | None) -> None:
    assert _ROUTER.match(method, path) == expected


def test_empty_router_matches_nothing() -> None:
    assert _router().match("GET", "/") is None
