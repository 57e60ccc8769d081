"""Where the harness's files live and the fixed facts of the benchmark (one module, so nothing is spelled twice)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"
TEMPLATES_DIR = BENCH_DIR / "templates"
WRK_DIR = BENCH_DIR / "wrk"
TARGETS_DIR = BENCH_DIR / "targets"

# The harness runs inside the project venv (./bench/run makes sure): its bin/ has scopegate, envoy and py-spy.
VENV_BIN = Path(sys.executable).parent

AUDIENCE = "https://api.example.com"
SCOPE = "read:report"
WEAK_SCOPE = "read:other"
CLIENT_ID = "bench-client"
WARM_SUB = "bench-warm-user"  # `sub` of the warm tokens
ROUTE_NAME = "reports-read"  # the route of templates/scopegate.yaml and envoy-jwt-logged.yaml
REQUEST_PATH = "/api/reports/42"
# Where the upstream echoes the identity headers it was sent (only the checks ask it; scopegate's route matches it).
ECHO_PATH = "/api/reports/echo-identity"

# What the upstream answers to every request: exactly 100 bytes of text/plain.
UPSTREAM_BODY = ("scopegate-bench upstream: the same 100-byte body for every path. " + "." * 100)[:100]

LOOPBACK = "127.0.0.1"
