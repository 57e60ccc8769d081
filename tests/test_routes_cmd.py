"""`scopegate routes`: the route table in evaluation order, as text, markdown and JSON, from the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scopegate.config import load_config, parse_config
from scopegate.tools.routes import COLUMNS, render

from conftest import ROOT

EXAMPLE = ROOT / "config" / "example.yaml"


def routes_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegate", "routes", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_json_is_one_object_per_route_in_evaluation_order() -> None:
    done = routes_cli("--config", str(EXAMPLE), "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["name"] for row in rows] == [rule.name for rule in load_config(EXAMPLE).routes]
    by_name = {row["name"]: row for row in rows}
    assert by_name["reports-read"] == {
        "name": "reports-read",
        "line": 22,
        "methods": ["GET", "HEAD"],
        "path": "/api/reports/{report_id}",
        "scenario": "global API",
        "resource": "https://api.example.com",
        "organization": None,
        "scopes": {"all": ["read:report"]},
        "claims": {},
        "mode": "enforce",
    }
    assert by_name["org-projects"]["scopes"] == {"any": ["read:project", "admin:project"]}
    assert by_name["org-projects"]["methods"] is None
    assert by_name["org-settings"]["organization"] == {"from": "header", "name": "X-Organization-Id"}
    assert by_name["admin-only"]["claims"] == {"roles": "admin", "email_verified": True}
    assert by_name["beta-search"]["mode"] == "audit"
    assert [row["scenario"] for row in rows] == [
        "global API", "organization", "organization API", "organization API", "global API", "global API", "public",
    ]  # fmt: skip


def test_text_is_an_aligned_table() -> None:
    done = routes_cli("--config", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == [column.upper() for column in COLUMNS]
    assert [row.split()[0] for row in rows] == [rule.name for rule in load_config(EXAMPLE).routes]
    starts = [header.index(column.upper()) for column in COLUMNS]
    for row in rows:  # every column starts at the same place on every line
        assert all(row[start - 2 : start] == "  " and row[start] != " " for start in starts[1:]), row
    cells = [[row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)] for row in rows]
    assert cells[0] == [
        "reports-read", "GET, HEAD", "/api/reports/{report_id}", "global API", "https://api.example.com", "-",
        "all: read:report", "-", "enforce",
    ]  # fmt: skip
    assert "header X-Organization-Id" in rows[3]
    assert "any: read:project admin:project" in rows[2]
    assert 'roles="admin", email_verified=true' in rows[4]


def test_markdown_is_a_table_with_code_paths() -> None:
    done = routes_cli("--config", str(EXAMPLE), "--format", "markdown")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert lines[2] == (
        "| reports-read | GET, HEAD | `/api/reports/{report_id}` | global API | https://api.example.com | - |"
        " all: read:report | - | enforce |"
    )
    assert len(lines) == 2 + 7


def test_a_pipe_in_a_claim_value_does_not_break_the_markdown_table() -> None:
    config = parse_config(
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://i.example.com }\nroutes:\n"
        "  - { name: r, match: { path: /r }, resource: https://a.example.com, claims: { tier: 'a|b' } }\n"
    )
    row = render(config.routes, "markdown").splitlines()[2]
    assert 'tier="a\\|b"' in row
    assert row.count(" | ") == len(COLUMNS) - 1


SCENARIOS = [
    pytest.param("resource: https://a.example.com", "global API", id="resource"),
    pytest.param("organization: { from: query, name: org }", "organization", id="organization"),
    pytest.param("resource: https://a.example.com, organization: { from: query, name: org }", "organization API",
                 id="organization-api"),
    pytest.param("public: true", "public", id="public"),
]  # fmt: skip


@pytest.mark.parametrize(("requires", "scenario"), SCENARIOS)
def test_scenario_column(requires: str, scenario: str) -> None:
    config = parse_config(
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://i.example.com }\nroutes:\n"
        f"  - {{ name: r, match: {{ path: /r, methods: [POST] }}, {requires} }}\n"
    )
    (row,) = json.loads(render(config.routes, "json"))
    assert row["scenario"] == scenario
    assert row["methods"] == ["POST"]
    assert row["scopes"] == {"all": []}


def test_an_invalid_config_is_reported_like_check_and_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("upstream: http://127.0.0.1:3000\nauth: { issuer: https://i.example.com }\nroutes: []\n")
    done = routes_cli("--config", str(broken))
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{broken}:3: routes: must list at least one route" in done.stderr


def test_an_unknown_format_is_a_usage_error() -> None:
    done = routes_cli("--config", str(EXAMPLE), "--format", "csv")
    assert done.returncode == 2
    assert "invalid choice: 'csv'" in done.stderr
