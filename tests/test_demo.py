"""`scopegate demo` as a user runs it: start it, copy each printed curl line, get the status it promised."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shlex
import shutil
import signal
import sys

import aiohttp

from conftest import ROOT

BANNER_END = "Decision logs follow"


async def _read_banner(process: asyncio.subprocess.Process) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert raw, "the demo exited before printing its curl lines:\n" + "\n".join(lines)
        lines.append(raw.decode().rstrip("\n"))
        if lines[-1].startswith(BANNER_END):
            return lines


def _examples(banner: list[str]) -> list[tuple[int, str]]:
    """(expected status, curl command line) pairs as printed."""
    pairs = []
    for comment, command in itertools.pairwise(banner):
        found = re.match(r"# expect (\d{3}):", comment)
        if found:
            assert command.startswith("curl "), command
            pairs.append((int(found.group(1)), command))
    return pairs


async def _status_with_curl(command: str) -> int:
    args = [*shlex.split(command), "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    args.remove("-i")
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return int(out)


async def _status_with_aiohttp(session: aiohttp.ClientSession, command: str) -> int:
    args = shlex.split(command)[1:]
    method, headers, url = "GET", {}, ""
    while args:
        arg = args.pop(0)
        if arg == "-X":
            method = args.pop(0)
        elif arg == "-H":
            name, _, value = args.pop(0).partition(": ")
            headers[name] = value
        elif not arg.startswith("-"):
            url = arg
    async with session.request(method, url, headers=headers) as response:
        return response.status


async def test_demo_curl_lines_behave_as_printed() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scopegate", "demo",
        "--proxy-port", "0", "--admin-port", "0", "--issuer-port", "0", "--upstream-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        banner = await _read_banner(process)
        examples = _examples(banner)
        assert {status for status, _ in examples} >= {200, 401, 403, 404}
        async with aiohttp.ClientSession() as session:
            for status, command in examples:
                assert await _status_with_aiohttp(session, command) == status, command
                if shutil.which("curl"):
                    assert await _status_with_curl(command) == status, command
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    logs = stdout.decode()
    assert '"reason": "insufficient_scope"' in logs
    for line in logs.splitlines():
        assert "eyJ" not in line, "decision logs never carry a token"
