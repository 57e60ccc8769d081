"""`scopegate test`: policy unit tests, decided by the proxy's own gate, through the real CLI and real files."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "config" / "example.yaml"
EXAMPLE_TESTS = ROOT / "config" / "example.tests.yaml"


def scopegate_test(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "scopegate", "test", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_example_tests_cover_every_route_and_pass(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    result = scopegate_test("--config", EXAMPLE, EXAMPLE_TESTS, "--junit", junit)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "claims are taken as given: nothing is signed or verified"
    passed = [line for line in lines if line.startswith("PASS  ")]
    assert lines[-1] == f"{len(passed)} passed, 0 failed"
    suite = ET.parse(junit).getroot()  # noqa: S314 -- written by the command under test
    assert (suite.get("tests"), suite.get("failures")) == (str(len(passed)), "0")
    routes = {"reports-read", "org-member-invite", "org-projects", "org-settings", "admin-only", "beta-search"}
    text = EXAMPLE_TESTS.read_text(encoding="utf-8")
    assert all(f"route: {name}" in text or name in text for name in routes)


FAILING = """
cases:
  - name: expects too much
    request: { method: GET, url: /api/reports/1 }
    claims: { aud: https://api.example.com, scope: "write:report" }
    expect: allow
  - name: right about the denial
    request: { method: GET, url: /api/reports/1 }
    token: none
    expect: { status: 401, reason: missing_token }
"""


def test_a_failed_case_says_what_was_expected_and_what_happened(tmp_path: Path) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text(FAILING, encoding="utf-8")
    junit = tmp_path / "junit.xml"
    result = scopegate_test("--config", EXAMPLE, tests, "--junit", junit)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"FAIL  expects too much ({tests}:3): decision differ" in out
    assert "expected: decision allow" in out
    assert "actual:   decision deny, status 403, reason insufficient_scope, route reports-read" in out
    assert "detail missing: read:report" in out
    assert "PASS  right about the denial" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"
    failures = ET.parse(junit).getroot().findall("testcase/failure")  # noqa: S314
    assert len(failures) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "cases:\n  - name: x\n    request: {method: GET, url: /}\n    token: none\n    expects: allow\n",
            ":5: cases[0].expects: unknown key (did you mean 'expect'?)",
            id="unknown-key-with-its-line",
        ),
        pytest.param(
            "cases:\n  - name: x\n    request: {method: GET, url: /}\n    expect: allow\n",
            ":2: cases[0]: give either `claims: {...}` (taken as given) or `token: none`",
            id="neither-claims-nor-token",
        ),
        pytest.param(
            "cases:\n  - name: x\n    request: {method: GET}\n    token: none\n    expect: maybe\n",
            ":3: cases[0].request: missing required key 'url'",
            id="missing-url",
        ),
        pytest.param("cases: []\nextra: 1\n", ":2: extra: unknown key", id="unknown-top-level-key"),
    ],
)
def test_an_invalid_test_file_exits_2_with_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text(text, encoding="utf-8")
    result = scopegate_test("--config", EXAMPLE, tests)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{tests}{problem}" in result.stdout


def test_an_invalid_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream: http://127.0.0.1:1\nauth: {}\nroutes: []\n", encoding="utf-8")
    result = scopegate_test("--config", config, EXAMPLE_TESTS)
    assert result.returncode == 2
    assert f"{config}:2:" in result.stdout + result.stderr
