"""Every process the harness starts, and what /proc says about a process tree.

Each process starts in its own session (so one killpg reaches its whole tree: nginx master and worker, scopegate's
supervisor and workers) with its output in a log file; all are tracked so that every one is stopped on any exit,
Ctrl-C included. CPU time and RSS are read from /proc/<pid>/stat for every process of a session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class HarnessError(Exception):
    """Something the benchmark cannot go on with; the message says which target and what it did."""


@dataclass
class Proc:
    """A started process, leader of its own session and process group (pid == sid == pgid)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20, width: int = 400) -> str:
        """The last lines of the process's output (each cut at `width` characters), for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line if len(line) <= width else line[:width] + " ..." for line in text.splitlines()[-lines:]]
        return "\n".join(tail) or "(empty log)"


class ProcessSet:
    """The processes started so far; stop() and stop_all() leave none of them (nor their children) behind."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        append: bool = False,
    ) -> Proc:
        """Start `argv` with its output in `log`, a fresh file; `append` opens it O_APPEND, so the harness can
        truncate it under a running process (the next write lands at the new end, not past a hole)."""
        if append:
            log.write_bytes(b"")  # a fresh log for every start, then opened O_APPEND
        with log.open("ab" if append else "wb") as out:  # a fresh log for every start
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace_seconds: float = 10.0) -> None:
        """SIGTERM to the whole session, SIGKILL whatever is left after the grace period."""
        _signal_session(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace_seconds)
        deadline = time.monotonic() + 2.0
        while session_members(proc.pid) and time.monotonic() < deadline:
            _signal_session(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=2.0)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc, grace_seconds=3.0)


def _signal_session(sid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signum)
    for pid in session_members(sid):  # anything that moved to another process group but stayed in the session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name in field 2 may hold spaces and parentheses."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def session_cpu_seconds(sid: int) -> float:
    """utime + stime (+ reaped children's) of every process of the session, in seconds."""
    ticks = 0
    for pid in session_members(sid):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def session_rss_bytes(sid: int) -> int:
    """The sum of the resident set sizes of the session's processes (shared pages counted in each)."""
    pages = 0
    for pid in session_members(sid):
        fields = _stat_fields(pid)
        if fields is not None:
            pages += int(fields[21])
    return pages * PAGE_SIZE
