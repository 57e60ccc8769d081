"""The real `scopegate` CLI in subprocesses: check, explain and run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from conftest import API, ROOT, RULES, IssuerServer, Running, free_port

EXAMPLE = ROOT / "config" / "example.yaml"


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **extra}
    env.pop("SCOPEGATE_CONFIG", None)
    env.update(extra)
    return env


def scopegate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegate", *args],
        capture_output=True,
        text=True,
        env=cli_env(**env),
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, issuer: str, upstream: str, *, listen: int = 0, admin: int = 0) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\nupstream: {upstream}\n"
        f"shutdown_grace_seconds: 5\nauth:\n  issuer: {issuer}\n{RULES}"
    )
    return path


# --- check ------------------------------------------------------------------------------------------------------


def test_check_accepts_the_example_config() -> None:
    result = scopegate("check", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{EXAMPLE}: OK: 7 routes")


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "upstream: http://127.0.0.1:3000\n"  # 1
        "auth:\n"  # 2
        "  issuer: https://tenant.logto.app/oidc\n"  # 3
        "  algorithms: [ES384, HS256]\n"  # 4
        "routes:\n"  # 5
        "  - name: a\n"  # 6
        "    match: { path: /a, methods: [GET, FETCH] }\n"  # 7
        "    resource: https://api.example.com\n"  # 8
    )
    result = scopegate("check", "--config", str(broken))
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{broken}:4: auth.algorithms[1]: 'HS256'") for line in lines), lines
    assert any(line.startswith(f"{broken}:7: routes[0].match.methods[1]: expected one of GET") for line in lines)
    assert len(lines) == 2


def test_check_on_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = scopegate("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'nope.yaml'}:1: cannot read the config file" in result.stdout


def test_scopegate_config_env_stands_in_for_the_option() -> None:
    result = scopegate("check", SCOPEGATE_CONFIG=str(EXAMPLE))
    assert result.returncode == 0
    assert "OK" in result.stdout


def test_run_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: nope\n")
    result = scopegate("run", "--config", str(broken))
    assert result.returncode == 2
    assert f"{broken}:1: listen: expected HOST:PORT" in result.stderr


# --- explain ----------------------------------------------------------------------------------------------------


EXPLAIN_CASES = [
    pytest.param("GET", "/api/reports/7", {"aud": API, "scope": "read:report"}, 0, "decision:  allow", id="allow"),
    pytest.param("GET", "https://svc.example.com/api/reports/7?x=1", {"aud": API, "scope": "read:report"}, 0,
                 "decision:  allow", id="full-url"),
    pytest.param("GET", "/api/reports/7", {"aud": API, "scope": "read"}, 1,
                 "deny -> 403 insufficient_scope; reason insufficient_scope (missing: read:report)", id="deny-scope"),
    pytest.param("POST", "/orgs/acme/members", {"aud": "urn:logto:organization:globex", "scope": "invite:member"},
                 1, "reason wrong_organization", id="deny-org"),
    pytest.param("GET", "/nope", {"aud": API}, 1, "route:     none matches", id="no-route"),
    pytest.param("GET", "/public/x", {}, 0, "reason public", id="public"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "claims", "exit_code", "expected"), EXPLAIN_CASES)
def test_explain_with_claims(method: str, url: str, claims: dict[str, str], exit_code: int, expected: str) -> None:
    result = scopegate("explain", "--config", str(EXAMPLE), method, url, "--claims", json.dumps(claims))
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert expected in result.stdout
    if claims and "none matches" not in expected and "public" not in expected:
        assert "signature, issuer and expiry NOT checked" in result.stdout


def test_explain_names_the_route_and_its_line() -> None:
    claims = json.dumps({"aud": API, "organization_id": "o1", "scope": "manage:settings"})
    org_header = "X-Organization-Id: o1"
    result = scopegate(
        "explain", "--config", str(EXAMPLE), "GET", "/api/settings", "--header", org_header, "--claims", claims
    )
    assert result.returncode == 0, result.stdout
    lines = EXAMPLE.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "name: org-settings" in text)
    assert f"route:     org-settings ({EXAMPLE}:{line})" in result.stdout
    assert "requires:  aud contains https://api.example.com; organization_id equal to" in result.stdout


async def test_explain_verifies_a_real_token(tmp_path: Path, issuer: IssuerServer, upstream: Running) -> None:
    config = write_config(tmp_path, issuer.issuer.issuer, upstream.url)
    good = issuer.issuer.mint(resource=API, scopes=["read:report"])
    result = await asyncio.to_thread(scopegate, "explain", "--config", str(config), "GET", "/api/reports/1",
                                     "--token", good)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature verified" in result.stdout
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    result = await asyncio.to_thread(scopegate, "explain", "--config", str(config), "GET", "/api/reports/1",
                                     "--token", tampered)  # fmt: skip
    assert result.returncode == 1
    assert "reason invalid_token" in result.stdout
    assert good not in result.stdout + result.stderr, "the token is never echoed"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("request:"), "logs (jwks_refreshed ...) go to stderr: stdout is the report alone"
    assert "jwks_refreshed" in result.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        pytest.param(
            ["GET", "/api/settings", "--header", "X-Organization-Id: o1", "--header", "X-Organization-Id: o2"],
            "reason missing_organization",
            id="repeated-header-is-several-as-on-the-server",
        ),
        pytest.param(["get", "/api/reports/1"], "reason bad_request", id="lower-case-method-refused-as-on-the-server"),
        pytest.param(["FETCH", "/api/reports/1"], "reason bad_request", id="unknown-method"),
    ],
)
def test_explain_agrees_with_the_server_on_odd_requests(args: list[str], reason: str) -> None:
    claims = json.dumps({"aud": API, "organization_id": "o1", "scope": "manage:settings read:report"})
    result = scopegate("explain", "--config", str(EXAMPLE), *args, "--claims", claims)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reason in result.stdout


# --- run --------------------------------------------------------------------------------------------------------


async def _wait_ready(session: aiohttp.ClientSession, admin: str, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        assert process.returncode is None, "scopegate run exited early"
        try:
            async with session.get(admin + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("never became ready")


async def test_run_serves_logs_json_and_exits_0_on_sigterm(
    tmp_path: Path, issuer: IssuerServer, upstream: Running
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, issuer.issuer.issuer, upstream.url, listen=port, admin=admin_port)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(),
    )  # fmt: skip
    token = issuer.issuer.mint(subject="alice", resource=API, scopes=["read:report"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{admin_port}", process)
            async with session.get(
                f"http://127.0.0.1:{port}/api/reports/9", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status == 200
            async with session.get(
                f"http://127.0.0.1:{port}/api/reports/9", headers={"Authorization": f"Bearer {forged}"}
            ) as r:
                assert r.status == 401
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                metrics = await r.text()
        assert 'scopegate_requests_total{decision="allow",reason="ok",route="reports-read"} 1.0' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode() + stderr.decode()
    assert token not in output
    assert forged not in output
    assert "Bearer" not in output
    decisions = [json.loads(line) for line in stdout.decode().splitlines() if '"decision"' in line]
    allowed = next(d for d in decisions if d.get("reason") == "ok")
    assert (allowed["route"], allowed["sub"], allowed["status"]) == ("reports-read", "alice", 200)
    assert (allowed["path"], allowed["decision"]) == ("/api/reports/9", "allow")
    denied = next(d for d in decisions if d.get("reason") == "invalid_token")
    assert denied["status"] == 401
    assert denied["detail"] == "bad_signature"


def test_console_script_is_scopegate_cli_main() -> None:
    """`pip install` puts a `scopegate` command on PATH that runs the same main as `python -m scopegate`."""
    from importlib.metadata import entry_points

    from scopegate import __version__, cli

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'scopegate = "scopegate.cli:main"' in pyproject
    installed = [ep for ep in entry_points(group="console_scripts") if ep.name == "scopegate"]
    if installed:  # the project is installed (scripts/test installs it into .venv)
        assert installed[0].load() is cli.main
    result = scopegate("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"scopegate {__version__}"


def test_explain_understands_token_sources_and_claim_headers(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "upstream: http://127.0.0.1:1\nauth: {issuer: https://i.example}\n"
        "routes:\n  - name: ws\n    match: {path: '/ws/{user_id}'}\n    resource: https://api.example.com\n"
        "    token_from: [{cookie: session}]\n    claims: {sub: '{user_id}'}\n"
        "    forward_claims: {email: X-Auth-Email}\n",
        encoding="utf-8",
    )
    claims = json.dumps({"aud": "https://api.example.com", "sub": "u1", "email": "u1@example.com"})
    result = scopegate("explain", "--config", str(config), "GET", "/ws/u1", "--claims", claims)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the token from cookie 'session'" in result.stdout
    assert "forwards:  X-Auth-Email: u1@example.com" in result.stdout
    other = scopegate("explain", "--config", str(config), "GET", "/ws/u2", "--claims", claims)
    assert (other.returncode, "reason claim_mismatch" in other.stdout) == (1, True)
