"""The soak (`bench/soak`, bench/sgbench/soak.py) for ten seconds: a real `scopegate run` under a mixed load of
allowed, denied and malformed requests on every route kind, while the issuer rotates its key and the config reloads.

Only correctness is asserted, never a rate or a latency (CI is a loaded 2-core machine): every answer right, no 5xx
but the injected ones, every kind of request sent, every timeline step seen by scopegate, its open fds back near
where they started, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _soak() -> ModuleType:
    """bench/sgbench/soak.py (the harness is not an installed package; ./bench/soak puts bench/ on the path too)."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("sgbench.soak")


def test_a_short_soak_answers_every_request_right(tmp_path: Path) -> None:
    soak = _soak()
    document = soak.run(soak.Settings(seconds=10, connections=4, results_dir=tmp_path, quiet=True))
    verdict = document["verdict"]
    problems = document["problems"][:10]
    assert verdict["wrong_decisions"] == 0, problems
    assert verdict["unexplained_5xx"] == 0, problems
    assert verdict["no_answer"] == 0, problems
    assert verdict["kinds_not_exercised"] == []
    assert all(row["requests"] > 0 for row in document["kinds"]), document["kinds"]
    assert verdict["events_confirmed"], document["events"]
    assert verdict["fds_end"] <= verdict["fds_bound"], document["resources"]
    assert verdict["exit_status"] == 0
    assert verdict["exited_during_load_at_s"] is None
    assert verdict["metrics_match"], (verdict["metrics_counted"], verdict["requests_sent"])
    assert verdict["framing_log_lines"] == verdict["framing_answered"]
    assert verdict["clean"]
    assert (tmp_path / "soak.json").is_file()
    assert "Verdict: CLEAN" in (tmp_path / "soak.md").read_text()
