"""The soak's verdict and its two outputs: bench/results/soak.json (everything) and soak.md (the table).

Wrong decisions are counted per case: an answer `soakcheck.judge` refused, no answer at all, or an answer the
records contradict afterwards (the upstream got a request that was denied, or none of one that was forwarded; the
decision log has no line, two lines, or another decision for it). A 5xx is explained only when the case asked for
that very 5xx (an injected upstream fault); any other 5xx is also a wrong decision.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli import commit_description, machine_description
from .report import write_json
from .soakplan import KINDS, Case

if TYPE_CHECKING:
    from .soak import Outcome, Settings

SAMPLES_KEPT = 240  # resource samples in soak.json, evenly thinned


def meta(settings: Settings) -> dict[str, Any]:
    try:
        version = importlib.metadata.version("scopegate")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_description(),
        "commit": commit_description(None),
        "versions": f"scopegate {version}, Python {platform.python_version()}",
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def document(settings: Settings, outcome: Outcome, meta: dict[str, Any]) -> dict[str, Any]:
    load, cross = outcome.load, outcome.cross
    tally = load.tally
    cases = load.cases
    late_wrong = [0] * len(cases)  # wrong per case, found by the cross-check
    problems = tally.problems
    smuggling_case = next((index for index, case in enumerate(cases) if case.smuggled_id), 0)
    for found, request_id, problem in cross.wrong:
        index = found if found is not None else smuggling_case
        late_wrong[index] += 1
        problems.add(cases[index].name, request_id, [problem])
    case_rows = []
    for index, (case, counts) in enumerate(zip(cases, tally.by_case, strict=True)):
        case_rows.append(
            {
                "case": case.name,
                "kind": case.kind,
                "requests": counts.sent,
                "forwarded": counts.forwarded,
                "refused": counts.refused,
                "wrong": counts.wrong + late_wrong[index],
                "no_answer": counts.no_answer,
                "injected_5xx": counts.injected_5xx,
                "unexplained_5xx": counts.unexplained_5xx,
                "statuses": {str(status): n for status, n in sorted(counts.statuses.items())},
                "p50_ms": percentile(tally.latencies[index], 0.50),
                "p99_ms": percentile(tally.latencies[index], 0.99),
            }
        )
    kind_rows = [_kind_row(kind, case_rows, tally.latencies, cases) for kind in KINDS]
    overall = [ms for index, values in enumerate(tally.latencies) if not cases[index].exclusive for ms in values]
    total = _total_row(case_rows, overall)
    resources = _resources(outcome)
    planned = outcome.control.planned()
    events = [
        {"step": e.name, "what": e.what, "at_s": e.started_s, "confirmed_at_s": e.confirmed_s, "detail": e.detail}
        for e in outcome.control.events
    ]
    events_ok = len(events) == len(planned) and all(event["confirmed_at_s"] is not None for event in events)
    fd_bound = outcome.resources.fd_bound(settings.connections)
    verdict = {
        "wrong_decisions": total["wrong"],
        "unexplained_5xx": total["unexplained_5xx"],
        "injected_5xx": total["injected_5xx"],
        "no_answer": total["no_answer"],
        "kinds_not_exercised": [row["kind"] for row in kind_rows if row["requests"] == 0],
        "events_confirmed": events_ok,
        "fds_start": resources["start"]["fds"],
        "fds_end": resources["end"]["fds"],
        "fds_bound": fd_bound,
        "fds_ok": resources["end"]["fds"] <= fd_bound,
        "exit_status": outcome.exit_status,
        "exited_during_load_at_s": outcome.resources.exited_at,
        "metrics_counted": outcome.requests_counted,
        "requests_sent": total["requests"],
        "metrics_match": outcome.requests_counted == total["requests"],
        "framing_log_lines": cross.framing_lines,
        "framing_answered": cross.framing_expected,
        "scopegate_error_lines": len(cross.error_lines),
    }
    verdict["clean"] = (
        verdict["wrong_decisions"] == 0
        and verdict["unexplained_5xx"] == 0
        and not verdict["kinds_not_exercised"]
        and events_ok
        and verdict["fds_ok"]
        and outcome.exit_status == 0
        and outcome.resources.exited_at is None
        and verdict["metrics_match"]
        and cross.framing_lines == cross.framing_expected
    )
    return {
        "meta": meta,
        "settings": {
            "seconds": settings.seconds,
            "connections": settings.connections,
            "cases": len(cases),
            "seconds_run": outcome.seconds,
        },
        "summary": {
            **total,
            "rps": total["requests"] / outcome.seconds if outcome.seconds > 0 else 0.0,
            "cpu_seconds": outcome.cpu_seconds,
            "cpu_us_per_request": None
            if outcome.cpu_seconds is None
            else outcome.cpu_seconds * 1e6 / max(total["requests"], 1),
        },
        "kinds": kind_rows,
        "cases": case_rows,
        "events": events,
        "resources": resources,
        "records": {
            "upstream_requests": cross.upstream_requests,
            "upstream_repeats": {cases[index].name: n for index, n in sorted(cross.repeats.items())},
            "upstream_unknown": cross.upstream_unknown,
            "decision_log_lines": cross.log_lines,
            "jwks_fetches": outcome.jwks_fetches,
            "notes": cross.notes,
            "scopegate_error_lines": cross.error_lines[:50],
        },
        "problems": problems.listed(),
        "verdict": verdict,
    }


def _kind_row(
    kind: str, case_rows: list[dict[str, Any]], latencies: Sequence[Sequence[float]], cases: Sequence[Case]
) -> dict[str, Any]:
    rows = [row for row in case_rows if row["kind"] == kind]
    values = [ms for index, case in enumerate(cases) if case.kind == kind for ms in latencies[index]]
    return {"kind": kind, **_sums(rows), "p50_ms": percentile(values, 0.50), "p99_ms": percentile(values, 0.99)}


def _sums(rows: list[dict[str, Any]]) -> dict[str, int]:
    names = ("requests", "forwarded", "refused", "wrong", "no_answer", "injected_5xx", "unexplained_5xx")
    return {name: sum(row[name] for row in rows) for name in names}


def _total_row(case_rows: list[dict[str, Any]], overall: list[float]) -> dict[str, Any]:
    return {"kind": "all", **_sums(case_rows), "p50_ms": percentile(overall, 0.50), "p99_ms": percentile(overall, 0.99)}


def _resources(outcome: Outcome) -> dict[str, Any]:
    samples = outcome.resources.samples
    start, end = samples[0], samples[-1]
    peak = {
        "rss_mb": max(sample["rss_mb"] for sample in samples),
        "peak_mb": max(sample["peak_mb"] for sample in samples),
        "fds": max(sample["fds"] for sample in samples),
    }
    step = max(1, math.ceil(len(samples) / SAMPLES_KEPT))
    return {"start": start, "peak": peak, "end": end, "samples": samples[::step]}


# --- output -----------------------------------------------------------------------------------------------------


def write(document: dict[str, Any], directory: Path, *, quiet: bool = False) -> None:
    text = markdown(document)
    if not quiet:
        print("\n" + text, flush=True)
    write_json(directory / "soak.json", document)
    (directory / "soak.md").write_text(text)
    if not quiet:
        print(f"soak: wrote {directory / 'soak.md'} and {directory / 'soak.json'}", flush=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(document: dict[str, Any]) -> str:
    meta, settings, summary = document["meta"], document["settings"], document["summary"]
    verdict = document["verdict"]
    lines = [
        f"# scopegate soak: {settings['seconds']:g} s, {settings['connections']} connections ({meta['started']})",
        "",
        f"{meta['machine']} · commit {meta['commit']} · {meta['versions']}",
        "",
        "One `scopegate run` process on loopback, an issuer whose JWKS the soak switches, an echo upstream recording "
        f"every request; {settings['cases']} cases (bench/sgbench/soakplan.py) in a fixed weighted order on "
        f"{settings['connections']} keep-alive connections, every answer checked: status, the upstream's account "
        "(path, body, identity headers), the decision log line; refused framings on connections of their own. "
        "Mid-run: key rotation and config reloads (timeline below). p50/p99: client-side, per request.",
        "",
        "| kind | requests | forwarded | refused | wrong | 5xx injected | 5xx unexplained | p50 ms | p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in [*document["kinds"], summary]:
        name = f"**{row['kind']}**" if row["kind"] == "all" else row["kind"]
        lines.append(
            f"| {name} | {row['requests']:,} | {row['forwarded']:,} | {row['refused']:,} | {row['wrong']:,} | "
            f"{row['injected_5xx']:,} | {row['unexplained_5xx']:,} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} |"
        )
    lines += [
        "",
        f"{summary['requests']:,} requests in {settings['seconds_run']:.1f} s ({summary['rps']:,.0f} req/s); "
        f"{_cpu(summary)} "
        "The `all` latency leaves out the slow-upstream case (it waits out the 5 s upstream timeout).",
        "",
        *_resources_table(document["resources"]),
        "",
        *_events_table(document["events"]),
        "",
        *_records(document["records"], verdict),
        "",
        _verdict_line(verdict),
        "",
    ]
    return "\n".join(lines)


def _resources_table(resources: dict[str, Any]) -> list[str]:
    start, peak, end = resources["start"], resources["peak"], resources["end"]
    return [
        "| scopegate process | start | peak | end |",
        "|---|--:|--:|--:|",
        f"| RSS MB | {start['rss_mb']:.1f} | {peak['rss_mb']:.1f} (VmHWM {peak['peak_mb']:.1f}) "
        f"| {end['rss_mb']:.1f} |",
        f"| open fds | {start['fds']:.0f} | {peak['fds']:.0f} | {end['fds']:.0f} |",
    ]


def _events_table(events: list[dict[str, Any]]) -> list[str]:
    lines = ["| step | at s | confirmed at s | what |", "|---|--:|--:|---|"]
    for event in events:
        confirmed = "**not confirmed**" if event["confirmed_at_s"] is None else f"{event['confirmed_at_s']:.1f}"
        detail = f" — {event['detail']}" if event["detail"] else ""
        lines.append(f"| {event['step']} | {event['at_s']:.1f} | {confirmed} | {event['what']}{detail} |")
    return lines


def _records(records: dict[str, Any], verdict: dict[str, Any]) -> list[str]:
    fetches = ", ".join(f"{keys}: {n}" for keys, n in records["jwks_fetches"].items())
    lines = [
        f"Records: the upstream got {records['upstream_requests']:,} requests "
        f"({_repeats(records['upstream_repeats'])}); the decision log has {records['decision_log_lines']:,} lines, "
        f"{verdict['framing_log_lines']:,} of them for the {verdict['framing_answered']:,} refused framings; "
        f"/metrics counted {_count(verdict['metrics_counted'])} requests of the {verdict['requests_sent']:,} sent. "
        f"JWKS fetches by key set: {fetches or 'none'}.",
    ]
    if records["scopegate_error_lines"]:
        lines.append(f"scopegate logged {verdict['scopegate_error_lines']} error-level lines (see soak.json).")
    lines += [f"Note: {note}" for note in records["notes"]]
    return lines


def _cpu(summary: dict[str, Any]) -> str:
    if summary["cpu_seconds"] is None:
        return "scopegate's CPU time: unknown (it was gone)."
    return f"scopegate used {summary['cpu_seconds']:.1f} s of CPU ({summary['cpu_us_per_request']:.0f} µs per request)."


def _repeats(repeats: dict[str, int]) -> str:
    if not repeats:
        return "each once"
    cases = ", ".join(f"{n:,} of {case}" for case, n in repeats.items())
    return f"twice: {cases}, idempotent requests the pool sent again on a new connection after the upstream cut one"


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _verdict_line(verdict: dict[str, Any]) -> str:
    missing = ", ".join(verdict["kinds_not_exercised"]) or "none"
    return (
        f"Verdict: {'CLEAN' if verdict['clean'] else 'NOT CLEAN'}: {verdict['wrong_decisions']} wrong decisions, "
        f"{verdict['unexplained_5xx']} unexplained 5xx ({verdict['injected_5xx']} injected), "
        f"{verdict['no_answer']} without an answer; kinds not exercised: {missing}; timeline "
        f"{'confirmed' if verdict['events_confirmed'] else 'NOT confirmed'}; fds {verdict['fds_start']:.0f} -> "
        f"{verdict['fds_end']:.0f} (bound {verdict['fds_bound']:.0f}); scopegate exit status after SIGTERM: "
        f"{verdict['exit_status']}"
        + (
            "."
            if verdict["exited_during_load_at_s"] is None
            else f"; **scopegate exited during the load**, {verdict['exited_during_load_at_s']:.1f} s in."
        )
    )
