"""Medians over rounds, the comparison ratios, the crypto limit, and the two outputs: latest.json and latest.md.

A run is clean when wrk saw no socket error, no status >= 400 and the token pool did not wrap. Medians are taken
over the clean rounds; when none is clean the row says so and falls back to all rounds, never silently.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .load import SCENARIOS

REFERENCE = "envoy-jwt"  # `vs Envoy` (its warm RPS) and `vs Envoy same scenario`
REFERENCE_LOGGED = "envoy-jwt-logged"  # `vs Envoy logged` (its warm RPS): Envoy doing scopegate's per-request extras
Row = dict[str, Any]

# One sentence per Envoy target, for the header of latest.md and latest.json (what each one does per request).
ENVOY_TARGETS = {
    "envoy-plain": "Envoy's router alone: no token check, no access log, no identity headers.",
    "envoy-jwt": (
        "jwt_authn (remote JWKS; signature, iss, aud, exp) with its cache of verified tokens (jwt_cache_config) "
        "and RBAC on the read:report scope; no access log, no claim headers to the upstream."
    ),
    "envoy-jwt-nocache": (
        "envoy-jwt without jwt_cache_config (every request verifies a signature); no access log, no claim headers."
    ),
    "envoy-jwt-logged": (
        "envoy-jwt (same cache, same RBAC) plus what scopegate also does per request: one JSON access-log line "
        "(envoy.access_loggers.file: route, response code details, flags, status, method, path, sub, client_id, "
        "duration, request id, start time) to a file, and identity headers to the upstream (x-auth-subject, "
        "x-auth-client-id, x-auth-scopes via claim_to_headers; x-auth-route; x-request-id)."
    ),
}


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[Row]:
    rows = [
        _row(target, scenario, [r for r in runs if (r["target"], r["scenario"]) == (target, scenario)])
        for target, scenario in pairs
    ]
    by_key = {(row["target"], row["scenario"]): row for row in rows}
    reference_warm = by_key.get((REFERENCE, "warm"))
    logged_warm = by_key.get((REFERENCE_LOGGED, "warm"))
    for row in rows:
        row["vs_envoy"] = _ratio(row, reference_warm)
        row["vs_envoy_logged"] = _ratio(row, logged_warm)
        same = by_key.get((REFERENCE, row["scenario"]))
        row["vs_envoy_same_scenario"] = _ratio(row, same) if row["scenario"] != "warm" else None
    return rows


def _row(target: str, scenario: str, group: list[dict[str, Any]]) -> Row:
    clean = [run for run in group if run["clean"]]
    basis = clean or group
    return {
        "target": target,
        "scenario": scenario,
        "rounds": len(group),
        "clean_rounds": len(clean),
        "rps": _median([run["rps"] for run in basis]),
        "p50_ms": _median([run["latency_us"]["p50"] / 1000 for run in basis]),
        "p99_ms": _median([run["latency_us"]["p99"] / 1000 for run in basis]),
        "cpu_us_per_request": _median([run["cpu_us_per_request"] for run in basis]),
        "cpu_cores_used": _median([run["cpu_cores_used"] for run in basis]),
        "rss_idle_mb": _median([run["rss_idle_mb"] for run in basis]),
        "rss_end_mb": _median([run["rss_end_mb"] for run in basis]),
        "non2xx": sum(run["non2xx"] for run in group),
        "socket_errors": sum(run["socket_errors"] for run in group),
        "pool_wraps": max((run["pool_wraps"] for run in group), default=0),
    }


def envoy_targets(rows: Sequence[Row]) -> dict[str, str]:
    """What each Envoy target in the table does, in the table's order."""
    names = dict.fromkeys(row["target"] for row in rows)
    return {name: ENVOY_TARGETS[name] for name in names if name in ENVOY_TARGETS}


def _ratio(row: Row, reference: Row | None) -> float | None:
    if reference is None or not reference["rps"] or reference["clean_rounds"] == 0 or row["clean_rounds"] == 0:
        return None
    return float(row["rps"] / reference["rps"])


def crypto_limits(rows: Sequence[Row], costs: dict[str, Any], target: str = "scopegate") -> list[dict[str, Any]]:
    """For each fresh scenario of `target`: 1 / (one verification + the warm-cache CPU cost of a request)."""
    by_key = {(row["target"], row["scenario"]): row for row in rows}
    warm = by_key.get((target, "warm"))
    limits = []
    for name, scenario in SCENARIOS.items():
        fresh = by_key.get((target, name))
        if not scenario.fresh or fresh is None or warm is None or scenario.alg not in costs:
            continue
        verify_us = float(costs[scenario.alg]["verify_us"])
        limit_rps = 1e6 / (verify_us + warm["cpu_us_per_request"])
        limits.append(
            {
                "target": target,
                "scenario": name,
                "verify_us": verify_us,
                "warm_cpu_us_per_request": warm["cpu_us_per_request"],
                "limit_rps": limit_rps,
                "rps": fresh["rps"],
                "fraction_of_limit": fresh["rps"] / limit_rps,
            }
        )
    return limits


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    return f"{value:{spec}}{suffix}"


def _notes(row: Row) -> str:
    notes = []
    if row["clean_rounds"] < row["rounds"]:
        notes.append(f"{row['rounds'] - row['clean_rounds']}/{row['rounds']} rounds not clean")
    if row["non2xx"]:
        notes.append(f"{row['non2xx']} non-2xx")
    if row["socket_errors"]:
        notes.append(f"{row['socket_errors']} socket errors")
    if row["pool_wraps"]:
        notes.append("token pool wrapped (tokens repeated)")
    if row["rounds"] and row["clean_rounds"] == 0:
        notes.append("**no clean round: medians of all rounds**")
    return "; ".join(notes)


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| target | scenario | RPS | p50 ms | p99 ms | CPU µs/req | cores | RSS MB idle→end | vs Envoy "
        "| vs Envoy logged | vs Envoy same scenario | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']} | {row['scenario']} | {_fmt(row['rps'], ',.0f')} | {_fmt(row['p50_ms'], '.2f')} "
            f"| {_fmt(row['p99_ms'], '.2f')} | {_fmt(row['cpu_us_per_request'], ',.0f')} "
            f"| {_fmt(row['cpu_cores_used'], '.2f')} "
            f"| {_fmt(row['rss_idle_mb'], '.0f')}→{_fmt(row['rss_end_mb'], '.0f')} "
            f"| {_fmt(row['vs_envoy'], '.2f', '×')} | {_fmt(row.get('vs_envoy_logged'), '.2f', '×')} "
            f"| {_fmt(row['vs_envoy_same_scenario'], '.2f', '×')} "
            f"| {_notes(row)} |"
        )
    return "\n".join(lines)


def crypto_section(costs: dict[str, Any], limits: Sequence[dict[str, Any]]) -> str:
    lines = ["In-process signature cost (pyjwt over cryptography, median of single calls):", ""]
    for alg, cost in costs.items():
        lines.append(f"- {alg}: verify {cost['verify_us']:.0f} µs, whole `jwt.decode` {cost['decode_us']:.0f} µs")
    if limits:
        lines += [
            "",
            "Crypto limit of one scopegate process: 1 / (one verification + scopegate's warm-cache CPU per request).",
            "",
            "| scenario | verify µs | warm CPU µs/req | limit RPS | scopegate RPS | of limit |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for limit in limits:
            lines.append(
                f"| {limit['scenario']} | {limit['verify_us']:.0f} | {limit['warm_cpu_us_per_request']:.0f} "
                f"| {limit['limit_rps']:,.0f} | {limit['rps']:,.0f} | {100 * limit['fraction_of_limit']:.0f}% |"
            )
        if any(limit["fraction_of_limit"] > 1 for limit in limits):
            lines += [
                "",
                "Above 100%: the warm run's CPU per request already includes a signature verification (no cache of "
                "verified tokens), so the limit counts it twice.",
            ]
    return "\n".join(lines)


def markdown(meta: dict[str, Any], rows: Sequence[Row], costs: dict[str, Any], limits: Sequence[dict[str, Any]]) -> str:
    settings = meta["settings"]
    header = [
        f"# scopegate benchmark ({meta['started']})",
        "",
        f"{meta['machine']} · commit {meta['commit']} · {meta['versions']}",
        "",
        f"wrk -t1 -c{settings['connections']} on loopback, {settings['seconds']} s per run after "
        f"{settings['warmup']} s warm-up, every target restarted for each run, {settings['rounds']} interleaved "
        "round(s), medians of the clean rounds. CPU µs/req: utime+stime of the target's whole process tree over the "
        "run / requests; cores: CPU seconds / run seconds. vs Envoy: RPS / envoy-jwt warm RPS; vs Envoy logged: "
        "RPS / envoy-jwt-logged warm RPS; vs Envoy same scenario: RPS / envoy-jwt RPS on the same scenario. "
        + " ".join(f"{name}: {text}" for name, text in envoy_targets(rows).items()),
        "",
    ]
    return "\n".join([*header, table(rows), "", crypto_section(costs, limits), ""])
