"""Before a target is measured, make sure it answers as it should, or stop the benchmark with what it said.

Auth targets: 200 (and the upstream's body) with the warm ES384 and RS256 tokens, 401 without a token, 403 with
the weak token (scope read:other). Plain proxies ignore the token: 200 with and without it. Every case is asked
twice, so the second answer comes from whatever cache the target keeps.

Identity targets (scopegate, envoy-jwt-logged) also: on ECHO_PATH, where the upstream answers with the identity
headers it was sent, the upstream must get X-Auth-Subject, X-Auth-Client-Id, X-Auth-Scopes, X-Auth-Route and
X-Request-Id for the allowed requests; and the target's request log must get exactly one JSON line per request
there, with its status (and, when allowed, the same sub and request id the upstream saw).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import net
from .fixtures import parse_echo
from .layout import CLIENT_ID, ECHO_PATH, REQUEST_PATH, ROUTE_NAME, SCOPE, UPSTREAM_BODY, WARM_SUB
from .procs import HarnessError
from .targets import Running, Target
from .tokens import TokenSet

# How long the request log may take to show the check's lines (Envoy flushes every second here, see targets.py).
LOG_WAIT_SECONDS = 15.0


def expectations(target: Target, tokens: TokenSet) -> list[tuple[str, str | None, int]]:
    """(what, token, expected status) for this target."""
    cases: list[tuple[str, str | None, int]] = [
        ("the warm ES384 token", tokens.warm["ES384"], 200),
        ("the warm RS256 token", tokens.warm["RS256"], 200),
    ]
    if target.auth:
        cases += [("no token", None, 401), ("the weak token (scope read:other)", tokens.weak, 403)]
    else:
        cases += [("no token", None, 200)]
    return cases


def check(target: Target, running: Running, tokens: TokenSet) -> None:
    for attempt in ("", " (again)"):
        for what, token, expected in expectations(target, tokens):
            reply = _get(target, running, REQUEST_PATH, what + attempt, token)
            if reply.status != expected or (expected == 200 and reply.body != UPSTREAM_BODY.encode()):
                raise HarnessError(
                    f"{target.name}: GET {REQUEST_PATH} with {what}{attempt}: expected {expected}, got {reply.status} "
                    f"{reply.body[:300]!r} (WWW-Authenticate: {reply.headers.get('www-authenticate')!r})"
                )
    if target.identity:
        check_identity(target, running, tokens)


def _get(target: Target, running: Running, path: str, what: str, token: str | None) -> net.Reply:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return net.get(running.port, path, headers)
    except OSError as exc:
        raise HarnessError(f"{target.name}: GET {path} with {what} failed: {exc}") from exc


def check_identity(target: Target, running: Running, tokens: TokenSet) -> None:
    """The identity headers the upstream gets, and one request-log line per request (see the module's notes)."""
    expected_identity = {
        "x-auth-subject": WARM_SUB,
        "x-auth-client-id": CLIENT_ID,
        "x-auth-scopes": SCOPE,
        "x-auth-route": ROUTE_NAME,
    }
    sent: list[tuple[str, int, str | None]] = []  # (what, status, request id the upstream saw)
    for what, token, expected in expectations(target, tokens):
        reply = _get(target, running, ECHO_PATH, what, token)
        if reply.status != expected:
            raise HarnessError(f"{target.name}: GET {ECHO_PATH} with {what}: expected {expected}, got {reply.status}")
        request_id = None
        if expected == 200:
            echoed = parse_echo(reply.body)
            wrong = {name: echoed.get(name) for name, value in expected_identity.items() if echoed.get(name) != value}
            if wrong or not echoed.get("x-request-id"):
                raise HarnessError(
                    f"{target.name}: with {what}, the upstream got {echoed} (expected {expected_identity} and an "
                    "x-request-id)"
                )
            request_id = echoed["x-request-id"]
        sent.append((what, expected, request_id))
    if running.request_log is None:
        raise HarnessError(f"{target.name}: an identity target without a request log")
    lines = _wait_for_lines(running.request_log, len(sent))
    if len(lines) != len(sent):
        raise HarnessError(
            f"{target.name}: {len(sent)} requests to {ECHO_PATH}, {len(lines)} lines for them in "
            f"{running.request_log}:\n{lines}"
        )
    # Lines are matched by request id, not by position: worker processes sharing one log write in their own order.
    statuses = Counter(str(line.get("status")) for line in lines)
    if statuses != Counter(str(status) for _, status, _ in sent):
        raise HarnessError(f"{target.name}: log statuses {dict(statuses)} for requests answered {sent}: {lines}")
    by_id = {line.get("request_id"): line for line in lines}
    for what, status, request_id in sent:
        if request_id is None:
            continue
        line = by_id.get(request_id)
        if line is None:
            raise HarnessError(f"{target.name}: no log line with the upstream's request id {request_id!r}: {lines}")
        problems = []
        if str(line.get("status")) != str(status):
            problems.append(f"status {line.get('status')!r}, not {status}")
        if line.get("sub") != WARM_SUB:
            problems.append(f"sub {line.get('sub')!r}, not {WARM_SUB!r}")
        if problems:
            raise HarnessError(f"{target.name}: request log line for {what}: {'; '.join(problems)}: {line}")


def _wait_for_lines(log: Path, wanted: int) -> list[dict[str, Any]]:
    """The JSON lines of the log for ECHO_PATH, once there are `wanted` of them (or what there is after the wait)."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        lines = _echo_lines(log)
        if len(lines) >= wanted or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _echo_lines(log: Path) -> list[dict[str, Any]]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # not a JSON line: scopegate's stdout has startup lines, and stderr joins it
        if isinstance(line, dict) and line.get("path") == ECHO_PATH:
            lines.append(line)
    return lines
