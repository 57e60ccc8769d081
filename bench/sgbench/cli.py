"""The command line of ./bench/run: options, presets, and the order of things.

keys and tokens (cached) -> fixtures (upstream + issuer) -> for each round, each target x scenario: a fresh start,
checks, warm-up, measured run -> in-process crypto cost -> medians, table, bench/results/latest.{json,md}
-> optional py-spy profile runs. `--memory` runs memory.py instead (scopegate's RSS across a million distinct
tokens, bench/results/memory.{json,md}). Every process started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import checks, keys, memory, profiling, report, runner
from .cryptocost import verify_costs
from .fixtures import choose_issuer_port, issuer_url, start_fixtures
from .layout import CACHE_DIR, REPO_DIR, RESULTS_DIR, VENV_BIN
from .load import SCENARIOS, Load, run_wrk
from .procs import HarnessError, ProcessSet
from .targets import TARGETS, Context, Running, Target
from .tokens import ensure_tokens

DEFAULT_SECONDS = 10
DEFAULT_ROUNDS = 3
QUICK_SECONDS = 3
QUICK_ROUNDS = 1
# Fresh-token pool sizing, in tokens per second of load: above the fastest target seen on a 2-vCPU machine
# (Envoy without its JWT cache: ~2,500/s with ES384, ~16,000/s with RS256), so a run never reuses a token.
POOL_RATES = {"ES384": 6000, "RS256": 20000}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark scopegate against Envoy, nginx and aiohttp baselines on loopback (see bench/README.md).",
    )
    parser.add_argument("--seconds", type=_positive, help=f"measured seconds per run (default {DEFAULT_SECONDS})")
    parser.add_argument("--rounds", type=_non_negative, help=f"interleaved rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=_non_negative, default=2, help="warm-up seconds before each run (default 2)")
    parser.add_argument("--connections", type=_positive, default=32, help="wrk connections (default 32)")
    parser.add_argument("--targets", type=_names, help=f"comma-separated subset of: {','.join(TARGETS)}")
    parser.add_argument("--scenarios", type=_names, help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS} s x {QUICK_ROUNDS} round")
    parser.add_argument("--smoke", action="store_true", help="start each target, check it, 1 s of wrk per scenario")
    parser.add_argument("--profile", metavar="TARGET", help="after the rounds, one py-spy profiled run per scenario")
    parser.add_argument(
        "--pool-rate",
        type=_positive,
        help="fresh-token pools hold this many tokens per second of load "
        f"(default: {', '.join(f'{alg} {rate}' for alg, rate in POOL_RATES.items())})",
    )
    parser.add_argument(
        "--scopegate-ref",
        metavar="REF",
        help="run scopegate from this git revision's src/ (git archive; default: the working tree as installed)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (configs, logs)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead of the rounds: scopegate's RSS while it gets --tokens distinct tokens (bench/results/memory.md)",
    )
    parser.add_argument(
        "--tokens",
        type=_positive,
        help=f"--memory: distinct tokens, one request each (default {memory.DEFAULT_TOKENS:,})",
    )
    parser.add_argument(
        "--sample-every",
        type=_positive,
        help=f"--memory: read RSS every this many requests (default {memory.DEFAULT_SAMPLE_EVERY:,})",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        help=f"--memory: stop the load after this long (default {memory.DEFAULT_MAX_MINUTES})",
    )
    args = parser.parse_args(argv)
    _check_memory_options(parser, args)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    args.rounds = args.rounds if args.rounds is not None else (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    if args.smoke:
        args.seconds, args.warmup, args.rounds = 1, 0, 0
    _check_names(parser, args.targets, TARGETS, "--targets")
    _check_names(parser, args.scenarios, SCENARIOS, "--scenarios")
    if args.profile is not None:
        _check_names(parser, [args.profile], TARGETS, "--profile")
        if not TARGETS[args.profile].python:
            parser.error(f"--profile: {args.profile} is not a Python target (py-spy profiles Python only)")
    return args


def _check_memory_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    memory_only = {"--tokens": args.tokens, "--sample-every": args.sample_every, "--max-minutes": args.max_minutes}
    rounds_only = {
        "--seconds": args.seconds,
        "--rounds": args.rounds,
        "--targets": args.targets,
        "--scenarios": args.scenarios,
        "--pool-rate": args.pool_rate,
        "--profile": args.profile,
        "--quick": args.quick or None,
        "--smoke": args.smoke or None,
    }
    if not args.memory:
        given = [name for name, value in memory_only.items() if value is not None]
        if given:
            parser.error(f"{', '.join(given)}: only with --memory")
        return
    given = [name for name, value in rounds_only.items() if value is not None]
    if given:
        parser.error(f"--memory runs on its own: drop {', '.join(given)}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error("--max-minutes: must be more than 0")
    args.tokens = args.tokens or memory.DEFAULT_TOKENS
    args.sample_every = args.sample_every or memory.DEFAULT_SAMPLE_EVERY
    args.max_minutes = args.max_minutes or memory.DEFAULT_MAX_MINUTES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _check_names(parser: argparse.ArgumentParser, names: list[str] | None, known: Collection[str], option: str) -> None:
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must always reach the cleanup, even when started from a script that ignores SIGINT for its
    # background jobs; SIGTERM too, and SIGHUP unless it is ignored on purpose (nohup).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _exit_on_signal)
    procs = ProcessSet()
    work = Path(tempfile.mkdtemp(prefix="sgbench-"))
    work.chmod(0o755)  # nginx workers (user nobody) read the issuer's files from here
    keep = args.keep_work
    try:
        return run(args, procs, work)
    except HarnessError as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr, flush=True)
        keep = True
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if keep:
            print(f"bench: work directory (configs, logs) kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    print(f"\nbench: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, procs: ProcessSet, work: Path) -> int:
    if args.memory:
        soak = memory.Settings(args.tokens, args.sample_every, args.max_minutes, args.connections)
        scopegate_src = export_scopegate(args.scopegate_ref, work) if args.scopegate_ref else None
        return memory.run(soak, procs, work, scopegate_src, _memory_meta(args))
    selected = [TARGETS[name] for name in (args.targets or TARGETS)]
    pairs = runner.plan(selected, args.scenarios)
    profile_pairs = runner.plan([TARGETS[args.profile]], args.scenarios) if args.profile else []
    if not pairs and not profile_pairs:
        raise HarnessError("nothing to run: no selected target has any of the selected scenarios")
    signing_keys = keys.load_or_create(CACHE_DIR / "keys")
    issuer_port = choose_issuer_port(CACHE_DIR)
    measured = pairs if args.rounds > 0 or args.smoke else []
    pool_size = _pool_sizes([*measured, *profile_pairs], args)
    tokens = ensure_tokens(CACHE_DIR, signing_keys, issuer_url(issuer_port), pool_size)
    fixtures = start_fixtures(procs, work, signing_keys, issuer_port)
    scopegate_src = export_scopegate(args.scopegate_ref, work) if args.scopegate_ref else None
    context = Context(procs, work, fixtures, scopegate_src=scopegate_src)
    load = Load(args.connections, tokens, pool_size)
    if args.smoke:
        return smoke(context, load, selected, args.scenarios)
    settings = runner.Settings(args.seconds, args.warmup, args.rounds)
    if args.rounds > 0 and pairs:
        runs = runner.run_rounds(context, load, pairs, settings)
        costs = verify_costs(signing_keys, tokens.warm, fixtures.issuer)
        write_results(_meta(args), runs, pairs, costs)
    if profile_pairs:
        profile(context, load, profile_pairs, settings)
    return 0


def write_results(
    meta: dict[str, Any], runs: list[dict[str, Any]], pairs: Sequence[tuple[Target, str]], costs: dict[str, Any]
) -> None:
    """Medians, ratios and the crypto limit: printed, and written to bench/results/latest.{md,json}."""
    rows = report.summarize(runs, [(target.name, scenario) for target, scenario in pairs])
    limits = report.crypto_limits(rows, costs)
    text = report.markdown(meta, rows, costs, limits)
    print("\n" + text, flush=True)
    ratios = {
        "vs_envoy": f"RPS / {report.REFERENCE} warm RPS",
        "vs_envoy_logged": f"RPS / {report.REFERENCE_LOGGED} warm RPS",
        "vs_envoy_same_scenario": f"RPS / {report.REFERENCE} RPS on the same scenario",
    }
    document = {
        "meta": {**meta, "ratios": ratios, "envoy_targets": report.envoy_targets(rows)},
        "summary": rows,
        "crypto": costs,
        "crypto_limit": limits,
        "runs": runs,
    }
    report.write_json(RESULTS_DIR / "latest.json", document)
    (RESULTS_DIR / "latest.md").write_text(text)
    print(f"bench: wrote {RESULTS_DIR / 'latest.md'} and {RESULTS_DIR / 'latest.json'}", flush=True)


def export_scopegate(ref: str, work: Path) -> Path:
    """`git archive REF src` unpacked into the work directory; the repository itself is only read."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_DIR), "archive", "--format=tar", ref, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise HarnessError(f"--scopegate-ref {ref}: git archive failed: {archive.stderr.decode(errors='replace')}")
    destination = work / "scopegate-ref"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination / "src"


def _pool_sizes(pairs: Sequence[tuple[Target, str]], args: argparse.Namespace) -> dict[str, int]:
    """Tokens per algorithm a fresh run may send: rate x (warm-up + run) x 1.2, in thousands."""
    algs = sorted({SCENARIOS[scenario].alg for _, scenario in pairs if SCENARIOS[scenario].fresh})
    sizes = {}
    for alg in algs:
        rate = args.pool_rate or POOL_RATES[alg]
        sizes[alg] = math.ceil(rate * (args.seconds + args.warmup) * 1.2 / 1000) * 1000
    return sizes


def smoke(context: Context, load: Load, targets: Sequence[Target], scenarios: Sequence[str] | None) -> int:
    """Each target once: start, check its answers, one second of wrk per scenario. Exit 1 on any unclean run."""
    failed = 0
    for target in targets:
        names = [name for name in target.scenarios if scenarios is None or name in scenarios]
        if not names:
            continue
        print(f"bench: smoke: {target.name} ...", flush=True)
        running = target.start(context)
        try:
            checks.check(target, running, load.tokens)
            print(f"bench:   {target.name}: checks passed (200/401/403 as expected)", flush=True)
            for name in names:
                result = run_wrk(
                    context.procs, context.work / target.name / "wrk.log", running.port, SCENARIOS[name], load, 1
                )
                ok = result.non2xx == 0 and result.socket_errors == 0
                failed += not ok
                print(
                    f"bench:   {target.name} {name}: {result.rps:,.0f} req/s, {result.non2xx} non-2xx, "
                    f"{result.socket_errors} socket errors{'' if ok else '  !! NOT CLEAN'}",
                    flush=True,
                )
        finally:
            context.procs.stop(running.proc)
    print(f"bench: smoke {'passed' if not failed else f'FAILED: {failed} unclean run(s)'}", flush=True)
    return 1 if failed else 0


def profile(context: Context, load: Load, pairs: Sequence[tuple[Target, str]], settings: runner.Settings) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for target, scenario in pairs:
        output = RESULTS_DIR / f"profile-{target.name}-{scenario}.txt"
        print(f"bench: profiling {target.name} {scenario} with py-spy -> {output}", flush=True)

        def attach(running: Running, output: Path = output) -> profiling.Recorder:
            return profiling.Recorder(context.procs, running.proc.pid, output, context.work / "py-spy.log")

        run = runner.measure(context, load, target, scenario, settings, profile=attach)
        print(f"bench:   (profiled, not in the medians) {runner.describe(run)}", flush=True)
        summary = output.with_name(output.stem + "-top.txt")
        print("\n".join(summary.read_text().splitlines()[:20]), flush=True)


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    return _run_meta(
        args,
        {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "connections": args.connections,
            "wrk_threads": 1,
            "pool_rates": {alg: args.pool_rate or rate for alg, rate in POOL_RATES.items()},
        },
    )


def _memory_meta(args: argparse.Namespace) -> dict[str, Any]:
    return _run_meta(
        args,
        {
            "tokens": args.tokens,
            "sample_every": args.sample_every,
            "max_minutes": args.max_minutes,
            "connections": args.connections,
            "token_cache_entries": memory.CACHE_ENTRIES,
            "algorithm": keys.MEMORY_ALGORITHM,
        },
    )


def _run_meta(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """What every results file says about its run: when, on what, which code, which versions, which settings."""
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_description(),
        "commit": commit_description(args.scopegate_ref),
        "versions": _versions(),
        "settings": settings,
    }


def _output(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (result.stdout + result.stderr).strip()


def machine_description() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {model}, Linux {platform.release()}"


def commit_description(ref: str | None) -> str:
    """Which scopegate was measured: a revision (--scopegate-ref), or HEAD and whether src/ had local changes."""
    if ref is not None:
        return f"{ref} ({_output(['git', '-C', str(REPO_DIR), 'rev-parse', '--short', ref])}, via --scopegate-ref)"
    commit = _output(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"])
    return f"{commit}{' + uncommitted changes in src/' if dirty else ''}"


def _versions() -> str:
    nginx = _output(["nginx", "-v"]).rpartition("/")[2]
    # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    envoy = re.search(r"version: [0-9a-f]+/([^/\s]+)", _output([str(VENV_BIN / "envoy"), "--version"]))
    wrk = _output(["wrk", "-v"]).split()
    try:
        scopegate = importlib.metadata.version("scopegate")
    except importlib.metadata.PackageNotFoundError:
        scopegate = "?"
    return (
        f"scopegate {scopegate}, Python {platform.python_version()}, Envoy {envoy.group(1) if envoy else '?'}, "
        f"nginx {nginx}, wrk {wrk[1] if len(wrk) > 1 else '?'}"
    )
