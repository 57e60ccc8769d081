"""Is an answer right? Each response against its case's expectation, then the whole run against two records.

1. The response (`judge`): the status; for a request the upstream must have got, the echo's account of it (method,
   normalized path, body length and digest, our X-Request-Id, exactly the expected X-Auth-* headers and none the
   client sent, the Authorization header only when the token was verified); for a rejection, the JSON error code,
   the X-Request-Id and the WWW-Authenticate challenge the README prescribes; for refused framing, that the
   connection closes after the one answer.
2. After the run (`cross_check`): the upstream's record of every request that reached it (a request denied must
   never be there, one forwarded must, once; twice only when `retriable`) and scopegate's decision log (exactly one
   line per request, with the expected decision, reason, route and status; one `bad_request` line per refused
   framing; the smuggled request nowhere).

A case on a clock (`Clocks`) may be answered either way while the change it waits for is under way: sent after the
change is confirmed, only the later answer is right; answered before it began, only the earlier one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .soakplan import ERROR_CODES, Case, Expect

PROBLEMS_PER_CASE = 5  # kept in full for the report; the rest are only counted


class Problems:
    """The first PROBLEMS_PER_CASE problems of each case, in full."""

    def __init__(self) -> None:
        self._kept: dict[str, list[dict[str, object]]] = {}

    def add(self, case: str, request_id: str | None, problems: list[str]) -> None:
        kept = self._kept.setdefault(case, [])
        if len(kept) < PROBLEMS_PER_CASE:
            kept.append({"case": case, "request_id": request_id, "problems": problems})

    def listed(self) -> list[dict[str, object]]:
        return [problem for kept in self._kept.values() for problem in kept]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]  # names lower-case
    body: bytes
    close: bool

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if len(values) == 1 else None if not values else " | ".join(values)


@dataclass(frozen=True)
class Sent:
    """What one request carried, as far as checking its answer needs."""

    request_id: str | None
    authorization: str | None  # the Authorization value when exactly one was sent
    claims: Mapping[str, Any] | None  # of the token sent, when it was a valid-looking one


class Clocks:
    """When each expectation-changing event began and was confirmed (time.monotonic); unset means not yet."""

    def __init__(self) -> None:
        self._begin: dict[str, float] = {}
        self._confirmed: dict[str, float] = {}

    def begin(self, name: str, at: float) -> None:
        self._begin[name] = at

    def confirm(self, name: str, at: float) -> None:
        self._confirmed[name] = at

    def expectations(self, case: Case, sent_at: float, answered_at: float) -> tuple[Expect, ...]:
        if case.clock is None or case.later is None:
            return (case.expect,)
        if answered_at < self._begin.get(case.clock, math.inf):
            return (case.expect,)
        if sent_at >= self._confirmed.get(case.clock, math.inf):
            return (case.later,)
        return (case.expect, case.later)


def judge(
    case: Case, expects: tuple[Expect, ...], sent: Sent, reply: Reply, trailing: bytes | None
) -> tuple[Expect | None, list[str]]:
    """The expectation the reply meets, or None and what is wrong with it (against the closest expectation)."""
    attempts = []
    for expect in expects:
        problems = _problems(case, expect, sent, reply, trailing)
        if not problems:
            return expect, []
        attempts.append((expect.status != reply.status, problems))
    attempts.sort(key=lambda attempt: attempt[0])  # report against an expectation with the status it got, if any
    return None, attempts[0][1]


def _problems(case: Case, expect: Expect, sent: Sent, reply: Reply, trailing: bytes | None) -> list[str]:
    if reply.status != expect.status:
        return [f"status {reply.status}, expected {expect.status} ({expect.decision} {expect.reason}): {_brief(reply)}"]
    if case.raw is not None:
        return _framing_problems(reply, trailing)
    if case.method == "HEAD":
        return []  # no body to read the upstream's account from; the upstream record still says it arrived
    if expect.echoed:
        return _echo_problems(case, expect, sent, reply)
    return _rejection_problems(expect, sent, reply)


def _brief(reply: Reply) -> str:
    return repr(reply.body[:200])


def _framing_problems(reply: Reply, trailing: bytes | None) -> list[str]:
    problems = []
    if trailing is None:
        problems.append("the connection stayed open after the refusal")
    elif trailing:
        problems.append(f"more after the refusal: {trailing[:200]!r}")
    if not reply.header("x-request-id"):
        problems.append("no X-Request-Id on the refusal")
    return problems


def _echo_problems(case: Case, expect: Expect, sent: Sent, reply: Reply) -> list[str]:
    try:
        echoed = json.loads(reply.body)
        headers = {name.lower(): value for name, value in echoed["headers"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"not the upstream's echo: {_brief(reply)}"]
    problems = []
    for what, got, wanted in (
        ("method", echoed.get("method"), case.method),
        ("path", echoed.get("path"), expect.upstream_path),
        ("query", echoed.get("query"), ""),
        ("body bytes", echoed.get("body_bytes"), len(case.body)),
        ("body sha256", echoed.get("body_sha256"), hashlib.sha256(case.body).hexdigest()),
        ("X-Request-Id", headers.get("x-request-id"), sent.request_id),
    ):
        if got != wanted:
            problems.append(f"upstream got {what} {got!r}, expected {wanted!r}")
    identity = {name.replace("_", "-"): value for name, value in headers.items() if _is_identity(name)}
    wanted_identity = expected_identity(expect, sent)
    if identity != wanted_identity or any("_" in name for name in headers if _is_identity(name)):
        problems.append(f"upstream got identity {identity}, expected {wanted_identity}")
    authorization = headers.get("authorization")
    wanted_authorization = sent.authorization if expect.identity == "token" else None
    if authorization != wanted_authorization:
        problems.append(f"upstream got Authorization {_cut(authorization)}, expected {_cut(wanted_authorization)}")
    return problems


def _is_identity(name: str) -> bool:
    return name.replace("_", "-").startswith("x-auth-")


def _cut(value: str | None) -> str:
    return "none" if value is None else repr(value[:24] + "...")


def expected_identity(expect: Expect, sent: Sent) -> dict[str, str]:
    """The X-Auth-* headers the README promises the upstream (lower-case names)."""
    identity = {"x-auth-route": expect.route}
    if expect.audited:
        identity["x-auth-decision"] = "audit_deny"
    if expect.identity == "token" and sent.claims is not None:
        identity["x-auth-scopes"] = str(sent.claims.get("scope", ""))
        identity["x-auth-subject"] = str(sent.claims["sub"])
        identity["x-auth-client-id"] = str(sent.claims["client_id"])
        if expect.organization is not None:
            identity["x-auth-organization-id"] = expect.organization
    return identity


def _rejection_problems(expect: Expect, sent: Sent, reply: Reply) -> list[str]:
    problems = []
    if reply.header("x-request-id") != sent.request_id:
        problems.append(f"X-Request-Id {reply.header('x-request-id')!r}, expected {sent.request_id!r}")
    try:
        error = json.loads(reply.body).get("error")
    except (ValueError, AttributeError):
        error = None
    if error != ERROR_CODES[expect.reason]:
        problems.append(f"error {error!r}, expected {ERROR_CODES[expect.reason]!r}: {_brief(reply)}")
    if not (reply.header("content-type") or "").startswith("application/json"):
        problems.append(f"Content-Type {reply.header('content-type')!r}, expected application/json")
    challenge = reply.header("www-authenticate")
    wanted = _challenge(expect)
    if (challenge is None) != (wanted is None) or (
        challenge is not None and wanted is not None and not challenge.startswith(wanted)
    ):
        problems.append(f"WWW-Authenticate {challenge!r}, expected {wanted!r}...")
    elif expect.reason == "insufficient_scope" and 'scope="' not in (challenge or ""):
        problems.append(f"WWW-Authenticate {challenge!r} names no required scope")
    return problems


def _challenge(expect: Expect) -> str | None:
    """The start of the RFC 6750 challenge the README prescribes, or None when there must be none."""
    if expect.status == 401:
        if expect.reason == "missing_token":
            return 'Bearer realm="scopegate"'
        return 'Bearer realm="scopegate", error="invalid_token"'
    if expect.status == 403:
        return 'Bearer realm="scopegate", error="insufficient_scope"'
    return None


# --- after the run ----------------------------------------------------------------------------------------------


class RequestIds:
    """The X-Request-Ids the soak sends: a prefix of its own per run and a number, so the records after the run
    can be checked against a list indexed by number rather than a dict of strings (a two-minute run sends ~10^6)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def make(self, number: int) -> str:
        return f"{self.prefix}{number:08d}"

    def number(self, request_id: str) -> int | None:
        if not request_id.startswith(self.prefix):
            return None
        digits = request_id[len(self.prefix) :]
        return int(digits) if digits.isdigit() else None


# request number -> (case index, the expectation its answer met); None: not answered, or answered wrong
Answers = list[tuple[int, Expect] | None]


@dataclass
class CrossCheck:
    """What the records said. `wrong`: (case index or None, request id, problem) for each request they contradict."""

    wrong: list[tuple[int | None, str, str]] = field(default_factory=list)
    upstream_requests: int = 0
    repeats: Counter[int] = field(default_factory=Counter)  # by case: requests the upstream got twice (`retriable`)
    upstream_unknown: int = 0  # requests at the upstream with an id the soak never sent (its readiness probe)
    log_lines: int = 0
    framing_lines: int = 0  # bad_request lines for requests without an id of ours: refused framings
    framing_expected: int = 0
    error_lines: list[str] = field(default_factory=list)  # scopegate's error-level log lines but refused reloads
    notes: list[str] = field(default_factory=list)


def retriable(case: Case) -> bool:
    """README: a request scopegate may send upstream a second time, on a new connection, when the pooled one it went
    out on was closed under it: idempotent and without a body."""
    return case.method in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE") and not case.body


def cross_check(
    cases: Sequence[Case],
    answers: Answers,
    ids: RequestIds,
    framing_answered: int,
    smuggled: set[str],
    upstream_record: Path,
    decision_log: Path,
) -> CrossCheck:
    """The upstream's record (one `id<TAB>method<TAB>target` line per request it got) and scopegate's decision log
    against every answer judged right."""
    result = CrossCheck(framing_expected=framing_answered)
    reached = _read_upstream_record(result, answers, ids, smuggled, upstream_record)
    logged = _read_decision_log(result, answers, ids, smuggled, decision_log)
    for number, entry in enumerate(answers):
        if entry is None:
            continue
        index, expect = entry
        if (reached[number] > 0) != expect.forwarded:
            problem = "denied, yet the upstream got it" if reached[number] else "forwarded, yet not at the upstream"
            result.wrong.append((index, ids.make(number), problem))
        elif reached[number] > 1:
            result.repeats[index] += 1
            case = cases[index]
            if reached[number] > 2 or not retriable(case):
                problem = f"the upstream got it {reached[number]} times ({case.method}, {len(case.body)} bytes of body)"
                result.wrong.append((index, ids.make(number), problem))
        if logged[number] != 1:
            result.wrong.append((index, ids.make(number), f"{logged[number]} decision log lines, expected 1"))
    if result.framing_lines != result.framing_expected:
        result.notes.append(
            f"{result.framing_lines} bad_request log lines without a request id of ours, "
            f"{result.framing_expected} refused framings answered"
        )
    return result


def _read_upstream_record(
    result: CrossCheck, answers: Answers, ids: RequestIds, smuggled: set[str], path: Path
) -> bytearray:
    reached = bytearray(len(answers))
    with path.open(errors="replace") as record:
        for line in record:
            request_id, tab, _ = line.partition("\t")
            if not tab:
                continue
            result.upstream_requests += 1
            number = ids.number(request_id)
            if request_id in smuggled:
                result.wrong.append((None, request_id, "the smuggled request reached the upstream"))
            elif number is None or number >= len(answers):
                result.upstream_unknown += 1
            elif reached[number] < 255:
                reached[number] += 1
    return reached


def _read_decision_log(
    result: CrossCheck, answers: Answers, ids: RequestIds, smuggled: set[str], path: Path
) -> bytearray:
    """Counts the decision lines per request and checks each against its answer, a line at a time."""
    logged = bytearray(len(answers))
    with path.open(errors="replace") as log:
        for raw in log:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            if line.get("event") != "decision":
                if line.get("level") in ("error", "critical") and line.get("event") != "config_reload_failed":
                    result.error_lines.append(raw[:500])
                continue
            result.log_lines += 1
            _check_line(result, line, answers, ids, smuggled, logged)
    return logged


def _check_line(
    result: CrossCheck, line: dict[str, Any], answers: Answers, ids: RequestIds, smuggled: set[str], logged: bytearray
) -> None:
    request_id = str(line.get("request_id"))
    number = ids.number(request_id)
    if request_id in smuggled:
        result.wrong.append((None, request_id, f"the smuggled request was decided: {line}"))
    elif number is not None and number < len(answers):
        entry = answers[number]
        if entry is None:
            return  # no answer, or a wrong one: already counted
        logged[number] = min(255, logged[number] + 1)
        index, expect = entry
        got = (line.get("decision"), line.get("reason"), line.get("route"), line.get("status"))
        wanted = (expect.decision, expect.reason, expect.route, expect.status)
        if got != wanted:
            result.wrong.append((index, request_id, f"decision log says {got}, expected {wanted}"))
    elif line.get("reason") == "bad_request" and line.get("route") == "":
        result.framing_lines += 1
