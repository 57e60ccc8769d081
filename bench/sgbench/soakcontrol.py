"""What the soak changes under load, and what it watches: the issuer's keys, scopegate's config, its RSS and fds.

- `Issuer`: OIDC discovery and a JWKS on loopback, served from a thread of the soak's own (so a busy load loop never
  delays a key fetch), publishing whichever of the ring's keys the soak says;
- `Control`: the timeline, at fixed fractions of the run, each step confirmed on scopegate's admin /metrics before
  the next: publish the new key beside the old (`scopegate_jwks_keys` 2), then sign with it; rewrite the config
  file atomically with the equivalent rule set B (the `scopegate_config_info` hash changes); drop the old key
  (`scopegate_jwks_keys` 1: from then on its tokens must get 401); write an invalid file and SIGHUP (a refused
  reload: `scopegate_config_reloads_total{result="failure"}` up, the hash unchanged); rewrite rule set A (the
  watcher reloads it: the first hash again); SIGHUP alone (a reload of the same file). A step not confirmed within
  EVENT_TIMEOUT_SECONDS fails, and the steps after it are not run (signing with a key scopegate never saw would
  make every later answer wrong for the harness's sake, not scopegate's);
- `Resources`: VmRSS, peak (VmHWM) and open file descriptors of the scopegate process, sampled throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import net
from .fixtures import issuer_url
from .keys import discovery_document, jwks_document
from .layout import LOOPBACK
from .memory import session_memory_kb
from .procs import HarnessError, Proc
from .soakcheck import Clocks
from .soaktokens import KeyRing, TokenBook

EVENT_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.1
SAMPLE_SECONDS = 0.25
FD_SLACK = 4  # fds at the end may exceed the start by an idle upstream connection per client connection, and this

Metrics = dict[str, float]


class Issuer:
    """Discovery and JWKS for the ring's published keys, on a thread: `publish` switches what the JWKS holds."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.fetches: Counter[str] = Counter()  # JWKS fetches by the key set served
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = issuer_url(self.port)
        self._thread: threading.Thread | None = None
        self.published: tuple[str, ...] = ()
        self._documents: dict[str, bytes] = {}
        self.publish(("old",))

    def publish(self, labels: tuple[str, ...]) -> None:
        published = {self.ring.published(label).alg: self.ring.published(label) for label in labels}
        documents = {
            "/oidc/.well-known/openid-configuration": json.dumps(discovery_document(self.url, published)).encode(),
            "/oidc/jwks": json.dumps(jwks_document(published)).encode(),
        }
        with self._lock:
            self._documents = documents
            self.published = labels

    def document(self, path: str) -> bytes | None:
        """What to serve at `path` now (None: 404); counts the JWKS fetches by the key set they got."""
        with self._lock:
            if path.endswith("/jwks"):
                self.fetches["+".join(self.published)] += 1
            return self._documents.get(path)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="soak-issuer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def _handler_for(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = issuer.document(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-cache")  # as Logto serves its JWKS
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def scrape(admin_port: int) -> Metrics:
    """The admin /metrics samples by name with labels (`scopegate_jwks_refresh_total{result="success"}`)."""
    return net.scrape_metrics(admin_port)


def config_hashes(metrics: Metrics) -> set[str]:
    """The config hashes /metrics says are in force (value 1)."""
    prefix = 'scopegate_config_info{hash="'
    return {name[len(prefix) : -2] for name, value in metrics.items() if name.startswith(prefix) and value == 1}


def requests_total(metrics: Metrics) -> int:
    return int(sum(value for name, value in metrics.items() if name.startswith("scopegate_requests_total{")))


@dataclass
class EventRecord:
    name: str
    what: str
    started_s: float
    confirmed_s: float | None = None
    detail: str = ""


@dataclass
class Control:
    """Runs the timeline (module docstring) against one scopegate; every step bounded by EVENT_TIMEOUT_SECONDS."""

    issuer: Issuer
    book: TokenBook
    clocks: Clocks
    scopegate: Proc
    admin_port: int
    config_path: Path
    configs: dict[str, str]  # "A", "B", "broken" -> file text
    started: float  # time.monotonic() of the load's start
    seconds: float
    events: list[EventRecord] = field(default_factory=list)
    _hash_a: str = ""
    _hash_b: str = ""

    def timeline(self) -> list[tuple[float, str, str, Callable[[], Awaitable[str | None]]]]:
        return [
            (
                0.15,
                "rotate: publish",
                "JWKS: the new RS256 key beside the old ES384 one; then sign with it",
                self._publish,
            ),
            (0.30, "reload: rewrite", "config file atomically replaced by rule set B (same policy)", self._rewrite),
            (0.45, "rotate: drop", "JWKS: the old key removed; its tokens must now get 401", self._drop),
            (
                0.55,
                "reload: invalid",
                "an invalid config file, then SIGHUP: refused, old rules keep serving",
                self._broken,
            ),
            (
                0.65,
                "reload: restore",
                "config file atomically replaced by rule set A again (file watcher)",
                self._restore,
            ),
            (0.80, "reload: SIGHUP", "SIGHUP with the file unchanged: a reload of the same rules", self._sighup),
        ]

    async def run(self) -> None:
        hashes = config_hashes(await asyncio.to_thread(scrape, self.admin_port))
        if len(hashes) != 1:
            raise HarnessError(f"scopegate: expected one config hash in /metrics, found {sorted(hashes)}")
        self._hash_a = hashes.pop()
        for fraction, name, what, step in self.timeline():
            if not self.scopegate.alive():
                return
            delay = self.started + fraction * self.seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            record = EventRecord(name, what, time.monotonic() - self.started)
            self.events.append(record)
            try:
                failure = await step()
            except HarnessError as exc:  # /metrics unreachable: scopegate is gone or hung
                failure = str(exc)
            if failure is not None:
                record.detail = failure
                return
            record.confirmed_s = time.monotonic() - self.started

    def planned(self) -> list[str]:
        return [name for _, name, _, _ in self.timeline()]

    async def _until(self, what: str, holds: Callable[[Metrics], bool]) -> str | None:
        """None once `holds(metrics)`; else, after EVENT_TIMEOUT_SECONDS, why not."""
        deadline = time.monotonic() + EVENT_TIMEOUT_SECONDS
        metrics: Metrics = {}
        while time.monotonic() < deadline:
            try:
                metrics = await asyncio.to_thread(scrape, self.admin_port)
            except HarnessError as exc:
                return str(exc)
            if holds(metrics):
                return None
            await asyncio.sleep(POLL_SECONDS)
        keys = metrics.get("scopegate_jwks_keys")
        return f"not seen within {EVENT_TIMEOUT_SECONDS:.0f} s: {what} (keys {keys}, hashes {config_hashes(metrics)})"

    async def _publish(self) -> str | None:
        self.issuer.publish(("old", "new"))
        failure = await self._until("scopegate_jwks_keys 2", lambda m: m.get("scopegate_jwks_keys") == 2)
        if failure is None:
            self.book.current = "new"
        return failure

    async def _drop(self) -> str | None:
        self.clocks.begin("old-key-dropped", time.monotonic())
        self.issuer.publish(("new",))
        failure = await self._until("scopegate_jwks_keys 1", lambda m: m.get("scopegate_jwks_keys") == 1)
        if failure is None:
            self.clocks.confirm("old-key-dropped", time.monotonic())
        return failure

    async def _rewrite(self) -> str | None:
        write_atomically(self.config_path, self.configs["B"])

        def switched(metrics: Metrics) -> bool:
            hashes = config_hashes(metrics)
            if len(hashes) == 1 and self._hash_a not in hashes:
                self._hash_b = next(iter(hashes))
                return True
            return False

        return await self._until("a new scopegate_config_info hash", switched)

    async def _broken(self) -> str | None:
        before = await asyncio.to_thread(scrape, self.admin_port)
        failures = before.get('scopegate_config_reloads_total{result="failure"}', 0.0)
        write_atomically(self.config_path, self.configs["broken"])
        os.kill(self.scopegate.pid, signal.SIGHUP)
        failure = await self._until(
            "a refused reload",
            lambda m: m.get('scopegate_config_reloads_total{result="failure"}', 0.0) > failures,
        )
        if failure is None:
            hashes = config_hashes(await asyncio.to_thread(scrape, self.admin_port))
            if hashes != {self._hash_b}:
                return f"after a refused reload the config hashes are {sorted(hashes)}, not rule set B's"
        return failure

    async def _restore(self) -> str | None:
        write_atomically(self.config_path, self.configs["A"])
        return await self._until("rule set A's hash again", lambda m: config_hashes(m) == {self._hash_a})

    async def _sighup(self) -> str | None:
        before = await asyncio.to_thread(scrape, self.admin_port)
        successes = before.get('scopegate_config_reloads_total{result="success"}', 0.0)
        os.kill(self.scopegate.pid, signal.SIGHUP)
        return await self._until(
            "one more successful reload, rule set A in force",
            lambda m: (
                m.get('scopegate_config_reloads_total{result="success"}', 0.0) > successes
                and config_hashes(m) == {self._hash_a}
            ),
        )


def write_atomically(path: Path, text: str) -> None:
    """A new file renamed over the old one, as a ConfigMap update or an editor's save-as would: never half-written."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


class Resources:
    """RSS, peak RSS (VmHWM) and open fds of one process, sampled every SAMPLE_SECONDS while `run` runs."""

    def __init__(self, proc: Proc, started: float) -> None:
        self.proc = proc
        self.started = started
        self.samples: list[dict[str, float]] = []
        self.exited_at: float | None = None  # seconds into the load, when the process was seen gone

    def sample(self) -> dict[str, float] | None:
        """A sample, or None when the process is gone."""
        try:
            memory = session_memory_kb(self.proc.pid)
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (HarnessError, OSError):
            return None
        sample = {
            "t": round(time.monotonic() - self.started, 2),
            "rss_mb": memory["VmRSS"] / 1024,
            "peak_mb": memory["VmHWM"] / 1024,
            "fds": float(fds),
        }
        self.samples.append(sample)
        return sample

    def fd_bound(self, connections: int) -> float:
        """Open fds the process may keep after the load: as at the start, plus an idle upstream pool connection per
        client connection (the pool keeps them up to 30 s), plus FD_SLACK."""
        return self.samples[0]["fds"] + connections + FD_SLACK

    async def run(self, until: float, on_exit: Callable[[], None]) -> None:
        """Sample until `until` (time.monotonic()); if the process exits, say when and call `on_exit`."""
        while time.monotonic() < until:
            if not self.proc.alive() or self.sample() is None:
                self.exited_at = time.monotonic() - self.started
                on_exit()
                return
            await asyncio.sleep(SAMPLE_SECONDS)
