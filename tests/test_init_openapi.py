"""`scopegate init --from-openapi`: a config written from an OpenAPI 3 document.

First the pure pieces as tables (templates, names, security -> scopes, organizations, order, YAML text), then whole
documents — two real, published ones this project did not write (tests/data/openapi/README.md) and one written here
to cover every rule — whose output must pass `scopegate check`'s parser, put no route where it shadows a later one,
and decide requests through the proxy's own `Gate` as the documents say.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegate.bearer import check_format
from scopegate.config import Config, parse_config
from scopegate.errors import MissingToken, Reason
from scopegate.gate import Gate, Verdict, build_router
from scopegate.request import Headers, RequestFacts
from scopegate.routing import compile_template
from scopegate.rules import ScopeMode
from scopegate.tokens import Claims, claims_from_payload
from scopegate.tools import openapi
from scopegate.tools.openapi import Options, comments, generate, scalar
from scopegate.tools.openapi_document import Scheme, SpecError
from scopegate.tools.openapi_routes import (
    Route,
    label,
    order_routes,
    organization_param,
    param_name,
    route_name,
    to_template,
    unique_names,
)
from scopegate.tools.openapi_security import ANONYMOUS_TOO, NO_SECURITY, Requirement, requirement

DATA = Path(__file__).resolve().parent / "data" / "openapi"
SHOP_API = "https://api.shop.example"
XERO_API = "https://api.xero.com"
FORUM_API = "https://forum.example.com"

# --- templates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "base", "template", "broadened"),
    [
        pytest.param("/items", "", "/items", False, id="literal"),
        pytest.param("/items/{itemId}", "/v1", "/v1/items/{itemId}", False, id="param-under-base"),
        pytest.param("/", "", "/", False, id="root"),
        pytest.param("/", "/v1", "/v1", False, id="root-under-base"),
        pytest.param("/things/", "", "/things", False, id="trailing-slash-dropped"),
        pytest.param("/a//b", "", "/a/b", False, id="empty-segment-dropped"),
        pytest.param("/files/{name}.json", "", "/files/{name}", True, id="mixed-segment-broadened"),
        pytest.param("/r/{a}-{b}", "", "/r/{a}", True, id="two-params-in-one-segment"),
        pytest.param("/p/{item-id}", "", "/p/{item_id}", False, id="param-name-made-safe"),
        pytest.param("/p/{1st}", "", "/p/{_1st}", False, id="param-name-starting-with-digit"),
        pytest.param("/p/{a.b}/{a_b}", "", "/p/{a_b}/{a_b_2}", False, id="param-names-stay-unique"),
        pytest.param("/glob/**", "", "/glob/{segment2}", True, id="literal-double-star-is-never-a-catch-all"),
        pytest.param("/glob/*", "", "/glob/{segment2}", True, id="star"),
        pytest.param("/caf\u00e9", "", "/{segment1}", True, id="non-ascii-literal"),
        pytest.param("/a/%20b", "", "/a/{segment2}", True, id="percent-escape"),
        pytest.param("/a/./b", "", "/a/{segment2}/b", True, id="dot-segment"),
        pytest.param("/a;b=c/x", "", "/a;b=c/x", False, id="sub-delims-are-literal"),
    ],
)
def test_paths_become_templates(path: str, base: str, template: str, broadened: bool) -> None:
    converted = to_template(path, base)
    assert (converted.source, converted.broadened) == (template, broadened)
    compile_template(converted.source)  # never a template the config refuses
    if broadened:
        assert "broader than the operation" in converted.notes[0]


@pytest.mark.parametrize(
    ("original", "taken", "name"),
    [("id", (), "id"), ("user-id", (), "user_id"), ("9lives", (), "_9lives"), ("", (), "param"),
     ("id", ("id",), "id_2")],
)  # fmt: skip
def test_param_names(original: str, taken: tuple[str, ...], name: str) -> None:
    assert param_name(original, taken) == name


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation_id", "method", "path", "name"),
    [
        pytest.param("getEmployees", "GET", "/Employees", "getEmployees", id="operation-id"),
        pytest.param("projects/create v2", "POST", "/p", "projects-create-v2", id="made-label-safe"),
        pytest.param("Items_List.v1:all", "GET", "/i", "Items_List.v1:all", id="label-characters-kept"),
        pytest.param("__hidden", "GET", "/h", "hidden", id="starts-with-letter-or-digit"),
        pytest.param("", "GET", "/users/{user_id}/posts", "get-users-user_id-posts", id="from-method-and-path"),
        pytest.param("", "DELETE", "/", "delete-root", id="root-path"),
        pytest.param("/// ", "PUT", "/x/{a}.json", "put-x-a.json", id="nothing-left-of-the-id"),
        pytest.param("x" * 150, "GET", "/", "x" * 100, id="at-most-100"),
    ],
)
def test_route_names(operation_id: str, method: str, path: str, name: str) -> None:
    assert route_name(operation_id, method, path) == name
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", name)


def test_route_names_are_unique_and_the_first_use_keeps_its_name() -> None:
    assert unique_names(["a", "b", "a", "a-2", "a"]) == ["a", "b", "a-3", "a-2", "a-4"]
    long = "n" * 100
    assert unique_names([long, long]) == [long, "n" * 98 + "-2"]


def test_label_of_nothing_is_empty() -> None:
    assert label("-._:") == ""


# --- security -------------------------------------------------------------------------------------------------

SCHEMES = {
    "oauth": Scheme(name="oauth", kind="oauth2"),
    "oidc": Scheme(name="oidc", kind="openIdConnect"),
    "bearer": Scheme(name="bearer", kind="http bearer"),
    "key": Scheme(name="key", kind="apiKey"),
    "basic": Scheme(name="basic", kind="http basic"),
}
ALL, ANY = ScopeMode.ALL, ScopeMode.ANY


def alternatives(*each: dict[str, list[str]]) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]:
    return tuple(tuple((name, tuple(scopes)) for name, scopes in alternative.items()) for alternative in each)


@pytest.mark.parametrize(
    ("security", "public", "mode", "scopes", "note"),
    [
        pytest.param(None, False, ALL, (), NO_SECURITY, id="none-declared-stays-protected"),
        pytest.param((), True, ALL, (), None, id="empty-list-is-public"),
        pytest.param(alternatives({}), True, ALL, (), None, id="only-anonymous-is-public"),
        pytest.param(alternatives({"oauth": ["a"]}), False, ALL, ("a",), None, id="one-scope"),
        pytest.param(alternatives({"oauth": ["a", "b"]}), False, ALL, ("a", "b"), None, id="one-object-all-scopes"),
        pytest.param(alternatives({"oauth": ["a"]}, {"oauth": ["b"]}), False, ANY, ("a", "b"), None,
                     id="single-scope-alternatives-any"),
        pytest.param(alternatives({"oauth": ["a"]}, {"oidc": ["b"]}), False, ANY, ("a", "b"), None,
                     id="single-scope-alternatives-across-schemes"),
        pytest.param(alternatives({"oauth": ["a"]}, {"oauth": ["a"]}), False, ALL, ("a",), None,
                     id="the-same-scope-twice"),
        pytest.param(alternatives({"oauth": ["a", "b"]}, {"oauth": ["c"]}), False, ALL, ("a", "b"), "oauth [c]",
                     id="first-alternative-the-rest-named"),
        pytest.param(alternatives({"oauth": ["c"]}, {"oauth": ["a", "b"]}), False, ALL, ("c",), "oauth [a, b]",
                     id="first-alternative-even-when-single"),
        pytest.param(alternatives({"oauth": []}, {"oauth": ["a"]}), False, ALL, (), "oauth [a]",
                     id="an-alternative-without-scopes-admits-any-token"),
        pytest.param(alternatives({"oauth": ["a"], "oidc": ["b"]}), False, ALL, ("a", "b"), None,
                     id="two-schemes-in-one-object-all"),
        pytest.param(alternatives({"key": []}), False, ALL, (), "key (apiKey)", id="api-key-only-stays-protected"),
        pytest.param(alternatives({"basic": []}), False, ALL, (), "basic (http basic)", id="basic-only"),
        pytest.param(alternatives({"undefined": ["x"]}), False, ALL, (), "undefined (undefined)",
                     id="scheme-the-document-never-defines"),
        pytest.param(alternatives({"key": []}, {"oauth": ["a"]}), False, ALL, ("a",), "key (apiKey)",
                     id="api-key-alternative-left-out"),
        pytest.param(alternatives({"key": []}, {"oauth": ["a"]}, {"oauth": ["b"]}), False, ANY, ("a", "b"),
                     "key (apiKey)", id="single-scope-alternatives-beside-an-api-key"),
        pytest.param(alternatives({"oauth": ["a"], "key": []}), False, ALL, ("a",), "key (apiKey), required beside",
                     id="api-key-required-beside-the-token"),
        pytest.param(alternatives({"bearer": []}), False, ALL, (), None, id="http-bearer-is-a-token"),
        pytest.param(alternatives({}, {"oauth": ["a"]}), False, ALL, ("a",), ANONYMOUS_TOO,
                     id="anonymous-alternative-still-needs-a-token"),
        pytest.param(alternatives({"oauth": ["a b"]}, {"oauth": ["c"]}), False, ALL, ("c",), "oauth [a b]",
                     id="an-impossible-scope-is-no-alternative"),
    ],
)  # fmt: skip
def test_security_becomes_scopes(
    security: Any, public: bool, mode: ScopeMode, scopes: tuple[str, ...], note: str | None
) -> None:
    need = requirement(security, SCHEMES)
    assert (need.public, need.mode, need.scopes, need.left_out) == (public, mode, scopes, "")
    if note is None:
        assert not need.notes
    else:
        assert any(note in text for text in need.notes), need.notes


def test_a_route_never_admits_a_token_that_meets_no_alternative() -> None:
    """Exhaustively over small documents: every scope set the route admits satisfies some alternative."""
    scopes = ("a", "b", "c")
    pool = [alternatives(*rows) for rows in _small_securities(scopes)]
    for security in pool:
        need = requirement(security, SCHEMES)
        for held in _subsets(scopes):
            admitted = set(need.scopes) <= held if need.mode is ALL else bool(set(need.scopes) & held)
            satisfied = any({scope for _, listed in alt for scope in listed} <= held for alt in security if alt)
            assert not admitted or satisfied, (security, held, need)


def _small_securities(scopes: tuple[str, ...]) -> list[tuple[dict[str, list[str]], ...]]:
    singles = [{"oauth": list(subset)} for subset in _subsets(scopes, as_lists=True)]
    return [(first,) for first in singles] + [(first, second) for first in singles for second in singles]


def _subsets(items: tuple[str, ...], *, as_lists: bool = False) -> list[Any]:
    found: list[Any] = []
    for mask in range(1 << len(items)):
        chosen = [item for bit, item in enumerate(items) if mask >> bit & 1]
        found.append(chosen if as_lists else set(chosen))
    return found


def test_an_operation_whose_every_alternative_is_impossible_is_left_out() -> None:
    need = requirement(alternatives({"oauth": ['say "hi"']}), SCHEMES)
    assert "'say \"hi\"'" in need.left_out


def test_a_left_out_operation_is_a_comment_and_a_document_of_only_those_is_refused() -> None:
    spec = "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      security: [{oauth: ['a b']}]\n{extra}"
    schemes = "components: {securitySchemes: {oauth: {type: oauth2}}}\n"
    text = generate(spec.replace("{extra}", "  /b: {get: {security: []}}\n" + schemes), Options(resource=SHOP_API))
    assert "  # GET /a (openapi.yaml:4)\n  # left out: no token can hold the scope(s) 'a b'" in text
    assert [rule.name for rule in parse_config(text).routes] == ["get-b"]
    with pytest.raises(SpecError) as raised:
        generate(spec.replace("{extra}", schemes), Options(resource=SHOP_API))
    (problem,) = raised.value.problems
    assert problem.startswith("openapi.yaml:4: GET /a: no route: no token can hold the scope(s) 'a b'")


# --- organizations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "found"),
    [
        pytest.param("/orgs/{organizationId}/x", None, "organizationId", id="organizationId"),
        pytest.param("/orgs/{organization_id}/x", None, "organization_id", id="organization_id"),
        pytest.param("/orgs/{orgId}/x", None, "orgId", id="orgId"),
        pytest.param("/orgs/{org_id}/x", None, "org_id", id="org_id"),
        pytest.param("/orgs/{OrgID}/x", None, "OrgID", id="any-case"),
        pytest.param("/orgs/{organisation-id}/x", None, "organisation_id", id="british-and-a-dash"),
        pytest.param("/orgs/{org}/x", None, None, id="org-alone-is-not-an-id"),
        pytest.param("/orgs/{partnerOrgId}/x", None, None, id="another-org-id"),
        pytest.param("/tenants/{tenantId}/x", None, None, id="tenant-not-by-default"),
        pytest.param("/tenants/{tenantId}/x", "tenantId", "tenantId", id="organization-param"),
        pytest.param("/t/{tenant-id}/x", "tenant-id", "tenant_id", id="organization-param-as-documented"),
        pytest.param("/t/{orgId}/{tenantId}", "tenantId", "tenantId", id="organization-param-first"),
    ],
)
def test_organization_parameters(path: str, extra: str | None, found: str | None) -> None:
    assert organization_param(to_template(path), extra) == found


# --- order ----------------------------------------------------------------------------------------------------


def _route(path: str, method: str = "GET") -> Route:
    return Route(
        name=path, methods=(method,), template=to_template(path), requirement=Requirement(), organization=None,
        operations=(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("document", "ordered"),
    [
        pytest.param(["/items/{id}", "/items/special"], ["/items/special", "/items/{id}"], id="literal-first"),
        pytest.param(["/{a}/x", "/b/{c}"], ["/b/{c}", "/{a}/x"], id="first-differing-segment-decides"),
        pytest.param(["/b", "/a", "/b/{x}", "/a/{y}"], ["/b", "/b/{x}", "/a", "/a/{y}"],
                     id="literal-siblings-keep-the-document-order"),
        pytest.param(["/x/{a}/y", "/x/{b}/{c}", "/x/z/{d}"], ["/x/z/{d}", "/x/{a}/y", "/x/{b}/{c}"],
                     id="deeper-literal-first"),
        pytest.param(["/{a}", "/"], ["/", "/{a}"], id="root"),
    ],
)  # fmt: skip
def test_order_puts_literals_before_parameters(document: list[str], ordered: list[str]) -> None:
    assert [route.template.source for route in order_routes([_route(path) for path in document])] == ordered


def test_order_keeps_a_paths_methods_together_in_a_fixed_order() -> None:
    routes = [_route("/a", "DELETE"), _route("/b", "GET"), _route("/a", "GET"), _route("/a", "POST")]
    assert [(r.template.source, r.methods[0]) for r in order_routes(routes)] == [
        ("/a", "GET"), ("/a", "POST"), ("/a", "DELETE"), ("/b", "GET"),
    ]  # fmt: skip


# --- YAML text ------------------------------------------------------------------------------------------------


@given(st.text())
def test_every_string_reads_back_as_itself_in_block_and_flow_context(text: str) -> None:
    assert yaml.safe_load(f"k: {scalar(text)}") == {"k": text}
    assert yaml.safe_load(f"k: [{scalar(text)}, x]") == {"k": [text, "x"]}
    assert yaml.safe_load(f"k: {{ a: {scalar(text)} }}") == {"k": {"a": text}}


@given(st.text())
def test_a_comment_is_comment_lines_only(text: str) -> None:
    lines = comments(text, indent="  ")
    assert all(line.startswith("  #") for line in lines)
    assert all(len(line) <= 120 or " " not in line[4:] for line in lines)  # only an unbreakable word is longer
    assert yaml.safe_load("\n".join([*lines, "k: 1"])) == {"k": 1}


@pytest.mark.parametrize(
    ("text", "written"),
    [("read:report", "read:report"), ("https://api.example.com", "https://api.example.com"), ("yes", '"yes"'),
     ("No", '"No"'), ("null", '"null"'), ("a:", '"a:"'), ("1:20", '"1:20"'), ("a b", '"a b"'), ("#x", '"#x"'),
     ("\U0001f600", '"\\U0001F600"')],
)  # fmt: skip
def test_scalars_are_plain_only_when_that_is_safe(text: str, written: str) -> None:
    assert scalar(text) == written


# --- whole documents ------------------------------------------------------------------------------------------


@cache
def generated(name: str, resource: str, **options: str) -> tuple[str, Config]:
    text = (DATA / name).read_text(encoding="utf-8")
    config_text = generate(text, Options(resource=resource, source=name, **options))
    return config_text, parse_config(config_text)  # what `scopegate check` runs


class GivenClaims:
    """The real bearer extraction, then these claims instead of a verification (as in test_gate.py)."""

    def __init__(self, payload: Mapping[str, Any] | None) -> None:
        self._payload = payload

    def claims(self, token: str) -> Claims:
        check_format(token)
        if self._payload is None:
            raise MissingToken("no_authorization_header")
        return claims_from_payload(self._payload)


def decide(config: Config, method: str, target: str, payload: Mapping[str, Any] | None) -> Verdict:
    headers = Headers.of([("Authorization", "Bearer t")] if payload is not None else [])
    verdict = Gate(build_router(config), GivenClaims(payload)).decide(RequestFacts(method, target, headers), "rid")
    assert isinstance(verdict, Verdict), "claims at hand: the decision is synchronous"
    return verdict


def token(aud: str, *scopes: str, org: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": "u1", "client_id": "c1", "aud": aud, "scope": " ".join(scopes), "exp": 9e9}
    if org is not None:
        payload["organization_id"] = org
    return payload


def shadowed(config: Config) -> list[str]:
    """Every pair where an earlier route matches everything a later one would (for a method both take)."""
    found = []
    for index, earlier in enumerate(config.routes):
        template = compile_template(earlier.template.source)
        for later in config.routes[index + 1 :]:
            if earlier.methods is not None and later.methods is not None and not earlier.methods & later.methods:
                continue
            if template.match(sample_path(later.template.source)) is not None:
                found.append(f"{earlier.name} (line {earlier.line}) shadows {later.name} (line {later.line})")
    return found


def sample_path(template: str) -> str:
    """A path only `template` and templates containing it match: each parameter takes a value no literal has."""
    return re.sub(r"\{[^{}/]*\}", "zq-sample-value", template)


def test_the_shadowing_check_finds_a_shadowed_route() -> None:
    config = parse_config(
        "upstream: http://127.0.0.1:1\nauth: {issuer: https://i.example}\nroutes:\n"
        "  - {name: a, match: {path: '/a/{x}', methods: [GET]}, public: true}\n"
        "  - {name: b, match: {path: '/a/b', methods: [GET, POST]}, public: true}\n"
        "  - {name: c, match: {path: '/a/{y}', methods: [POST]}, public: true}\n"
    )
    assert shadowed(config) == ["a (line 4) shadows b (line 5)"]  # c takes POST, which a does not


def stands_for(config_text: str) -> dict[tuple[str, str], str]:
    """(method, document path) -> the route whose comment names that operation, read from the generated text."""
    found: dict[tuple[str, str], str] = {}
    pending: list[tuple[str, str]] = []
    for line in config_text.splitlines():
        operation = re.match(r"  # ([A-Z]+) (/\S*?)(?::| \(|$)", line)
        if operation:
            pending.append((operation.group(1), operation.group(2)))
        named = re.match(r"  - name: (\S+)", line)
        if named:
            found.update(dict.fromkeys(pending, named.group(1)))
            pending = []
    return found


def document_operations(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The document's operations, read independently of the generator: (METHOD, path, operation)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a safe loader either way
    loaded = yaml.load((DATA / name).read_text(encoding="utf-8"), Loader=loader)  # noqa: S506
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    return [
        (method.upper(), path, operation)
        for path, item in loaded["paths"].items()
        if isinstance(item, dict)
        for method, operation in item.items()
        if method in methods
    ]


def unwrapped(text: str) -> str:
    """The generated text with each wrapped comment on one line again."""
    return re.sub(r"\n *# (?![A-Z]+ /)", " ", text)


def request_path(prefix: str, path: str) -> str:
    return prefix + re.sub(r"\{[^{}]*\}", "abc123", path)


# --- any document ---------------------------------------------------------------------------------------------

_SEGMENTS = st.sampled_from(["a", "b", "{x}", "{y}", "{z}.json", "c.json"])
_DOCUMENT_PATH = st.lists(_SEGMENTS, min_size=1, max_size=3).map(lambda segments: "/" + "/".join(segments))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_DOCUMENT_PATH, min_size=1, max_size=12),
    st.lists(st.sampled_from(["get", "post"]), min_size=1, max_size=2, unique=True),
)
def test_no_document_makes_a_route_shadow_a_later_one(paths: list[str], methods: list[str]) -> None:
    document = {"openapi": "3.0.0", "paths": {path: {method: {} for method in methods} for path in paths}}
    config = parse_config(generate(json.dumps(document), Options(resource=SHOP_API)))
    assert shadowed(config) == []


_SCOPES = ("s1", "s2", "s3")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(_DOCUMENT_PATH, st.sets(st.sampled_from(_SCOPES))),
        min_size=1,
        max_size=10,
    )
)
def test_a_request_for_an_operation_never_passes_without_its_scopes(operations: list[tuple[str, set[str]]]) -> None:
    """Whichever route catches a request only one operation of the document serves (its own route, one merged with
    it, or a broadened one before it), a token lacking one of that operation's scopes is refused."""
    paths = {path: {"get": {"security": [{"oauth": sorted(scopes)}]}} for path, scopes in operations}
    document = {"openapi": "3.0.0", "components": {"securitySchemes": {"oauth": {"type": "oauth2"}}}, "paths": paths}
    config = parse_config(generate(json.dumps(document), Options(resource=SHOP_API)))
    patterns = {path: re.compile(re.sub(r"\\\{[^{}]*\\\}", "[^/]+", re.escape(path))) for path in paths}
    for target in {filled for path in paths for filled in _requests_for(path)}:
        serving = [path for path, pattern in patterns.items() if pattern.fullmatch(target)]
        if len(serving) != 1:
            continue  # the document itself is ambiguous about this request
        assert decide(config, "GET", target, token(SHOP_API, *_SCOPES)).reason is Reason.OK
        for missing in paths[serving[0]]["get"]["security"][0]["oauth"]:
            held = [scope for scope in _SCOPES if scope != missing]
            verdict = decide(config, "GET", target, token(SHOP_API, *held))
            assert verdict.reason is Reason.INSUFFICIENT_SCOPE, (target, serving, verdict.route_name)


def _requests_for(path: str) -> list[str]:
    """Requests for `path` with each parameter "v" or a literal the documents use (so they collide)."""
    targets = [""]
    for segment in path.split("/")[1:]:
        values = [re.sub(r"\{[^{}]*\}", value, segment) for value in ("v", "a", "b", "c")]
        targets = [f"{target}/{value}" for target in targets for value in dict.fromkeys(values)]
    return targets


# --- the real documents ---------------------------------------------------------------------------------------

XERO = "xero-payroll-nz.yaml"
DISCOURSE = "discourse.yml"


@pytest.mark.parametrize(("name", "resource", "operations"), [(XERO, XERO_API, 71), (DISCOURSE, FORUM_API, 93)])
def test_a_real_document_makes_a_config_check_accepts_with_no_route_shadowed(
    name: str, resource: str, operations: int
) -> None:
    text, config = generated(name, resource)
    assert len(document_operations(name)) == operations
    assert f"{operations} operations" in unwrapped(text).splitlines()[0]
    assert shadowed(config) == []
    assert set(stands_for(text)) == {(method, path) for method, path, _ in document_operations(name)}
    assert all(rule.resource == resource and not rule.public for rule in config.routes)


def test_xero_every_operation_is_decided_by_its_own_scopes() -> None:
    text, config = generated(XERO, XERO_API)
    routes = stands_for(text)
    for method, path, operation in document_operations(XERO):
        (requirement_object,) = operation["security"]  # Xero: one requirement object per operation
        scopes = requirement_object["OAuth2"]
        target = request_path("/payroll.xro/2.0", path)
        allowed = decide(config, method, target, token(XERO_API, *scopes))
        assert (allowed.reason, allowed.route_name) == (Reason.OK, operation["operationId"]), (method, path)
        assert routes[(method, path)] == operation["operationId"]
        for missing in scopes:
            fewer = [scope for scope in scopes if scope != missing]
            assert decide(config, method, target, token(XERO_API, *fewer)).reason is Reason.INSUFFICIENT_SCOPE
        assert decide(config, method, target, None).reason is Reason.MISSING_TOKEN
        assert decide(config, method, target, token("https://other.example", *scopes)).reason is Reason.WRONG_AUDIENCE
        assert decide(config, method, target, token(XERO_API, *scopes, org="o1")).status == 403


@pytest.mark.parametrize(
    ("method", "target", "scopes", "reason", "route"),
    [
        pytest.param("GET", "/payroll.xro/2.0/Employees", ["payroll.employees", "payroll.employees.read"], Reason.OK,
                     "getEmployees", id="read-with-both-scopes-of-its-one-requirement-object"),
        pytest.param("HEAD", "/payroll.xro/2.0/Employees", ["payroll.employees", "payroll.employees.read"], Reason.OK,
                     "getEmployees", id="head-like-get"),
        pytest.param("GET", "/payroll.xro/2.0/Employees", ["payroll.employees.read"], Reason.INSUFFICIENT_SCOPE,
                     "getEmployees", id="one-of-two-is-not-enough"),
        pytest.param("POST", "/payroll.xro/2.0/Employees", ["payroll.employees"], Reason.OK, "createEmployee",
                     id="write"),
        pytest.param("GET", "/Employees", ["payroll.employees", "payroll.employees.read"], Reason.NO_ROUTE, "",
                     id="without-the-server-path-no-route"),
        pytest.param("PATCH", "/payroll.xro/2.0/Employees", ["payroll.employees"], Reason.NO_ROUTE, "",
                     id="undocumented-method-no-route"),
    ],
)  # fmt: skip
def test_xero_samples(method: str, target: str, scopes: list[str], reason: Reason, route: str) -> None:
    _, config = generated(XERO, XERO_API)
    verdict = decide(config, method, target, token(XERO_API, *scopes))
    assert (verdict.reason, verdict.route_name) == (reason, route)


def test_discourse_every_operation_reaches_a_route_that_stands_for_it_or_overlaps_it() -> None:
    text, config = generated(DISCOURSE, FORUM_API)
    routes = stands_for(text)
    by_name = {rule.name: rule for rule in config.routes}
    for method, path, _ in document_operations(DISCOURSE):
        target = request_path("", path)
        verdict = decide(config, method, target, token(FORUM_API))
        assert verdict.reason is Reason.OK, (method, path)
        own = by_name[routes[(method, path)]]
        if verdict.route_name != own.name:  # an earlier route also matches: it must require at least as much
            assert set(own.scopes.scopes) <= set(verdict.required_scopes), (method, path, verdict.route_name)
        assert decide(config, method, target, None).reason is Reason.MISSING_TOKEN
        assert decide(config, method, target, token("https://other.example")).reason is Reason.WRONG_AUDIENCE


def test_discourse_mixed_segments_are_broadened_with_a_comment() -> None:
    text, config = generated(DISCOURSE, FORUM_API)
    flat = unwrapped(text)
    assert "Paths are the document's own, with no prefix (the first server URL https://discourse.example.com)." in flat
    assert "The document declares no security at all" in flat
    mixed = [path for _, path, _ in document_operations(DISCOURSE) if re.search(r"[^/]\{|\}[^/]", path)]
    assert len(mixed) > 20
    assert flat.count("mixes a parameter with text") == len(mixed)
    broadened = [rule for rule in config.routes if rule.name == "getTopic"]
    assert [rule.template.source for rule in broadened] == ["/t/{id}"]


# --- the document written for these tests ---------------------------------------------------------------------

SHOP = "shop.yaml"


def shop(**options: str) -> tuple[str, Config]:
    return generated(SHOP, SHOP_API, issuer="https://shop.logto.app/oidc", **options)


def shop_route(name: str, **options: str) -> Any:
    (rule,) = [rule for rule in shop(**options)[1].routes if rule.name == name]
    return rule


@pytest.mark.parametrize(
    ("name", "template", "methods", "scopes"),
    [
        pytest.param("listItems", "/v1/items", {"GET", "HEAD"}, ("all", ["read:items"]),
                     id="document-security-server-variable-default"),
        pytest.param("createItem", "/v1/items", {"POST"}, ("all", ["write:items"]), id="operation-security"),
        pytest.param("get-items-itemId", "/v1/items/{itemId}", {"GET", "HEAD"}, ("all", ["read:items"]),
                     id="name-without-operation-id"),
        pytest.param("deleteItem", "/v1/items/{itemId}", {"DELETE"}, ("any", ["delete:items", "admin"]),
                     id="single-scope-alternatives"),
        pytest.param("replaceItem", "/v1/items/{itemId}", {"PUT"}, ("all", ["write:items", "audit"]),
                     id="first-alternative"),
        pytest.param("health", "/v1/health", {"GET", "HEAD"}, None, id="public"),
        pytest.param("getFileJson", "/v1/files/{name}", {"GET", "HEAD"},
                     ("all", ["read:files", "read:meta", "latest:read"]), id="broadened-merged-strengthened"),
        pytest.param("deleteFile", "/v1/files/{fileId}", {"DELETE"}, ("all", ["delete:files"]),
                     id="same-template-other-method"),
        pytest.param("globLiteral", "/v1/glob/{segment3}", {"GET", "HEAD"}, ("all", ["read:items", "latest:read"]),
                     id="double-star-literal"),
        pytest.param("legacy", "/v1/legacy", {"GET", "HEAD"}, ("all", []), id="api-key-protected"),
        pytest.param("export", "/v1/export", {"GET", "HEAD"}, ("all", ["export"]), id="api-key-or-oauth"),
        pytest.param("me", "/v1/me", {"GET", "HEAD"}, ("all", ["profile"]), id="openid-connect"),
        pytest.param("tokens", "/v1/tokens", {"GET", "HEAD"}, ("all", []), id="http-bearer"),
        pytest.param("projects-create-v2", "/v1/organizations/{organization_id}/projects/{project_id}", {"POST"},
                     ("all", ["write:projects"]), id="label-safe-name-and-param"),
        pytest.param("listThings", "/v1/things", {"GET", "HEAD"}, ("all", ["read:items"]), id="trailing-slash"),
        pytest.param("dup-2", "/v1/dup-b", {"GET", "HEAD"}, ("all", ["read:items"]), id="duplicate-operation-id"),
        pytest.param("upload", "/u/uploads", {"POST"}, ("all", ["write:uploads"]), id="path-item-servers"),
        pytest.param("getAlias", "/v1/aliases/{aliasId}", {"GET", "HEAD"}, ("all", ["read:items"]),
                     id="path-item-ref"),
    ],
)  # fmt: skip
def test_shop_routes(name: str, template: str, methods: set[str], scopes: tuple[str, list[str]] | None) -> None:
    rule = shop_route(name)
    assert (rule.template.source, rule.methods) == (template, methods)
    if scopes is None:
        assert (rule.public, rule.resource) == (True, None)
    else:
        assert (rule.resource, rule.scopes.mode.value, list(rule.scopes.scopes)) == (SHOP_API, *scopes)


def test_shop_config_is_ordered_commented_and_complete() -> None:
    text, config = shop()
    assert shadowed(config) == []
    names = [rule.name for rule in config.routes]
    assert names.index("specialItems") < names.index("get-items-itemId")  # the literal sibling moved up
    assert names.index("yearReport") < names.index("latestOfKind")
    assert "x-internal-note" not in text
    assert (config.auth.issuer, config.upstream) == ("https://shop.logto.app/oidc", openapi.PLACEHOLDER_UPSTREAM)
    operations = document_operations(SHOP)
    by_ref = {("GET", "/aliases/{aliasId}")}  # a path item by $ref, which this test's own reading does not follow
    assert set(stands_for(text)) == {(method, path) for method, path, _ in operations} | by_ref
    for method, path, operation in operations:
        summary = operation.get("summary")
        if summary:
            assert f"  # {method} {path}: {summary}" in unwrapped(text)
    assert "  # GET /me: OpenID Connect scopes. (shop.yaml:" in text  # a description's first line stands in
    assert "not required here, so a call meeting only these is refused: oauth [admin]" in unwrapped(text)
    assert "scopegate cannot check api_key (apiKey)" in text


def test_shop_organization_routes() -> None:
    assert shop_route("orgMembers").organization.name == "orgId"
    assert shop_route("projects-create-v2").organization.name == "organization_id"
    assert shop_route("tenantSettings").organization is None
    tenant = shop_route("tenantSettings", organization_param="tenantId")
    organization = tenant.organization
    assert (organization.source.value, organization.name, tenant.resource) == ("path", "tenantId", SHOP_API)


@pytest.mark.parametrize(
    ("method", "target", "payload", "reason", "route"),
    [
        pytest.param("GET", "/v1/items", token(SHOP_API, "read:items"), Reason.OK, "listItems", id="allowed"),
        pytest.param("GET", "/v1/items", token(SHOP_API), Reason.INSUFFICIENT_SCOPE, "listItems", id="no-scope"),
        pytest.param("GET", "/v1/items", None, Reason.MISSING_TOKEN, "listItems", id="no-token"),
        pytest.param("GET", "/v1/items", token("https://other", "read:items"), Reason.WRONG_AUDIENCE, "listItems",
                     id="other-resource"),
        pytest.param("GET", "/v1/items/special", token(SHOP_API, "read:items"), Reason.OK, "specialItems",
                     id="literal-before-param"),
        pytest.param("DELETE", "/v1/items/7", token(SHOP_API, "admin"), Reason.OK, "deleteItem", id="any-admin"),
        pytest.param("DELETE", "/v1/items/7", token(SHOP_API, "delete:items"), Reason.OK, "deleteItem",
                     id="any-delete"),
        pytest.param("DELETE", "/v1/items/7", token(SHOP_API, "read:items"), Reason.INSUFFICIENT_SCOPE, "deleteItem",
                     id="any-neither"),
        pytest.param("PUT", "/v1/items/7", token(SHOP_API, "write:items", "audit"), Reason.OK, "replaceItem",
                     id="first-alternative-met"),
        pytest.param("PUT", "/v1/items/7", token(SHOP_API, "admin"), Reason.INSUFFICIENT_SCOPE, "replaceItem",
                     id="alternative-left-out-is-refused"),
        pytest.param("PUT", "/v1/items/7", token(SHOP_API, "write:items"), Reason.INSUFFICIENT_SCOPE, "replaceItem",
                     id="half-an-alternative-is-refused"),
        pytest.param("GET", "/v1/health", None, Reason.PUBLIC, "health", id="public"),
        pytest.param("GET", "/v1/files/a.json", token(SHOP_API, "read:files"), Reason.INSUFFICIENT_SCOPE,
                     "getFileJson", id="broadened-needs-every-scope-it-may-stand-for"),
        pytest.param("GET", "/v1/files/a.json", token(SHOP_API, "read:files", "read:meta", "latest:read"), Reason.OK,
                     "getFileJson", id="broadened-allowed"),
        pytest.param("DELETE", "/v1/files/a", token(SHOP_API, "delete:files"), Reason.OK, "deleteFile",
                     id="same-template-other-method"),
        pytest.param("GET", "/v1/reports/latest", token(SHOP_API, "reports:read"), Reason.INSUFFICIENT_SCOPE,
                     "yearReport", id="broadened-route-never-weaker-than-the-route-it-overlaps"),
        pytest.param("GET", "/v1/cars/latest", token(SHOP_API, "latest:read"), Reason.OK, "latestOfKind",
                     id="the-overlapped-route-itself"),
        pytest.param("GET", "/v1/glob/a/b", token(SHOP_API, "read:items", "latest:read"), Reason.NO_ROUTE, "",
                     id="a-literal-double-star-is-not-a-catch-all"),
        pytest.param("GET", "/v1/legacy", token(SHOP_API), Reason.OK, "legacy", id="api-key-route-needs-a-token"),
        pytest.param("GET", "/v1/legacy", None, Reason.MISSING_TOKEN, "legacy", id="api-key-alone-is-refused"),
        pytest.param("GET", "/v1/browse", None, Reason.MISSING_TOKEN, "browse", id="anonymous-alternative-refused"),
        pytest.param("GET", "/v1/orgs/acme/members", token(SHOP_API, "read:members", org="acme"), Reason.OK,
                     "orgMembers", id="organization-token"),
        pytest.param("GET", "/v1/orgs/acme/members", token(SHOP_API, "read:members", org="globex"),
                     Reason.WRONG_ORGANIZATION, "orgMembers", id="other-organization"),
        pytest.param("GET", "/v1/orgs/acme/members", token(SHOP_API, "read:members"), Reason.WRONG_ORGANIZATION,
                     "orgMembers", id="global-token-on-organization-route"),
        pytest.param("GET", "/v1/tenants/t1/settings", token(SHOP_API, "read:settings"), Reason.OK, "tenantSettings",
                     id="global-route"),
        pytest.param("GET", "/v1/tenants/t1/settings", token(SHOP_API, "read:settings", org="t1"),
                     Reason.ORGANIZATION_TOKEN, "tenantSettings", id="organization-token-on-global-route"),
        pytest.param("POST", "/u/uploads", token(SHOP_API, "write:uploads"), Reason.OK, "upload", id="own-server"),
        pytest.param("POST", "/v1/uploads", token(SHOP_API, "write:uploads"), Reason.NO_ROUTE, "",
                     id="not-under-the-document-server"),
        pytest.param("GET", "/v1/things/", token(SHOP_API, "read:items"), Reason.OK, "listThings",
                     id="trailing-slash"),
    ],
)  # fmt: skip
def test_shop_decisions(method: str, target: str, payload: Any, reason: Reason, route: str) -> None:
    verdict = decide(shop()[1], method, target, payload)
    assert (verdict.reason, verdict.route_name) == (reason, route)


def test_organization_param_option_decides_by_organization() -> None:
    _, config = shop(organization_param="tenantId")
    assert decide(config, "GET", "/v1/tenants/t1/settings", token(SHOP_API, "read:settings", org="t1")).reason is (
        Reason.OK
    )
    assert decide(config, "GET", "/v1/tenants/t1/settings", token(SHOP_API, "read:settings")).status == 403


@pytest.mark.parametrize(
    ("base_path", "template"),
    [("/", "/items"), ("", "/items"), ("api/", "/api/items"), ("/api/v2", "/api/v2/items")],
)
def test_base_path_option_replaces_the_servers_prefix(base_path: str, template: str) -> None:
    assert shop_route("listItems", base_path=base_path).template.source == template
    assert shop_route("upload", base_path=base_path).template.source == template.replace("items", "uploads")


def test_issuer_placeholder_and_header() -> None:
    text, config = generated(SHOP, SHOP_API)
    assert config.auth.issuer == openapi.PLACEHOLDER_ISSUER
    assert "\n  # Placeholder: your issuer" in text
    assert "\n# Placeholder: where allowed requests go" in text
    header = "# Generated by `scopegate init --from-openapi` from shop.yaml (Shop API 1.2, OpenAPI 3.1.0)"
    assert text.startswith(header)


def test_a_json_document_that_yaml_cannot_read_is_read_as_json() -> None:
    """Tab indentation (PyYAML refuses it) and JSON's surrogate-pair escapes (libyaml refuses them)."""
    document = yaml.safe_load((DATA / SHOP).read_text(encoding="utf-8"))
    document["info"]["title"] = "Shop API \U0001f6d2"
    text = json.dumps(document, indent="\t")
    assert "\\ud83d\\uded2" in text
    for loader in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        with pytest.raises(yaml.YAMLError):
            yaml.compose(text, Loader=loader)
    from_json = generate(text, Options(resource=SHOP_API, source="shop.json"))
    from_yaml = generated(SHOP, SHOP_API)[0]

    def without_lines(config: str) -> str:
        return re.sub(r" \(shop\.yaml:\d+\)", "", config).replace("shop.yaml", "shop.json")

    assert without_lines(from_yaml).replace("Shop API", "Shop API \U0001f6d2") == from_json
    assert "(shop.json:" not in from_json  # no positions to name
    parse_config(from_json)


# --- documents that are not OpenAPI 3 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param("swagger: '2.0'\ninfo: {title: x}\npaths: {}\n", 1, "this is a Swagger 2.0 document",
                     id="swagger"),
        pytest.param("info: {title: x}\nswagger: '2.0'\n", 2, "scopegate init reads OpenAPI 3.0 and 3.1",
                     id="swagger-line"),
        pytest.param("- a\n- b\n", 1, "expected an OpenAPI 3 document (a mapping with `openapi` and `paths`); got a"
                     " list", id="list"),
        pytest.param("just text\n", 1, "got the scalar 'just text'", id="scalar"),
        pytest.param("", 1, "the file is empty", id="empty"),
        pytest.param("info: {title: x}\npaths: {}\n", 1, "no `openapi` version", id="no-version"),
        pytest.param("openapi: 2.5\npaths: {}\n", 1, "`openapi: 2.5`: scopegate init reads", id="other-version"),
        pytest.param("openapi: 3.0.3\ninfo: {title: x}\n", 1, "no `paths`", id="no-paths"),
        pytest.param("openapi: 3.0.3\npaths: [a]\n", 2, "`paths` must be a mapping", id="paths-a-list"),
        pytest.param("openapi: 3.1.0\npaths: {}\nwebhooks: {}\n", 2, "`paths` lists no operations", id="no-operations"),
        pytest.param("openapi: 3.0.0\npaths:\n  a: {get: {}}\n", 3, "path 'a' does not start with '/'", id="path"),
        pytest.param("openapi: 3.0.0\npaths:\n  /a:\n    get: [1]\n", 4, "get /a: an operation must be a mapping",
                     id="operation"),
        pytest.param("openapi: 3.0.0\npaths:\n  /a:\n    $ref: 'other.yaml#/x'\n", 4, "points outside this file",
                     id="external-ref"),
        pytest.param("openapi: 3.0.0\npaths:\n  /a:\n    $ref: '#/nowhere'\n", 4, "names nothing in this document",
                     id="dangling-ref"),
        pytest.param("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      security: {oauth: []}\n", 5,
                     "`security` must be a list", id="security-mapping"),
        pytest.param("openapi: 3.0.0\nsecurity:\n  - oauth: read\npaths: {/a: {get: {}}}\n", 3,
                     "security scheme 'oauth': expected a list of scopes", id="scopes-a-string"),
        pytest.param("openapi: 3.0.0\nservers: [{url: 'https://x/{v}'}]\npaths: {/a: {get: {}}}\n", 2,
                     "has a path no route template can start with", id="server-variable-without-default"),
        pytest.param("openapi: 3.0.0\npaths: {/a: {get: {}}\n", 3, "neither YAML nor JSON", id="yaml-syntax"),
        pytest.param('{"openapi": "3.0.0",\n "paths": [\n}', 3, "neither YAML nor JSON", id="json-syntax"),
    ],
)  # fmt: skip
def test_what_is_not_openapi_3_is_refused_with_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        generate(text, Options(resource=SHOP_API, source="spec.yaml"))
    (problem,) = raised.value.problems
    assert problem.startswith(f"spec.yaml:{line}: "), problem
    assert message in problem


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"resource": "api"}, "--resource: expected an absolute URI", id="relative-resource"),
        pytest.param({"resource": "https://a#x"}, "--resource", id="fragment"),
        pytest.param({"resource": "urn:logto:organization:o1"}, "--resource", id="organization-audience"),
        pytest.param({"issuer": "ftp://i.example"}, "--issuer: expected an http(s) URL", id="issuer"),
        pytest.param({"base_path": "/a/{b}"}, "--base-path: '/a/{b}' has a parameter or a wildcard", id="param"),
        pytest.param({"base_path": "/a/**"}, "--base-path", id="base-path-rest"),
    ],
)
def test_bad_options_are_refused(options: dict[str, str], message: str) -> None:
    given = {"resource": SHOP_API, **options}
    with pytest.raises(SpecError) as raised:
        generate((DATA / SHOP).read_text(encoding="utf-8"), Options(source=SHOP, **given))
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


# --- the command ----------------------------------------------------------------------------------------------


def run_init(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="scopegate")
    openapi.register(parser.add_subparsers(dest="command", required=True))
    return openapi.run(parser.parse_args(["init", *argv]))


def test_init_prints_the_config_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    spec = DATA / XERO
    assert run_init("--from-openapi", str(spec), "--resource", XERO_API, "--issuer", "https://t.logto.app/oidc") == 0
    out, err = capsys.readouterr()
    assert err == ""
    config = parse_config(out)
    assert (len(config.routes), config.auth.issuer) == (71, "https://t.logto.app/oidc")


def test_init_problems_go_to_stderr_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "old.yaml"
    spec.write_text("# a Swagger file\nswagger: '2.0'\npaths: {}\n", encoding="utf-8")
    assert run_init("--from-openapi", str(spec), "--resource", SHOP_API) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{spec}:2: this is a Swagger 2.0 document")
    assert run_init("--from-openapi", str(tmp_path / "missing.yaml"), "--resource", SHOP_API) == 2
    assert "cannot read the document" in capsys.readouterr().err


def test_init_options_are_the_documented_ones() -> None:
    parser = argparse.ArgumentParser(prog="scopegate")
    openapi.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["init", "--from-openapi", "a.yaml", "--resource", "https://r", "--issuer", "https://i", "--organization-param",
         "tenantId", "--base-path", "/"]
    )  # fmt: skip
    assert (args.spec, args.resource, args.issuer, args.organization_param, args.base_path) == (
        Path("a.yaml"), "https://r", "https://i", "tenantId", "/",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["init", "--from-openapi", "a.yaml"])  # --resource is required


WALKTHROUGH = Path(__file__).resolve().parent.parent / "examples" / "openapi-walkthrough"


def test_the_readme_walkthrough_is_what_the_commands_print() -> None:
    """examples/openapi-walkthrough/ is the README's walkthrough: its config.yaml is exactly what `init` prints
    today, its tests pass and `check --strict` is clean, so the README can never show an output that went stale."""
    cli = [sys.executable, "-m", "scopegate"]
    init = subprocess.run(
        [*cli, "init", "--from-openapi", "openapi.yaml", "--resource", "https://api.example.com",
         "--issuer", "https://tenant.logto.app/oidc"],
        cwd=WALKTHROUGH, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert init.stdout == (WALKTHROUGH / "config.yaml").read_text(encoding="utf-8")
    tested = subprocess.run(
        [*cli, "test", "--config", "config.yaml", "tests.yaml"],
        cwd=WALKTHROUGH, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.splitlines()[-1].endswith("passed, 0 failed")
    checked = subprocess.run(
        [*cli, "check", "--strict", "--config", "config.yaml"],
        cwd=WALKTHROUGH, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout
    assert "warning" not in checked.stdout
