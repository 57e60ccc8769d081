"""`scopegate test --config FILE TESTS.yaml ...`: policy unit tests, decided by the proxy's own gate, offline.

A test file lists cases; each is a request (method, URL, headers), the claims its token carries (taken as given:
nothing is signed or verified) or `token: none`, and what scopegate must do with it:

    cases:
      - name: a reader may read a report
        request: { method: GET, url: "/api/reports/42?x=1", headers: { X-Organization-Id: acme } }
        claims: { aud: https://api.example.com, scope: "read:report" }
        expect: allow        # or deny, or { decision, status, reason, route, headers }

The request goes through the same normalization, routing, token and organization extraction and policy as on the
proxy port (`Gate`); the token sits where the matched route reads tokens first. Test files are read like the config:
unknown keys and wrong types are problems with their `FILE:LINE`.
"""

from __future__ import annotations

import argparse
import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, SequenceNode

from scopegate.config import Config
from scopegate.errors import ConfigError
from scopegate.gate import Gate, Verdict
from scopegate.request import Headers
from scopegate.tools.offline import GIVEN_CLAIMS_TOKEN, GivenClaims, decide_offline, target_of
from scopegate.yamlnodes import Field, Problems, compose, optional

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
_DECISIONS = ("allow", "deny", "audit_deny")
_FORWARDED_STATUS = 200  # an allowed request's status here: what the upstream answers is not the policy's business


@dataclass(frozen=True, slots=True)
class Expectation:
    decision: str | None = None
    status: int | None = None
    reason: str | None = None
    route: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # identity headers the upstream (or the ingress) must receive

    def describe(self) -> str:
        parts = [f"{name} {value}" for name, value in self._given()]
        parts += [f"header {name}: {value}" for name, value in self.headers]
        return ", ".join(parts)

    def _given(self) -> list[tuple[str, object]]:
        fields = (("decision", self.decision), ("status", self.status), ("reason", self.reason))
        return [(name, value) for name, value in (*fields, ("route", self.route)) if value is not None]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    where: str  # FILE:LINE
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    claims: Mapping[str, Any] | None  # None: the request carries no token
    expect: Expectation


@dataclass(frozen=True, slots=True)
class Result:
    case: Case
    verdict: Verdict
    status: int
    mismatches: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def actual(self) -> str:
        verdict = self.verdict
        route = verdict.route_name or "(none)"
        detail = f", detail {verdict.detail}" if verdict.detail else ""
        return (
            f"decision {verdict.decision}, status {self.status}, reason {verdict.reason.value}, route {route}{detail}"
        )


# --- reading test files -------------------------------------------------------------------------------------------


def load_cases(path: Path) -> list[Case]:
    """Every case of a test file; ConfigError listing every problem as FILE:LINE: message."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}:1: cannot read the test file: {exc}"]) from exc
    problems = Problems(str(path))
    root = compose(text, problems)
    cases: list[Case | None] = []
    if root is not None:
        members = root.mapping(("cases",))
        if members is not None and "cases" not in members:
            root.missing("cases")
        items = members["cases"].sequence() if members and "cases" in members else None
        cases = [_case(item, str(path)) for item in items or []]
    if problems.lines:
        raise ConfigError(problems.lines)
    return [case for case in cases if case is not None]


def _case(field: Field, file: str) -> Case | None:
    members = field.mapping(("name", "request", "claims", "token", "expect"))
    if members is None:
        return None
    for required in ("name", "request", "expect"):
        if required not in members:
            field.missing(required)
    if ("claims" in members) == ("token" in members):
        field.error("give either `claims: {...}` (taken as given) or `token: none`")
    name = optional(members, "name", lambda f: f.string(), None)
    request = optional(members, "request", _request, None)
    claims = optional(members, "claims", _claims, None)
    if "token" in members and members["token"].string("none") not in ("none", None):
        members["token"].error("the only token a test can name is `none` (use `claims` for a token's claims)")
    expect = optional(members, "expect", _expectation, None)
    if name is None or request is None or expect is None or ("claims" in members and claims is None):
        return None
    method, target, headers = request
    return Case(name, f"{file}:{field.line}", method, target, headers, claims, expect)


def _request(field: Field) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    members = field.mapping(("method", "url", "headers"))
    if members is None:
        return None
    for required in ("method", "url"):
        if required not in members:
            field.missing(required)
    method = optional(members, "method", lambda f: f.string(), None)
    url = optional(members, "url", lambda f: f.string(), None)
    headers = optional(members, "headers", _headers, ())
    if method is None or url is None or headers is None:
        return None
    return method, target_of(url), headers


def _headers(field: Field) -> tuple[tuple[str, str], ...] | None:
    pairs: list[tuple[str, str]] = []
    ok = True
    for name, item in field.items():
        values = [element.string() for element in item.sequence() or []] if _is_list(item) else [item.string()]
        ok = ok and None not in values
        pairs.extend((name, value) for value in values if value is not None)
    return tuple(pairs) if ok else None


def _claims(field: Field) -> Mapping[str, Any] | None:
    if not _is_mapping(field):
        field.error(f"expected the token's claims as a mapping; got {field.kind}")
        return None
    value = yaml.SafeLoader("").construct_object(field.node, deep=True)
    return value if isinstance(value, dict) else None


def _expectation(field: Field) -> Expectation | None:
    if not _is_mapping(field):
        short = field.string("allow, deny, or a mapping")
        if short in ("allow", "deny"):
            return Expectation(decision=short)
        if short is not None:
            field.error(
                f"expected allow, deny, or a mapping of decision, status, reason, route, headers; got {short!r}"
            )
        return None
    members = field.mapping(("decision", "status", "reason", "route", "headers"))
    if members is None:
        return None
    decision = optional(members, "decision", lambda f: f.choice(_DECISIONS), None)
    status = optional(members, "status", lambda f: f.integer(minimum=100), None)
    reason = optional(members, "reason", lambda f: f.string(), None)
    route = optional(members, "route", lambda f: f.string(), None)
    headers = optional(members, "headers", _headers, ())
    if any(members.get(key) is not None and value is None for key, value in _pairs(decision, status, reason, route)):
        return None
    if headers is None:
        return None
    return Expectation(decision, status, reason, route, headers)


def _pairs(*values: object) -> tuple[tuple[str, object], ...]:
    return tuple(zip(("decision", "status", "reason", "route"), values, strict=True))


def _is_list(field: Field) -> bool:
    return isinstance(field.node, SequenceNode)


def _is_mapping(field: Field) -> bool:
    return isinstance(field.node, MappingNode)


# --- running them --------------------------------------------------------------------------------------------------


async def run_case(config: Config, case: Case) -> Result:
    """Decide the case's request exactly as the proxy port would, and compare with what it expects."""
    verdict = await _decide(config, case)
    status = verdict.status if not verdict.forward else (204 if verdict.preflight else _FORWARDED_STATUS)
    return Result(case, verdict, status, _mismatches(case.expect, verdict, status))


async def _decide(config: Config, case: Case) -> Verdict:
    gate = Gate.of(config, GivenClaims(case.claims or {}))
    token = GIVEN_CLAIMS_TOKEN if case.claims is not None else None
    return await decide_offline(gate, case.method, case.target, Headers.of(case.headers), token=token)


def _mismatches(expect: Expectation, verdict: Verdict, status: int) -> tuple[str, ...]:
    wrong = []
    if expect.decision is not None and verdict.decision != expect.decision:
        wrong.append("decision")
    if expect.status is not None and status != expect.status:
        wrong.append("status")
    if expect.reason is not None and verdict.reason.value != expect.reason:
        wrong.append("reason")
    if expect.route is not None and verdict.route_name != expect.route:
        wrong.append("route")
    sent = {name.lower(): value for name, value in verdict.identity}
    wrong += [f"header {name}" for name, value in expect.headers if sent.get(name.lower()) != value]
    return tuple(wrong)


# --- the command ---------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "test", help="run policy unit tests: requests with given claims, decided offline as the proxy would"
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--junit", type=Path, metavar="PATH", help="also write the results as JUnit XML")
    parser.add_argument("tests", type=Path, nargs="+", metavar="TESTS.yaml")


def run(args: argparse.Namespace, config: Config) -> int:
    cases: list[Case] = []
    invalid = False
    for path in args.tests:
        try:
            cases.extend(load_cases(path))
        except ConfigError as exc:
            print("\n".join(exc.problems))
            invalid = True
    if invalid:
        return EXIT_INVALID
    results = asyncio.run(_run_all(config, cases))
    print("claims are taken as given: nothing is signed or verified")
    for result in results:
        print(report_line(result))
    failed = sum(not result.passed for result in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    if args.junit is not None:
        write_junit(args.junit, results)
    return EXIT_FAILED if failed else EXIT_PASSED


async def _run_all(config: Config, cases: Sequence[Case]) -> list[Result]:
    return [await run_case(config, case) for case in cases]


def report_line(result: Result) -> str:
    case = result.case
    if result.passed:
        return f"PASS  {case.name}"
    return (
        f"FAIL  {case.name} ({case.where}): {', '.join(result.mismatches)} differ\n"
        f"      expected: {case.expect.describe()}\n"
        f"      actual:   {result.actual()}"
    )


def write_junit(path: Path, results: Sequence[Result]) -> None:
    failed = sum(not result.passed for result in results)
    suite = ET.Element("testsuite", name="scopegate policy tests", tests=str(len(results)), failures=str(failed))
    for result in results:
        case = ET.SubElement(suite, "testcase", classname=result.case.where.rsplit(":", 1)[0], name=result.case.name)
        if not result.passed:
            failure = ET.SubElement(case, "failure", message=f"{', '.join(result.mismatches)} differ")
            failure.text = f"expected: {result.case.expect.describe()}\nactual: {result.actual()}"
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
