"""Loopback plumbing: free ports, one-shot HTTP requests, and waiting for a started process to be ready."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .layout import LOOPBACK
from .procs import HarnessError, Proc


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def get(port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> Reply:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        return Reply(response.status, response.read(), {name.lower(): value for name, value in response.getheaders()})
    finally:
        connection.close()


def answers(port: int, path: str = "/", status: int | None = None) -> bool:
    """True once the port serves HTTP (with that status, when one is given)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        reply = get(port, path, timeout=1.0)
        return status is None or reply.status == status
    return False


def wait_ready(proc: Proc, check: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `check` until it holds; fail with the process's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited (status {proc.popen.returncode}) before {what}:\n{proc.log_tail()}")
        if check():
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"{proc.name}: not {what} after {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)


def scrape_metrics(admin_port: int) -> dict[str, float]:
    """scopegate's admin /metrics samples by name with labels (`scopegate_jwks_refresh_total{result="success"}`)."""
    try:
        reply = get(admin_port, "/metrics")
    except OSError as exc:
        raise HarnessError(f"scopegate: GET /metrics on the admin port failed: {exc}") from exc
    if reply.status != 200:
        raise HarnessError(f"scopegate: GET /metrics on the admin port answered {reply.status}")
    values = {}
    for line in reply.body.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values
