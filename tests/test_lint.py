"""Lint: shadowing decided exactly on the template language, each warning's text and line, and `check`'s handling of
warnings (printed, failing only with --strict); unknown keys that look like known ones get a suggestion."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegate.config import parse_config
from scopegate.errors import ConfigError
from scopegate.routing import Router, compile_template
from scopegate.tools.lint import Kind, Shape, covers, lint, overlaps, uncovered

from conftest import ROOT

HEAD = """\
upstream: http://127.0.0.1:3000
auth: { issuer: https://tenant.logto.app/oidc }
routes:
"""  # routes start on line 4
API = "resource: https://api.example.com"


def routes(*lines: str) -> str:
    return HEAD + "".join(line + "\n" for line in lines)


def route(name: str, path: str, methods: str | None = None, extra: str = f"{API}, scopes: [s]") -> str:
    match = f'{{ path: "{path}"' + (f", methods: [{methods}]" if methods else "") + " }"
    return f"  - {{ name: {name}, match: {match}, {extra} }}"


def warnings_of(text: str) -> list[tuple[int, Kind, str]]:
    return [(w.line, w.kind, w.message) for w in lint(parse_config(text).routes)]


# --- the template language --------------------------------------------------------------------------------------

COVER_CASES = [
    # inner, outers, a path inner matches and no outer does (None: the outers together match all of inner's)
    pytest.param("/v1/admin/**", ["/v1/**"], None, id="catch-all-above-stricter-prefix"),
    pytest.param("/v1/projects/special", ["/v1/projects/{id}"], None, id="literal-after-param"),
    pytest.param("/v1/projects/{id}", ["/v1/projects/special"], "/v1/projects/x", id="param-after-literal"),
    pytest.param("/v1", ["/v1/**"], None, id="double-star-includes-nothing"),
    pytest.param("/v1/**", ["/v1/{x}/**"], "/v1", id="param-star-misses-the-bare-prefix"),
    pytest.param("/v1/**", ["/v1", "/v1/{x}/**"], None, id="union-covers-star"),
    pytest.param("/v1/**", ["/v1", "/v1/a/**"], "/v1/x", id="union-misses-other-segments"),
    pytest.param("/{a}/{b}", ["/x/{b}", "/{a}/y"], "/x1/x", id="two-literal-holes"),
    pytest.param("/{a}/{b}", ["/x/{b}", "/{a}/{c}"], None, id="param-covers-rest-of-holes"),
    pytest.param("/a/b", ["/a"], "/a/b", id="longer-not-covered-by-shorter"),
    pytest.param("/a", ["/a/b/**"], "/a", id="star-needs-its-prefix"),
    pytest.param("/", ["/**"], None, id="root-under-root-star"),
    pytest.param("/**", ["/"], "/x", id="root-star-not-under-root"),
    pytest.param("/**", ["/", "/{x}/**"], None, id="root-star-union"),
    pytest.param("/a/{x}/c", ["/a/b/c"], "/a/x/c", id="param-in-the-middle"),
    pytest.param("/a/b/c", ["/a/{x}/c", "/a/b/d"], None, id="one-of-several"),
    pytest.param("/a/b/**", ["/a/{x}"], "/a/b/x", id="fixed-length-misses-star"),
    pytest.param("/a/b/**", ["/a/{x}", "/a/{x}/{y}/**"], None, id="fixed-plus-star-union"),
    pytest.param("/a/{x}", ["/b/**"], "/a/x", id="disjoint"),
    pytest.param("/a/{x}", [], "/a/x", id="nothing-before"),
]  # fmt: skip


@pytest.mark.parametrize(("inner", "outers", "witness"), COVER_CASES)
def test_uncovered_finds_a_witness_or_proves_coverage(inner: str, outers: list[str], witness: str | None) -> None:
    assert uncovered(Shape.of(inner), [Shape.of(outer) for outer in outers]) == witness
    if witness is not None:
        assert _matches(inner, witness)
        assert not any(_matches(outer, witness) for outer in outers)


def test_covers_and_overlaps_on_shapes() -> None:
    assert covers(Shape.of("/v1/**"), Shape.of("/v1/admin/{x}"))
    assert not covers(Shape.of("/v1/admin/{x}"), Shape.of("/v1/**"))
    assert overlaps(Shape.of("/v1/{x}"), Shape.of("/{y}/admin"))
    assert not overlaps(Shape.of("/v1/{x}"), Shape.of("/v1/{x}/{y}"))
    assert overlaps(Shape.of("/v1/{x}/**"), Shape.of("/v1/a/b/c"))
    assert Shape.of("/a/{x}") == Shape.of("/a/{y}/"), "parameter names and a trailing '/' do not matter"


def _matches(template: str, path: str) -> bool:
    compiled = compile_template(template)
    return compiled.match(path) is not None


# Templates over a tiny alphabet, so every path that could tell them apart can be enumerated.
_SEGMENTS = st.sampled_from(["a", "b", "{p}"])
_TEMPLATES = st.builds(
    lambda segments, rest: "/" + "/".join([*(s.replace("{p}", f"{{p{i}}}") for i, s in enumerate(segments)),
                                         *(["**"] if rest else [])]),
    st.lists(_SEGMENTS, max_size=3),
    st.booleans(),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_TEMPLATES, st.lists(_TEMPLATES, max_size=4))
def test_uncovered_agrees_with_the_real_matcher_on_every_path(inner: str, outers: list[str]) -> None:
    """Brute force: every path of up to 5 segments over {a, b, c}, with and without a trailing '/', matched by the
    compiled regexes the router uses; `c` stands for every segment no template names."""
    inner_t, outer_ts = compile_template(inner), [compile_template(outer) for outer in outers]
    counterexamples = [
        path
        for length in range(6)
        for segments in itertools.product("abc", repeat=length)
        for path in {"/" + "/".join(segments), "/" + "/".join(segments) + "/" * bool(segments)}
        if inner_t.match(path) is not None and all(outer.match(path) is None for outer in outer_ts)
    ]
    witness = uncovered(Shape.of(inner), [Shape.of(outer) for outer in outers])
    assert (witness is None) == (not counterexamples), (witness, counterexamples[:3])
    if witness is not None:
        assert inner_t.match(witness) is not None
        assert all(outer.match(witness) is None for outer in outer_ts)
        assert inner_t.match(witness.rstrip("/") + "/") is not None


_METHOD_SETS = st.sampled_from([None, "GET", "GET, HEAD", "POST", "GET, POST", "HEAD, POST"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TEMPLATES, _METHOD_SETS), min_size=1, max_size=4))
def test_shadowed_routes_are_exactly_those_the_router_never_picks(specs: list[tuple[str, str | None]]) -> None:
    """The real Router, every method (PROPFIND for the ones no route lists) and every path over {a, b, c}: a route
    is `shadowed` exactly when no request reaches it, and a route listing methods is warned about (`partly-shadowed`,
    `same-path-other-requirements`) exactly when some of its methods never reach it."""
    rules = parse_config(routes(*(route(f"r{i}", path, methods) for i, (path, methods) in enumerate(specs)))).routes
    router = Router([(rule.template, rule.methods, index) for index, rule in enumerate(rules)])
    paths = ["/" + "/".join(segments) for length in range(6) for segments in itertools.product("abc", repeat=length)]
    reached: dict[int, set[str]] = {index: set() for index in range(len(rules))}
    for method in ("GET", "HEAD", "POST", "PROPFIND"):
        for path in paths:
            found = router.match(method, path)
            if found is not None:
                reached[found.target].add(method)
    kinds = {index: {w.kind for w in lint(rules) if w.line == rule.line} for index, rule in enumerate(rules)}
    for index, rule in enumerate(rules):
        assert (Kind.SHADOWED in kinds[index]) == (not reached[index]), (index, reached, kinds)
        if rule.methods is not None and reached[index]:
            partial = bool(kinds[index] & {Kind.PARTLY_SHADOWED, Kind.SAME_PATH_OTHER_REQUIREMENTS})
            assert partial == (reached[index] != rule.methods), (index, reached, kinds)


# --- the warnings -----------------------------------------------------------------------------------------------

LINT_CASES = [
    pytest.param(
        [route("v1", "/v1/**"), route("admin", "/v1/admin/**")],
        [(5, Kind.SHADOWED, "route 'admin' can never match: route 'v1' (line 4) matches every request it would")],
        id="catch-all-first",
    ),
    pytest.param(
        [route("project", "/v1/projects/{id}", "GET, HEAD"), route("special", "/v1/projects/special", "GET, HEAD")],
        [(5, Kind.SHADOWED, "route 'special' can never match: route 'project' (line 4)")],
        id="literal-after-param",
    ),
    pytest.param(
        [route("special", "/v1/projects/special", "GET, HEAD"), route("project", "/v1/projects/{id}", "GET, HEAD")],
        [],
        id="literal-before-param-is-fine",
    ),
    pytest.param(
        [route("reads", "/v1/**", "GET, HEAD"), route("admin", "/v1/admin/**", "GET, HEAD, POST")],
        [(5, Kind.PARTLY_SHADOWED, "route 'admin' never sees GET, HEAD: route 'reads' (line 4) matches every such")],
        id="shadowed-for-some-methods",
    ),
    pytest.param(
        [route("reads", "/v1/**", "GET, HEAD", "public: true"), route("admin", "/v1/admin/**")],
        [(5, Kind.PARTLY_SHADOWED, "route 'admin' never sees GET, HEAD: route 'reads' (line 4)")],
        id="public-reads-above-a-protected-subtree",
    ),
    pytest.param(
        [route("get", "/v1/a", "GET, HEAD"), route("post", "/v1/a", "POST"), route("rest", "/v1/**")],
        [],
        id="methods-split-then-catch-all",
    ),
    pytest.param(
        [route("get", "/v1/a", "GET, HEAD"), route("post", "/v1/a", "POST, PUT"),
         route("dead", "/v1/a", "PUT", "public: true")],
        [(6, Kind.SHADOWED, "route 'dead' can never match: route 'post' (line 5) matches every request it would, "
                            "with that route's `public`, `resource` and `scopes`")],
        id="same-path-all-methods-taken",
    ),
    pytest.param(
        [route("read", "/r/{id}", "GET, HEAD"), route("write", "/r/{x}", "GET, HEAD, PUT", f"{API}, scopes: [w]")],
        [(5, Kind.SAME_PATH_OTHER_REQUIREMENTS, "route 'write' has the same path as route 'read' (line 4), which "
              "comes first for GET, HEAD: those requests get that route's `scopes`, not this one's")],
        id="same-path-other-scopes",
    ),
    pytest.param(
        [route("read", "/r/{id}", "GET, HEAD"), route("again", "/r/{id}", "GET, HEAD, PUT")],
        [(5, Kind.PARTLY_SHADOWED, "route 'again' never sees GET, HEAD: route 'read' (line 4)")],
        id="same-path-same-requirements",
    ),
    pytest.param(
        [route("read", "/docs/**", "GET, HEAD", "public: true"), route("write", "/docs/**")],
        [],
        id="same-path-remaining-methods-on-purpose",
    ),
    pytest.param(
        [route("a", "/x/**", "GET, HEAD"), route("b", "/x/**", "POST"), route("all", "/x/{y}", "GET, HEAD, POST")],
        [(6, Kind.SHADOWED, "route 'all' can never match: routes 'a' (line 4), 'b' (line 5) together match")],
        id="shadowed-by-several",
    ),
    pytest.param(
        [route("one", "/x", "GET, HEAD"), route("two", "/x/{y}", "GET, HEAD"), route("all", "/x/**", "GET, HEAD")],
        [],
        id="star-still-matches-deeper-paths",
    ),
    pytest.param(
        [route("open", "/api/**", extra=API)],
        [(4, Kind.NO_SCOPES, "route 'open' is protected but requires no scope: any token for "
                             "https://api.example.com passes; add `scopes`")],
        id="protected-without-scopes",
    ),
    pytest.param(
        [route("org", "/orgs/{o}", extra="organization: { from: path, name: o }")],
        [(4, Kind.NO_SCOPES, "any organization token for the request's organization passes")],
        id="organization-without-scopes",
    ),
    pytest.param(
        [route("admins", "/admin/**", extra=f"{API}, claims: {{ roles: admin }}"),
         route("pub", "/p", extra="public: true")],
        [],
        id="claims-or-public-need-no-scopes",
    ),
    pytest.param(
        [route("get", "/r/{id}", "GET")],
        [(4, Kind.GET_WITHOUT_HEAD, "route 'get' allows GET but not HEAD, and no route takes `HEAD /r/x` (404)")],
        id="get-without-head",
    ),
    pytest.param(
        [route("get", "/r/{id}", "GET"), route("head", "/r/**", "HEAD")],
        [],
        id="head-taken-by-another-route",
    ),
    pytest.param(
        [route("get", "/r/**", "GET"), route("head", "/r/{id}", "HEAD")],
        [(4, Kind.GET_WITHOUT_HEAD, "no route takes `HEAD /r` (404)")],
        id="head-taken-for-some-paths-only",
    ),
    pytest.param(
        [route("get", "/r/{id}", "GET, HEAD"), route("any", "/r/{id}")],
        [],
        id="any-method-after-get-head",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "expected"), LINT_CASES)
def test_lint_warnings(lines: list[str], expected: list[tuple[int, Kind, str]]) -> None:
    found = warnings_of(routes(*lines))
    assert [(line, kind) for line, kind, _ in found] == [(line, kind) for line, kind, _ in expected], found
    for (_, _, message), (_, _, text) in zip(found, expected, strict=True):
        assert text in message


def test_warnings_name_the_breadcrumb_and_kind() -> None:
    (warning,) = lint(parse_config(routes(route("v1", "/v1/**"), route("admin", "/v1/admin"))).routes)
    assert warning.render("c.yaml") == (
        "c.yaml:5: warning: routes[1]: route 'admin' can never match: route 'v1' (line 4) matches every request it"
        " would [shadowed]"
    )
    (again,) = lint(
        parse_config(routes(route("v1", "/v1/**"), route("admin", "/v1/admin"))).routes, crumb="config.routes"
    )
    assert again.crumb == "config.routes[1]"


def test_a_route_written_over_several_lines_is_reported_where_it_starts() -> None:
    text = routes(
        route("v1", "/v1/**"),
        "  - name: admin",  # line 5
        "    match: { path: /v1/admin/**, methods: [GET, HEAD] }",
        f"    {API}",
        "    scopes: [s]",
    )
    assert [(line, kind) for line, kind, _ in warnings_of(text)] == [(5, Kind.SHADOWED)]


# --- `scopegate check` ------------------------------------------------------------------------------------------


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegate", "check", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_check_prints_warnings_after_the_ok_line_and_passes(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(routes(route("v1", "/v1/**", "GET, HEAD"), route("admin", "/v1/admin/**", "GET, HEAD")))
    done = check("--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    ok, warning = done.stdout.splitlines()
    assert ok.startswith(f"{config}: OK: 2 routes")
    assert ok.endswith("; 1 warning(s)")
    assert warning.startswith(f"{config}:5: warning: routes[1]: route 'admin' can never match: route 'v1' (line 4)")


def test_check_strict_fails_on_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(routes(route("get", "/r/{id}", "GET")))
    done = check("--strict", "--config", str(config))
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        f"{config}:4: warning: routes[0]: route 'get' allows GET but not HEAD, and no route takes `HEAD /r/x` (404);"
        " add HEAD [get-without-head]"
    ]
    assert done.stderr.strip() == f"{config}: 1 warning(s); --strict fails on warnings"


def test_check_strict_passes_a_clean_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(routes(route("get", "/r/{id}", "GET, HEAD")))
    done = check("--strict", "--config", str(config))
    assert done.returncode == 0, done.stdout
    assert done.stdout.count("\n") == 1
    assert "warning" not in done.stdout


def test_check_without_a_config_is_a_usage_error() -> None:
    done = check()
    assert done.returncode == 2
    assert "give --config FILE or --values FILE" in done.stderr


# --- unknown keys: still errors, now with a suggestion ------------------------------------------------------------

SUGGESTIONS = [
    pytest.param("    scope: [s]", "routes[0].scope: unknown key (did you mean 'scopes'?)", id="scope"),
    pytest.param("    resources: x", "routes[0].resources: unknown key (did you mean 'resource'?)", id="resources"),
    pytest.param("    Scopes: [s]", "routes[0].Scopes: unknown key (did you mean 'scopes'?)", id="case"),
    pytest.param("    forward-payload: true", "unknown key (did you mean 'forward_payload'?)", id="dash"),
    pytest.param("    audience: x", "routes[0].audience: unknown key (did you mean 'resource'?)", id="synonym"),
    pytest.param("    method: [GET]",
                 "routes[0].method: unknown key (did you mean 'methods'? it belongs under `match`)",
                 id="method-at-route-level"),
    pytest.param("    methods: [GET]", "routes[0].methods: unknown key here (it belongs under `match`)", id="moved"),
    pytest.param("    organisation: {from: path, name: x}", "unknown key (did you mean 'organization'?)",
                 id="spelling"),
    pytest.param("    frobnicate: 1", "routes[0].frobnicate: unknown key; expected one of name, match", id="no-guess"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message"), SUGGESTIONS)
def test_an_unknown_key_that_looks_like_a_known_one_gets_a_suggestion(line: str, message: str) -> None:
    text = routes("  - name: r", "    match: { path: /r }", f"    {API}", line)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("c.yaml"))
    (problem,) = caught.value.problems
    assert problem.startswith("c.yaml:7: "), problem
    assert message in problem


def test_a_suggestion_inside_match() -> None:
    text = routes("  - name: r", "    match: { path: /r, method: [GET] }", f"    {API}")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("c.yaml"))
    assert list(caught.value.problems) == [
        "c.yaml:5: routes[0].match.method: unknown key (did you mean 'methods'?); expected one of path, methods"
    ]


def test_an_organization_parameter_the_template_lacks_stays_an_error() -> None:
    text = routes(route("o", "/orgs/{org}", extra="organization: { from: path, name: org_id }"))
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("c.yaml"))
    assert list(caught.value.problems) == [
        "c.yaml:4: routes[0].organization.name: the path template has no parameter {org_id} (it has: org)"
    ]
