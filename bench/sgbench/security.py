"""`./bench/security`: the figures SECURITY.md states, measured again in one run.

It runs the hostile-input and fault-injection tests (real processes on loopback, see each file) and counts their
cases, then the soak (`sgbench.soak`) for `--soak-seconds`, and prints one table: cases per group and how many
failed, the soak's requests, wrong decisions, unexplained 5xx, RSS and fds. It writes bench/results/security.md
and .json, and exits 1 when any case failed or the soak was not clean. No figure here is a timing: the run is
about what got through, not how fast.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import soak

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"

# (group, what it tries, test files): each case is one hostile input or one injected fault, checked end to end.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("HTTP framing", "raw requests smuggling or breaking HTTP/1.1 (CL+TE, obs-fold, bad chunks, ...)", (
        "tests/test_framing.py", "tests/test_wire.py",
    )),
    ("paths", "encoded slashes, dot segments, path parameters, control characters, properties", (
        "tests/test_path_attacks.py", "tests/test_routing.py",
    )),
    ("tokens", "forged, altered, expired, confused and malformed tokens, properties", (
        "tests/test_tokens.py", "tests/test_bearer.py",
    )),
    ("tokens vs Envoy", "one corpus of tokens through Envoy jwt_authn and scopegate: same answers", (
        "tests/test_differential.py",
    )),
    ("request-path bugs", "each bug of issue #8, through the real proxy", ("tests/test_hardening.py",)),
    ("upstream faults", "refused, reset, hung, 5xx, huge and endless bodies, stale connections, early answers", (
        "tests/test_faults_upstream.py",
    )),
    ("client faults", "leaving mid-upload/-download, slowloris, silent and 2000 idle connections", (
        "tests/test_faults_client.py",
    )),
    ("JWKS faults", "issuer down, slow, garbage, huge, empty, gzip, key rotation under load", (
        "tests/test_faults_jwks.py",
    )),
    ("operations faults", "SIGHUP storms, config edits under load, a worker killed, drain at grace", (
        "tests/test_faults_ops.py", "tests/test_operations.py",
    )),
    ("decision endpoint", "spoofed original requests, non-normal paths, behind real nginx and Envoy", (
        "tests/test_decision.py", "tests/test_decision_ingress.py",
    )),
)  # fmt: skip


@dataclass(frozen=True)
class Tally:
    group: str
    tries: str
    cases: int
    failed: int
    skipped: int


def run_tests(files: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """(cases, failed, skipped) per test file, from one pytest run's JUnit XML."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "junit.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files],
            cwd=ROOT,
            check=False,
        )
        tree = ET.parse(report)  # noqa: S314 -- our own pytest's report
    counts: dict[str, list[int]] = {}
    for case in tree.iter("testcase"):
        # "tests.test_framing" (or "tests.test_framing.TestClass"): the module names the file.
        module = next((part for part in (case.get("classname") or "").split(".") if part.startswith("test_")), "")
        tally = counts.setdefault(f"tests/{module}.py", [0, 0, 0])
        tally[0] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            tally[1] += 1
        if case.find("skipped") is not None:
            tally[2] += 1
    return {name: (cases, failed, skipped) for name, (cases, failed, skipped) in counts.items()}


def tallies(counts: dict[str, tuple[int, int, int]]) -> list[Tally]:
    out = []
    for group, tries, files in GROUPS:
        cases = failed = skipped = 0
        for file in files:
            c, f, s = counts.get(file, (0, 0, 0))
            cases, failed, skipped = cases + c, failed + f, skipped + s
        out.append(Tally(group, tries, cases, failed, skipped))
    return out


def markdown(groups: list[Tally], soaked: dict[str, Any]) -> str:
    lines = ["| group | what is tried | cases | failed | skipped |", "|---|---|--:|--:|--:|"]
    lines += [f"| {t.group} | {t.tries} | {t.cases} | {t.failed} | {t.skipped} |" for t in groups]
    total = sum(t.cases for t in groups)
    lines.append(
        f"| **all** | | **{total}** | **{sum(t.failed for t in groups)}** | {sum(t.skipped for t in groups)} |"
    )
    verdict, summary, resources = soaked["verdict"], soaked["summary"], soaked["resources"]
    lines += [
        "",
        f"Soak ({soaked['settings']['seconds']:g} s, a key rotation and config reloads underneath):",
        "",
        "| requests | wrong decisions | unexplained 5xx | injected 5xx | no answer | RSS MB start / peak / end |"
        " fds start / end (bound) |",
        "|--:|--:|--:|--:|--:|--:|--:|",
        f"| {summary['requests']:,} | {verdict['wrong_decisions']} | {verdict['unexplained_5xx']} |"
        f" {verdict['injected_5xx']:,} | {verdict['no_answer']} |"
        f" {_rss(resources)} | {verdict['fds_start']:g} / {verdict['fds_end']:g} ({verdict['fds_bound']:g}) |",
    ]
    return "\n".join(lines) + "\n"


def _rss(resources: dict[str, Any]) -> str:
    return " / ".join(f"{resources[when]['rss_mb']:.1f}" for when in ("start", "peak", "end"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/security", description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak-seconds", type=float, default=soak.DEFAULT_SECONDS)
    args = parser.parse_args(argv)
    files = [file for _, _, group_files in GROUPS for file in group_files]
    groups = tallies(run_tests(files))
    with tempfile.TemporaryDirectory() as work:
        soaked = soak.run(soak.Settings(seconds=args.soak_seconds, results_dir=Path(work), quiet=True))
    table = markdown(groups, soaked)
    print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "security.md").write_text(table, encoding="utf-8")
    document = {"groups": [t.__dict__ for t in groups], "soak_verdict": soaked["verdict"]}
    (RESULTS_DIR / "security.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    clean = soaked["verdict"]["clean"] and not any(t.failed for t in groups)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
