"""`./bench/run --memory`: does scopegate's RSS stay flat across a million distinct tokens?

The verified-token cache is bounded (`auth.token_cache_entries`, 4096 by default, least recently used first), so
once it is full a new token should cost a verification and an eviction, never memory. One scopegate process (the
`scopegate` target's way: decision log on stdout to a file, one core) with templates/scopegate-memory.yaml (EdDSA
allowed; the issuer's JWKS gets the cached Ed25519 key besides its usual two) in front of the usual nginx upstream:

1. the EdDSA pool (`tokens.ensure_memory_pool`): `--tokens` distinct tokens, minted in parallel once and cached;
2. start scopegate, wait for /readyz, read its idle RSS, then check it as the rounds do (200/401/403, identity);
3. send every pool token once (`tokenload.drive`: `--connections` keep-alive connections, exactly one request per
   token), every answer must be a 200; every `--sample-every` requests read VmRSS and VmHWM (peak) from
   /proc/<pid>/status (summed over the process's session, one process here) and the cache's entries from the admin
   /metrics, and truncate the decision log once it passes LOG_LIMIT_BYTES (a million lines are ~360 MB);
4. once the cache metrics have caught up (scopegate syncs them every second): the end sample, and the cache's
   entries, lookups (hit/miss) and evictions from /metrics;
5. the table and the verdict: idle RSS against the claim's 60 MB, the first sample (the cache long full by then)
   against the end; bench/results/memory.{md,json}.

The load stops after `--max-minutes` (default 15) or after MAX_NOT_OK requests without a 200; the partial table is
still written, marked so. Exit status 1 unless every token got its 200 and both claims held.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks, keys, net
from .fixtures import choose_issuer_port, issuer_url, start_fixtures
from .layout import CACHE_DIR, RESULTS_DIR
from .procs import HarnessError, ProcessSet, session_cpu_seconds, session_members
from .report import write_json
from .targets import Context, Running, Target, scopegate_launcher
from .tokenload import Outcome, drive
from .tokens import ensure_memory_pool, ensure_tokens

DEFAULT_TOKENS = 1_000_000
DEFAULT_SAMPLE_EVERY = 50_000
DEFAULT_MAX_MINUTES = 15
CACHE_ENTRIES = 4096  # auth.token_cache_entries in templates/scopegate-memory.yaml: scopegate's default
IDLE_LIMIT_MB = 60.0  # the claim: idle RSS per process at most this
# "Flat": from the first sample (cache full) to the end, RSS grows by at most this. A leak of one small object per
# token (a 56-byte tuple, say) would add about 50 MB over a million tokens.
FLAT_TOLERANCE_MB = 5.0
LOG_LIMIT_BYTES = 64 * 2**20  # the decision log is truncated at a sample once it is larger than this
MAX_NOT_OK = 1000  # stop the load after this many requests without a 200: the run measures nothing useful then
METRICS_SYNC_WAIT_SECONDS = 2.5  # scopegate copies its cache counters into /metrics every second

TARGET = Target(
    "scopegate",
    auth=True,
    scenarios=(),
    python=True,
    launch=scopegate_launcher(
        "scopegate",
        workers=1,
        template="scopegate-memory.yaml",
        extra_values={"TOKEN_CACHE_ENTRIES": CACHE_ENTRIES},
        truncatable_log=True,
    ),
    identity=True,
)


@dataclass(frozen=True)
class Settings:
    tokens: int
    sample_every: int
    max_minutes: float
    connections: int


class _Sampler:
    """RSS, peak RSS and cache entries of the running scopegate at each checkpoint; keeps its decision log small."""

    def __init__(self, running: Running, settings: Settings) -> None:
        self.running = running
        self.settings = settings
        self.samples: list[dict[str, Any]] = []
        self.log_bytes = 0  # decision-log bytes truncated away so far
        self.started = self._last_at = time.monotonic()
        self._last_requests = 0

    def begin(self) -> None:
        """The load starts now: `seconds` and the first rate count from here."""
        self.started = self._last_at = time.monotonic()
        self._last_requests = 0

    def sample(self, requests: int, label: str | None = None, not_ok: int = 0) -> dict[str, Any]:
        memory = session_memory_kb(self.running.proc.pid)
        metrics = _metrics(self.running)
        now = time.monotonic()
        rate = None
        if requests > self._last_requests and now > self._last_at:
            rate = (requests - self._last_requests) / (now - self._last_at)
            self._last_requests, self._last_at = requests, now
        sample = {
            "label": label or f"{requests:,}",
            "requests": requests,
            "seconds": now - self.started if requests else 0.0,
            "rps": rate,
            "rss_mb": memory["VmRSS"] / 1024,
            "peak_mb": memory["VmHWM"] / 1024,
            "processes": memory["processes"],
            "cache_entries": int(metrics.get("scopegate_token_cache_entries", -1)),
            "not_ok": not_ok,
        }
        self.samples.append(sample)
        return sample

    def checkpoint(self, outcome: Outcome) -> str | None:
        """At every `--sample-every` requests: a sample and a progress line; a reason to stop, if any."""
        if not self.running.proc.alive():
            return f"scopegate exited (status {self.running.proc.popen.returncode})"
        sample = self.sample(outcome.done, not_ok=outcome.not_ok)
        self._trim_log()
        print(
            f"bench:   {outcome.done:>9,}/{self.settings.tokens:,} requests, {sample['seconds']:6.1f} s, "
            f"{sample['rps'] or 0:6,.0f} req/s, RSS {sample['rss_mb']:.1f} MB (peak {sample['peak_mb']:.1f}), "
            f"cache {sample['cache_entries']:,} entries, {outcome.not_ok:,} without a 200",
            flush=True,
        )
        return None

    def _trim_log(self) -> None:
        log = self.running.request_log
        if log is None:
            return
        with contextlib.suppress(OSError):
            size = log.stat().st_size
            if size > LOG_LIMIT_BYTES:
                os.truncate(log, 0)  # opened O_APPEND by scopegate's launcher: its next line starts the file again
                self.log_bytes += size

    def log_bytes_total(self) -> int:
        log = self.running.request_log
        try:
            return self.log_bytes + (log.stat().st_size if log is not None else 0)
        except OSError:
            return self.log_bytes


def run(settings: Settings, procs: ProcessSet, work: Path, scopegate_src: Path | None, meta: dict[str, Any]) -> int:
    all_keys = keys.load_or_create(CACHE_DIR / "keys", (*keys.ALGORITHMS, keys.MEMORY_ALGORITHM))
    signing_keys = {alg: all_keys[alg] for alg in keys.ALGORITHMS}
    issuer_port = choose_issuer_port(CACHE_DIR)
    issuer = issuer_url(issuer_port)
    tokens = ensure_tokens(CACHE_DIR, signing_keys, issuer, {})
    pool = ensure_memory_pool(CACHE_DIR, all_keys[keys.MEMORY_ALGORITHM], issuer, settings.tokens)
    fixtures = start_fixtures(procs, work, all_keys, issuer_port)
    context = Context(procs, work, fixtures, scopegate_src=scopegate_src)
    print(f"bench: memory: starting scopegate (token cache {CACHE_ENTRIES:,} entries) ...", flush=True)
    running = TARGET.start(context)
    try:
        sampler = _Sampler(running, settings)
        idle = sampler.sample(0, "idle")
        print(f"bench:   idle RSS {idle['rss_mb']:.1f} MB ({idle['processes']} process)", flush=True)
        checks.check(TARGET, running, tokens)
        print("bench:   checks passed (200/401/403 as expected, identity headers, decision log)", flush=True)
        print(
            f"bench: memory: {settings.tokens:,} requests, each with its own EdDSA token, {settings.connections} "
            f"connections, a sample every {settings.sample_every:,} (stops after {settings.max_minutes:g} min) ...",
            flush=True,
        )
        cpu_before = session_cpu_seconds(running.proc.pid)
        sampler.begin()
        outcome = drive(
            running.port,
            pool,
            settings.tokens,
            connections=settings.connections,
            every=settings.sample_every,
            progress=sampler.checkpoint,
            max_seconds=settings.max_minutes * 60,
            max_not_ok=MAX_NOT_OK,
        )
        cpu_seconds = session_cpu_seconds(running.proc.pid) - cpu_before
        if not running.proc.alive():
            raise HarnessError(f"scopegate died during the memory run:\n{running.proc.log_tail()}")
        time.sleep(METRICS_SYNC_WAIT_SECONDS)
        sampler.sample(outcome.done, "end", outcome.not_ok)
        metrics = _metrics(running)
        log_bytes = sampler.log_bytes_total()
    finally:
        procs.stop(running.proc)
        if running.request_log is not None:
            running.request_log.unlink(missing_ok=True)  # up to LOG_LIMIT_BYTES of decision log: nobody reads it
    document = _document(meta, settings, sampler, outcome, cpu_seconds, metrics, log_bytes)
    text = markdown(document)
    print("\n" + text, flush=True)
    write_json(RESULTS_DIR / "memory.json", document)
    (RESULTS_DIR / "memory.md").write_text(text)
    print(f"bench: wrote {RESULTS_DIR / 'memory.md'} and {RESULTS_DIR / 'memory.json'}", flush=True)
    verdict = document["verdict"]
    return 0 if verdict["clean"] and verdict["idle_ok"] and verdict["flat"] else 1


def session_memory_kb(sid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) from /proc/<pid>/status, summed over the session's processes (scopegate: one)."""
    totals = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for pid in session_members(sid):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        totals["processes"] += 1
        for line in lines:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                totals[name] += int(value.split()[0])
    if not totals["processes"]:
        raise HarnessError(f"scopegate (pid {sid}): no process left to read its memory from")
    return totals


def _metrics(running: Running) -> dict[str, float]:
    """The admin /metrics samples, by name with labels (`scopegate_token_cache_lookups_total{result="hit"}`)."""
    if running.admin_port is None:
        raise HarnessError("scopegate: no admin port to read /metrics from")
    return net.scrape_metrics(running.admin_port)


def _document(
    meta: dict[str, Any],
    settings: Settings,
    sampler: _Sampler,
    outcome: Outcome,
    cpu_seconds: float,
    metrics: dict[str, float],
    log_bytes: int,
) -> dict[str, Any]:
    samples = sampler.samples
    idle, end = samples[0], samples[-1]
    loaded = samples[1:]  # every sample taken under load, and the end
    filled = loaded[0] if loaded else end
    after_filled = [sample["rss_mb"] for sample in loaded]
    cache = {
        "capacity": CACHE_ENTRIES,
        "entries": int(metrics.get("scopegate_token_cache_entries", -1)),
        "hits": int(metrics.get('scopegate_token_cache_lookups_total{result="hit"}', 0)),
        "misses": int(metrics.get('scopegate_token_cache_lookups_total{result="miss"}', 0)),
        "evictions": int(metrics.get("scopegate_token_cache_evictions_total", 0)),
    }
    clean = outcome.stopped is None and outcome.done == settings.tokens and outcome.not_ok == 0
    growth = end["rss_mb"] - filled["rss_mb"]
    max_growth = max(after_filled, default=filled["rss_mb"]) - filled["rss_mb"]
    tokens_after = end["requests"] - filled["requests"]
    verdict = {
        "clean": clean,
        "idle_mb": idle["rss_mb"],
        "idle_limit_mb": IDLE_LIMIT_MB,
        "idle_ok": idle["rss_mb"] <= IDLE_LIMIT_MB,
        "filled_at": filled["requests"],
        "filled_mb": filled["rss_mb"],
        "filled_cache_entries": filled["cache_entries"],
        "end_mb": end["rss_mb"],
        "peak_mb": end["peak_mb"],
        "growth_mb": growth,
        "max_growth_mb": max_growth,
        "growth_bytes_per_token": growth * 2**20 / tokens_after if tokens_after > 0 else None,
        "flat_tolerance_mb": FLAT_TOLERANCE_MB,
        "flat": max_growth <= FLAT_TOLERANCE_MB and cache["entries"] <= CACHE_ENTRIES,
        "cache_full": filled["cache_entries"] == CACHE_ENTRIES and cache["entries"] == CACHE_ENTRIES,
    }
    return {
        "meta": meta,
        "samples": samples,
        "load": {
            "tokens": settings.tokens,
            "sent": outcome.sent,
            "done": outcome.done,
            "ok": outcome.ok,
            "not_ok": outcome.not_ok,
            "statuses": {str(status): count for status, count in sorted(outcome.statuses.items())},
            "failures": dict(outcome.failures),
            "seconds": outcome.seconds,
            "rps": outcome.done / outcome.seconds if outcome.seconds > 0 else 0.0,
            "cpu_us_per_request": cpu_seconds * 1e6 / max(outcome.done, 1),
            "stopped": outcome.stopped,
        },
        "cache": cache,
        "decision_log": {"bytes": log_bytes, "truncated_above_bytes": LOG_LIMIT_BYTES},
        "verdict": verdict,
    }


def verdict_line(verdict: dict[str, Any], tokens: int) -> str:
    yes = {True: "holds", False: "**does not hold**"}
    per_token = verdict["growth_bytes_per_token"]
    return (
        f"Verdict: idle RSS {verdict['idle_mb']:.1f} MB (claim ≤ {verdict['idle_limit_mb']:.0f} MB: "
        f"{yes[verdict['idle_ok']]}); RSS {verdict['filled_mb']:.1f} MB at {verdict['filled_at']:,} requests "
        f"(cache {verdict['filled_cache_entries']:,} entries), {verdict['end_mb']:.1f} MB at the end: "
        f"{verdict['growth_mb']:+.1f} MB from {verdict['filled_at']:,} to the end"
        + (f" ({per_token:+.1f} bytes per token)" if per_token is not None else "")
        + f", at most {verdict['max_growth_mb']:+.1f} MB at any sample, peak (VmHWM) {verdict['peak_mb']:.1f} MB "
        f"(claim: flat across {tokens:,} distinct tokens, within {verdict['flat_tolerance_mb']:.0f} MB: "
        f"{yes[verdict['flat']]})."
    )


def markdown(document: dict[str, Any]) -> str:
    meta, load, cache, verdict = document["meta"], document["load"], document["cache"], document["verdict"]
    settings = meta["settings"]
    lines = [
        f"# scopegate memory across {settings['tokens']:,} distinct tokens ({meta['started']})",
        "",
        f"{meta['machine']} · commit {meta['commit']} · {meta['versions']}",
        "",
        f"One scopegate process (`auth.token_cache_entries: {cache['capacity']}`, the default; decision log to a "
        f"file) in front of the nginx upstream; one request per token, each token distinct (EdDSA/Ed25519, "
        f"Logto-shaped), {settings['connections']} keep-alive connections from an asyncio client. RSS: VmRSS of "
        "/proc/<pid>/status; peak: VmHWM; cache entries: `scopegate_token_cache_entries` from the admin /metrics "
        "(synced every second, so a sample under load may lag by up to a second of requests).",
        "",
        "| requests | s | req/s | RSS MB | peak MB | cache entries | without a 200 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sample in document["samples"]:
        rps = sample["rps"]
        lines.append(
            f"| {sample['label']} | {sample['seconds']:.1f} | {f'{rps:,.0f}' if rps else '–'} "
            f"| {sample['rss_mb']:.1f} | {sample['peak_mb']:.1f} | {sample['cache_entries']:,} "
            f"| {sample['not_ok']:,} |"
        )
    statuses = ", ".join(f"{count:,} × {status}" for status, count in load["statuses"].items()) or "none"
    failures = ", ".join(f"{count:,} {kind}" for kind, count in load["failures"].items())
    lines += [
        "",
        f"Load: {load['done']:,} of {load['tokens']:,} requests in {load['seconds']:.1f} s ({load['rps']:,.0f} req/s, "
        f"scopegate {load['cpu_us_per_request']:.0f} µs CPU per request); statuses: {statuses}"
        + (f"; failed without an answer: {failures}" if failures else "")
        + (f"; **stopped early: {load['stopped']}**" if load["stopped"] else "")
        + ".",
        "",
        f"Token cache at the end: {cache['entries']:,} entries of {cache['capacity']:,}; lookups {cache['hits']:,} "
        f"hits, {cache['misses']:,} misses; {cache['evictions']:,} evictions. Decision log: "
        f"{document['decision_log']['bytes'] / 2**20:,.0f} MB written (truncated whenever above "
        f"{document['decision_log']['truncated_above_bytes'] // 2**20} MB).",
        "",
        verdict_line(verdict, settings["tokens"]),
    ]
    if not verdict["clean"]:
        lines += ["", "**Not a clean run**: not every token got its 200 (see the load line); read the table with care."]
    return "\n".join(lines) + "\n"
