"""`--profile TARGET`: py-spy on a Python target during one extra measured run per scenario (not in the medians).

py-spy samples the target's whole process tree (--subprocesses, so scopegate-2's workers too) at 200 Hz without
pausing it (--nonblocking), Python frames only, idle time left out. The raw output is the collapsed-stack format
(one `frame;frame;... count` line per stack), which speedscope (https://www.speedscope.app) and flamegraph.pl open
as they are; next to it a short top-like summary: the functions most often on CPU (self) and on the stack (total).
Time spent in C code (uvloop's loop, httptools, OpenSSL) shows as the innermost Python frame that called it: with
uvloop that is `Runner.run` for the event loop's own work.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from .layout import VENV_BIN
from .procs import HarnessError, Proc, ProcessSet

RATE_HZ = 200
_LINE_NUMBER = re.compile(r":\d+\)$")


class Recorder:
    """A running `py-spy record`; finish() stops it and writes the summary."""

    def __init__(self, procs: ProcessSet, pid: int, output: Path, log: Path) -> None:
        self._procs = procs
        self.output = output
        argv = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(RATE_HZ)]
        argv += ["--format", "raw", "--output", str(output), "--subprocesses", "--nonblocking"]
        self._proc: Proc = procs.start("py-spy", argv, log)
        deadline = time.monotonic() + 10
        while "Sampling process" not in self._proc.log_tail() and time.monotonic() < deadline:
            if not self._proc.alive():
                raise HarnessError(f"py-spy exited before sampling:\n{self._proc.log_tail()}")
            time.sleep(0.05)

    def finish(self) -> Path:
        if self._proc.alive():
            os.kill(self._proc.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.popen.wait(timeout=60)
        self._procs.stop(self._proc)
        if not self.output.exists():
            raise HarnessError(f"py-spy wrote no {self.output}:\n{self._proc.log_tail()}")
        summary = self.output.with_name(self.output.stem + "-top.txt")
        summary.write_text(summarize(self.output))
        return summary


def summarize(raw: Path, top: int = 25) -> str:
    """The functions with the most samples on CPU (self) and anywhere on the stack (total), in percent."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    if samples == 0:
        return "no samples\n"
    lines = [f"{samples} samples at {RATE_HZ} Hz (idle excluded)", "", "self %  function (file)"]
    lines += [f"{100 * n / samples:6.1f}  {frame}" for frame, n in self_counts.most_common(top)]
    lines += ["", "total %  function (file)"]
    lines += [f"{100 * n / samples:7.1f}  {frame}" for frame, n in total_counts.most_common(top)]
    return "\n".join(lines) + "\n"
