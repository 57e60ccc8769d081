"""Fault injection around a running `scopegate run`: an issuer whose JWKS misbehaves on cue, a bounded load loop
that records every answer, the process's open file descriptors and its log scanned for tracebacks.

The subprocess helpers themselves (`scopegate_run`, `Site`, `scrape`, `eventually` ...) are `test_operations.py`'s;
this module adds what the fault tests need on top of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from scopegate.dev.echo import echo_app
from test_operations import RunningCli

from conftest import API, RULES, free_port
from tokenlib import TestKey, logto_claims

# Every bound on waiting for something to happen; CI is a loaded 2-core machine.
EVENT_LIMIT_SECONDS = 20.0
# Idle keep-alive connections to the test's servers close after this, so the proxy's sockets settle quickly.
KEEPALIVE_SECONDS = 0.5


# --- servers the tests control ----------------------------------------------------------------------------------


async def serve(app: web.Application, port: int) -> web.AppRunner:
    """`app` on 127.0.0.1:`port`, closing idle keep-alive connections after KEEPALIVE_SECONDS."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner


@contextlib.asynccontextmanager
async def echo_upstream() -> AsyncIterator[str]:
    """The echo upstream (`scopegate.dev.echo`) on a free port; idle connections close quickly so the proxy's pool
    empties and its descriptors can be compared with a baseline."""
    port = free_port()
    runner = await serve(echo_app(), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


FETCH_MAX_BYTES = 1 << 20  # discovery.HttpJwksFetcher's default bound


@cache
def gzip_bomb() -> bytes:
    """16 MiB of JSON whitespace inside a valid JWKS, gzip-compressed to a few KiB."""
    return gzip.compress(b'{"keys": [' + b" " * (16 << 20) + b"]}", compresslevel=9)


def _bad_bodies() -> dict[str, Callable[[], web.Response]]:
    json_type = "application/json"

    def body(data: bytes, content_type: str = json_type, **headers: str) -> Callable[[], web.Response]:
        return lambda: web.Response(body=data, headers={"Content-Type": content_type, **headers})

    return {
        "html": body(b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>", "text/html"),
        "garbage": body(bytes(range(256)) * 8),
        "not_json_object": body(b'[{"keys": []}]'),
        "keys_not_a_list": body(b'{"keys": "EC"}'),
        "deeply_nested": body(b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "empty_key_set": body(b'{"keys": []}'),
        "only_unusable_keys": body(
            json.dumps({"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, {"kty": "EC", "kid": "x"}]}).encode()
        ),
        "huge": body(b'{"keys": [' + b" " * (2 * FETCH_MAX_BYTES) + b"]}"),
        "gzip_bomb": lambda: web.Response(
            body=gzip_bomb(), headers={"Content-Type": json_type, "Content-Encoding": "gzip"}
        ),
        "not_gzip": body(b'{"keys": []}', json_type, **{"Content-Encoding": "gzip"}),
        "status_500": lambda: web.json_response({"error": "server_error"}, status=500),
        "redirect": lambda: web.Response(status=302, headers={"Location": "https://elsewhere.example/jwks"}),
    }


BAD_BODIES = _bad_bodies()
# Every way the JWKS server can misbehave, and what the proxy's `jwks_refresh_failed` line says about it.
BAD_MODES = {
    "html": "body is not JSON (JSONDecodeError)",
    "garbage": "body is not JSON (UnicodeDecodeError)",
    "not_json_object": "body is not a JSON object",
    "keys_not_a_list": 'no "keys" array',
    "deeply_nested": "body is not JSON (RecursionError)",
    "empty_key_set": "no key usable",
    "only_unusable_keys": "no key usable",
    "huge": f"body larger than {FETCH_MAX_BYTES} bytes",
    "gzip_bomb": f"body larger than {FETCH_MAX_BYTES} bytes",
    "not_gzip": "Can not decode content-encoding: gzip",
    "status_500": "HTTP 500",
    "redirect": "HTTP 302 (expected 200; redirects are not followed)",
    "huge_chunked": f"body larger than {FETCH_MAX_BYTES} bytes",  # no length at all: only a bounded read stops it
    "truncated": "Not enough data to satisfy content length header",
    "hang_up": "ServerDisconnectedError",  # the connection closes before any answer (twice: aiohttp retries a GET)
    "slow": "no complete answer within",  # trickles a byte now and then, past the fetch timeout
}
assert BAD_BODIES.keys() <= BAD_MODES.keys()


class JwksServer:
    """Discovery and JWKS under /oidc on a fixed loopback port, misbehaving as `mode` says, switchable at run time.

    `mode` is "normal" or one of BAD_MODES; `gzip` sends every good answer gzip-encoded whatever the client asked
    for; `down()` stops listening (connections are refused) and `up()` listens again on the same port.
    """

    def __init__(self, *keys: TestKey) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/oidc"
        self.keys: list[TestKey] = list(keys)
        self.mode = "normal"
        self.gzip = False
        self.served: Counter[str] = Counter()  # JWKS answers by mode
        self.accept_encodings: list[str] = []  # what each JWKS request asked for
        self.hung = 0  # slow answers being held open now
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def up(self) -> None:
        if self._runner is None:
            self._release.clear()
            self._runner = await serve(self._app(), self.port)

    async def down(self) -> None:
        """Stop listening and drop every connection, a held slow answer included."""
        self._release.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def token(self, key: TestKey, *, scope: str = "read:report", kid: str | None = None) -> str:
        """A fresh access token for API signed with `key` (a new jti each time: never a verified-token cache hit);
        `kid` puts another key's id in its header."""
        payload = logto_claims(time.time(), iss=self.issuer, aud=API, scope=scope, jti=os.urandom(8).hex())
        return key.token(payload, kid=kid or key.kid)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/oidc/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/oidc/jwks", self._jwks)
        return app

    def _good(self, document: Mapping[str, Any]) -> web.Response:
        data = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
        if self.gzip:
            data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
        return web.Response(body=data, headers=headers)

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        if self.mode != "normal":  # broken discovery fails a first load just like a broken JWKS
            return await self._bad(request)
        return self._good({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks"})

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.accept_encodings.append(request.headers.get("Accept-Encoding", ""))
        self.served[self.mode] += 1
        if self.mode == "normal":
            return self._good({"keys": [key.jwk() for key in self.keys]})
        return await self._bad(request)

    async def _bad(self, request: web.Request) -> web.StreamResponse:
        canned = BAD_BODIES.get(self.mode)
        if canned is not None:
            return canned()
        if self.mode == "hang_up":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.mode == "truncated":
            response.content_length = 4096  # promises more than it sends, then closes
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        if self.mode == "huge_chunked":
            for _ in range(3 * FETCH_MAX_BYTES // 65536):
                await response.write(b" " * 65536)
            return response
        await response.write(b'{"keys": [')
        if self.mode == "truncated":
            assert request.transport is not None
            request.transport.close()
            return response
        self.hung += 1  # slow: a byte now and then, never the end, until released or the client gives up
        try:
            while not self._release.is_set():
                await response.write(b" ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), timeout=0.2)
        except aiohttp.ClientConnectionResetError:
            pass
        finally:
            self.hung -= 1
        return response


def auth_settings(*, refresh: float, cooldown: float, rules: str = RULES) -> str:
    """`rules` preceded by the key cache's timing, for `Site.write(rules=...)` (which ends the `auth:` block)."""
    return f"  jwks_refresh_seconds: {refresh}\n  jwks_refetch_cooldown_seconds: {cooldown}\n{rules}"


def write_atomically(path: Path, text: str) -> None:
    """What an editor or a deploy tool does: write a new file beside it, then rename it over the old one."""
    staged = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    staged.write_text(text)
    os.replace(staged, path)


# --- a bounded load ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """One kind of request the load sends: a name for the report, what to send."""

    kind: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "GET"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    status: int | None  # None: the request failed (`error` says how)
    error: str | None
    sent: float  # loop time
    done: float


class Load:
    """Concurrent requests cycling through `probes` until stopped, at most `max_requests` and `max_seconds`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        probes: Sequence[Probe],
        *,
        concurrency: int = 16,
        max_requests: int = 6000,
        max_seconds: float = 30.0,
    ) -> None:
        self.outcomes: list[Outcome] = []
        self._session = session
        self._base = base
        self._probes = itertools.cycle(probes)
        self._concurrency = concurrency
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Outcome]:
        self._stopped = True
        assert self._task is not None
        await self._task
        return self.outcomes

    @property
    def exhausted(self) -> bool:
        return self._task is not None and self._task.done()

    async def reach(self, count: int) -> None:
        """Wait until `count` answers have come back (or the load ran out of its budget)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENT_LIMIT_SECONDS
        while len(self.outcomes) < count and not self.exhausted:
            assert loop.time() < deadline, f"only {len(self.outcomes)} of {count} answers in time"
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_seconds
        budget = iter(range(self._max_requests))

        async def worker() -> None:
            while not self._stopped and loop.time() < deadline and next(budget, None) is not None:
                self.outcomes.append(await self._one(next(self._probes), loop))

        await asyncio.gather(*(worker() for _ in range(self._concurrency)))

    async def _one(self, probe: Probe, loop: asyncio.AbstractEventLoop) -> Outcome:
        sent = loop.time()
        try:
            async with self._session.request(probe.method, self._base + probe.path, headers=probe.headers) as response:
                await response.read()
                return Outcome(probe.kind, response.status, None, sent, loop.time())
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(probe.kind, None, type(exc).__name__, sent, loop.time())


def tally(outcomes: Iterable[Outcome]) -> Counter[tuple[str, int | str | None]]:
    """(kind, status or error) -> count, for failure messages."""
    return Counter((o.kind, o.status if o.status is not None else o.error) for o in outcomes)


# --- the process: its file descriptors and its log --------------------------------------------------------------

_TCP_LISTEN = "0A"


def _tcp_states(pid: int) -> dict[str, str]:
    """socket inode -> TCP state (hex, as in /proc/net/tcp) for every TCP socket in the process's network namespace."""
    states: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                columns = line.split()
                states[columns[9]] = columns[3]
    return states


def open_fds(pid: int) -> list[str]:
    """What each open descriptor of `pid` is: `tcp:0A` (listening), `tcp:01` (established) ..., or its link."""
    states = _tcp_states(pid)
    kinds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while we looked
            link = os.readlink(f"/proc/{pid}/fd/{name}")
            if link.startswith("socket:["):
                state = states.get(link[8:-1])
                link = f"tcp:{state}" if state else "socket"
            kinds.append(link)
    return kinds


def _not_connections(pid: int) -> list[str]:
    return [kind for kind in open_fds(pid) if not kind.startswith("tcp:") or kind == f"tcp:{_TCP_LISTEN}"]


async def fd_baseline(pid: int, samples: int = 5) -> list[str]:
    """The process's descriptors other than TCP connections (which come and go with clients and keep-alive), the
    fewest of a few looks (a socket being opened for a moment is not part of the baseline)."""
    looks = []
    for _ in range(samples):
        looks.append(_not_connections(pid))
        await asyncio.sleep(0.02)
    return min(looks, key=len)


async def fds_return_to(pid: int, baseline: list[str], limit: float = EVENT_LIMIT_SECONDS) -> None:
    """Wait until `pid` holds no more descriptors than `baseline`: every connection closed, nothing leaked."""
    deadline = time.monotonic() + limit
    while len(now := open_fds(pid)) > len(baseline):
        if time.monotonic() > deadline:
            extra = Counter(now) - Counter(baseline)
            raise AssertionError(f"pid {pid}: {len(now)} fds, baseline {len(baseline)}; extra: {dict(extra)}")
        await asyncio.sleep(0.1)


_CRASH_MARKS = (
    "Traceback",
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "Exception in callback",
    "Unhandled exception",
    "Unclosed client session",
    "Unclosed connector",
)


def assert_no_crash_in_logs(cli: RunningCli, *, known: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every stdout line is a JSON log object, none carries an exception, and neither stream shows a traceback.

    `known` names exceptions already pinned by an xfail test elsewhere (a text their traceback contains): they are
    tolerated, so that a known bug with a test of its own does not make another test flaky.
    """
    events = cli.events()
    crashes = []
    for event in events:
        text = json.dumps(event)
        if any(mark in text for mark in _CRASH_MARKS) or {"exception", "exc_info", "stack"} & event.keys():
            crashes.append(event)
    unknown = [event for event in crashes if not any(bug in json.dumps(event) for bug in known)]
    assert not unknown, unknown[:3]
    stderr = "".join(cli.stderr)
    marks = [mark for mark in _CRASH_MARKS if mark in stderr]
    assert not marks, f"{marks} on stderr:\n{stderr[-5000:]}"
    assert not [event for event in events if event.get("level") == "critical"]
    return events


class EventTail:
    """The JSON log objects of a running CLI read incrementally (cheap to poll while thousands of lines arrive)."""

    def __init__(self, cli: RunningCli) -> None:
        self._cli = cli
        self._lines_read = 0
        self._rest = ""
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        lines = self._cli.stdout[self._lines_read :]
        self._lines_read += len(lines)
        text = self._rest + "".join(lines)
        decoder, at = json.JSONDecoder(), 0
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            try:
                obj, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                break  # the rest of a line not read yet
            self.events.append(obj)
        self._rest = text[at:]
        return self.events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.poll() if event.get("event") == name]
