"""Fault injection against the real `scopegate run`: a scripted raw upstream, and what the process holds.

`test_faults_upstream.py` and `test_faults_client.py` make one side of the proxy misbehave at a time and then hold
the process to the same promises: the statuses the README gives, nothing denied reaches the upstream, no traceback
and no error line in its output, and its file descriptors and TCP connections back where they were before the
fault. Those are read from /proc (Linux), so the process is measured from outside, the way an operator would see a
leak, and every wait is for a condition with a generous bound, never a timing.

- `Gate`: a `scopegate run` subprocess (started by `test_operations.scopegate_run`), its log lines, its /proc view.
- `ScriptedUpstream`: a raw asyncio HTTP/1.1 server; a test scripts the answer per path, byte by byte if it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from scopegate.dev.issuer import DevIssuer
from test_operations import RunningCli, bearer, config_text, scopegate_run

from conftest import API, free_port

# Every wait is bounded by this, and by nothing shorter: CI is a loaded 2-core machine.
SETTLE_SECONDS = 20.0
MiB = 1024 * 1024

# `/f/**` needs a token for the API with `read:report`; nothing else is served.
FAULT_RULES = """
routes:
  - name: faults
    match: { path: "/f/**" }
    resource: https://api.example.com
    scopes: [read:report]
"""

# --- the process from outside -----------------------------------------------------------------------------------

_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class TcpSocket:
    inode: str
    local_port: int
    remote_port: int
    state: str  # the kernel's hex state: 01 established, 08 close-wait ...


def open_fds(pid: int) -> list[str]:
    """What each open file descriptor of `pid` points at (`socket:[inode]`, `pipe:[...]`, a path ...)."""
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            fds.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return fds


def tcp_sockets(pid: int, fds: list[str] | None = None) -> list[TcpSocket]:
    """The TCP sockets `pid` holds open (among `fds`, when given), listening ones left out."""
    inodes = {link[8:-1] for link in (open_fds(pid) if fds is None else fds) if link.startswith("socket:[")}
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                columns = line.split()
                inode, state = columns[9], columns[3]
                if inode in inodes and state != _TCP_LISTEN:
                    local, remote = (int(address.split(":")[1], 16) for address in columns[1:3])
                    found.append(TcpSocket(inode, local, remote, state))
    return found


def memory_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status: `VmRSS` now, `VmHWM` the peak so far."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@dataclass(frozen=True)
class Snapshot:
    fds: int
    tcp: int


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to `wanted` (the hard limit at most); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- the scopegate process --------------------------------------------------------------------------------------


@dataclass
class Gate:
    """A running `scopegate run` on FAULT_RULES, and the issuer whose tokens it trusts."""

    cli: RunningCli
    port: int
    admin_port: int
    issuer: DevIssuer
    _token: str = ""

    @property
    def issuer_port(self) -> int:
        return int(self.issuer.issuer.split(":")[2].split("/")[0])

    @property
    def pid(self) -> int:
        return self.cli.process.pid

    @property
    def url(self) -> str:
        return self.cli.proxy

    def token(self, **claims: Any) -> str:
        """A token that `/f/**` allows, unless `claims` (DevIssuer.mint's keywords) say otherwise."""
        return self.issuer.mint(**{"resource": API, "scopes": ["read:report"], **claims})

    def head(self, method: str, path: str, *fields: str, token: bool = True) -> bytes:
        """A raw HTTP/1.1 request head, with a token `/f/**` allows unless `token` is False."""
        lines = [f"{method} {path} HTTP/1.1", "Host: gate", *fields]
        if token:
            lines.insert(2, f"Authorization: Bearer {self._token or self._mint()}")
        return "".join(line + "\r\n" for line in lines).encode() + b"\r\n"

    def _mint(self) -> str:
        self._token = self.token()
        return self._token

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def snapshot(self) -> Snapshot:
        """Open fds and TCP connections, leaving out the key fetches' connection to the issuer: aiohttp keeps it
        alive on timers of its own, whatever a test does."""
        fds = open_fds(self.pid)
        tcp = tcp_sockets(self.pid, fds)
        issuer = {f"socket:[{sock.inode}]" for sock in tcp if sock.remote_port == self.issuer_port}
        return Snapshot(len([fd for fd in fds if fd not in issuer]), len(tcp) - len(issuer))

    def upstream_sockets(self, upstream: ScriptedUpstream) -> list[TcpSocket]:
        return [sock for sock in tcp_sockets(self.pid) if sock.remote_port == upstream.port]

    async def settles(self, baseline: Snapshot, upstream: ScriptedUpstream | None = None, *, pooled: int = 1) -> None:
        """Back to `baseline`: first the process itself closes its upstream connections down to at most `pooled`
        idle ones (a leak would stay open: the upstream keeps every connection it has), then, with the upstream's
        connections dropped, its file descriptors and TCP connections return to what they were."""
        if upstream is not None:
            await until(lambda: len(self.upstream_sockets(upstream)) <= pooled, "upstream connections closed")
            await upstream.drop_connections()
        await until(
            lambda: self.snapshot().fds <= baseline.fds and self.snapshot().tcp <= baseline.tcp,
            lambda: f"back to {baseline}: {self.snapshot()}, {tcp_sockets(self.pid)}, {sorted(open_fds(self.pid))}",
        )

    async def logged(self, predicate: Callable[[dict[str, Any]], bool], what: str = "a log line") -> dict[str, Any]:
        """The first JSON log line that satisfies `predicate`, waiting for it to be written."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [line for line in self.cli.events() if predicate(line)]
            return bool(found)

        await until(seen, lambda: f"{what} never logged:\n{self.cli.output()}")
        return found[0]

    async def decision(self, path: str) -> dict[str, Any]:
        """The decision line of the (one) request for `path`."""
        return await self.logged(lambda line: line.get("event") == "decision" and line["path"] == path, path)

    def assert_clean(self) -> None:
        """No traceback, no error line, nothing on stderr: whatever the fault, it was handled."""
        output = self.cli.output()
        assert "Traceback" not in output, output
        assert not "".join(self.cli.stderr).strip(), self.cli.output()
        loud = [line for line in self.cli.events() if line.get("level") in ("error", "critical") or "exception" in line]
        assert not loud, loud

    async def assert_denials_stay_out(self, upstream: ScriptedUpstream | None) -> None:
        """A request without a token, one for another API and one without the scope are refused, whatever the
        fault under way, and none of them reaches the upstream."""
        cases = [
            ("/f/denied-no-token", {}, 401),
            ("/f/denied-other-api", bearer(self.token(resource="https://other.example.com")), 401),
            ("/f/denied-no-scope", bearer(self.token(scopes=["read:other"])), 403),
        ]
        async with fresh_session() as session:
            for path, headers, status in cases:
                async with session.get(self.url + path, headers=headers) as response:
                    assert response.status == status, path
                    await response.read()
        if upstream is not None:
            assert not [target for target in upstream.targets if b"denied" in target]


def fresh_session() -> aiohttp.ClientSession:
    """A client session that keeps no connection open after a response (so none counts against a baseline)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False)


@contextlib.asynccontextmanager
async def run_gate(
    tmp_path: Path, issuer: DevIssuer, upstream: str, *, timeout: float = 1, extra: str = ""
) -> AsyncIterator[Gate]:
    """`scopegate run` on FAULT_RULES in front of `upstream`; stopped with SIGTERM (exit 0 checked) at the end."""
    port, admin_port = free_port(), free_port()
    config = tmp_path / "faults.yaml"
    config.write_text(
        config_text(
            issuer.issuer, upstream, port=port, admin_port=admin_port, rules=FAULT_RULES, extra=extra, timeout=timeout
        )
    )
    async with scopegate_run(config, port, admin_port) as cli:
        gate = Gate(cli, port, admin_port, issuer)
        # The readiness probe's connection to the admin port closes on its own time: not part of any baseline.
        await until(lambda: not [sock for sock in tcp_sockets(gate.pid) if sock.local_port == admin_port], "admin idle")
        yield gate
        assert await cli.stop() == 0, cli.output()


async def until(check: Callable[[], bool], message: str | Callable[[], str], limit: float = SETTLE_SECONDS) -> None:
    """Wait for `check()` to hold, polling; fails with `message` after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        if loop.time() > deadline:
            raise AssertionError(message if isinstance(message, str) else message())
        await asyncio.sleep(0.02)


# --- the scripted upstream --------------------------------------------------------------------------------------


@dataclass
class UpstreamRequest:
    """One request as the scripted upstream read its head; the script answers on `writer` as it likes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    head: bytes
    connection: int  # which connection, numbered from 0 in accept order
    served: int  # requests answered on this connection before this one

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    async def read_body(self) -> int:
        """Read (and drop) the body the head announces; returns its size."""
        if self.header(b"transfer-encoding") == b"chunked":
            size = 0
            while chunk := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                size += len(await self.reader.readexactly(chunk + 2)) - 2
            while await self.reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return size
        length = int(self.header(b"content-length") or 0)
        left = length
        while left:
            left -= len(await self.reader.readexactly(min(left, MiB)))
        return length

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# A script answers one request; True keeps the connection for the next one.
Script = Callable[[UpstreamRequest], Awaitable[bool]]


async def answer_ok(request: UpstreamRequest) -> bool:
    """The default: read the body, answer 200 with the target as the body, keep the connection."""
    await request.read_body()
    await request.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(request.target), request.target))
    return True


class ScriptedUpstream:
    """A raw HTTP/1.1 server on 127.0.0.1: `script(prefix, fn)` answers requests whose target starts with `prefix`.

    It keeps every connection until the script or the proxy ends it (or `drop_connections`), so a connection the
    proxy forgot to close stays visible in the proxy's /proc; `connections_open` and `targets` say what it saw.
    """

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._scripts: dict[bytes, Script] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections_open(self) -> int:
        return len(self._writers)

    def script(self, prefix: bytes, answer: Script) -> None:
        self._scripts[prefix] = answer

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def drop_connections(self) -> None:
        """Close every connection now (their scripts are cancelled)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connections()

    def _script_for(self, target: bytes) -> Script:
        matches = [prefix for prefix in self._scripts if target.startswith(prefix)]
        return self._scripts[max(matches, key=len)] if matches else answer_ok

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        number, self.connections = self.connections, self.connections + 1
        try:
            served = 0
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = UpstreamRequest(reader, writer, head[:-4], number, served)
                self.targets.append(request.target)
                if not await self._script_for(request.target)(request):
                    break
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the proxy closed the connection (or the test dropped it): that is what these tests provoke
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@dataclass
class RawResponse:
    """A response read off a raw socket: the head parsed, the body counted (or kept when small)."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    body_bytes: int = 0
    complete: bool = False  # the body ended where its framing said
    closed: bool = False  # the connection was closed after it


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SETTLE_SECONDS)
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split(b" ")[1]), headers)


async def read_response(reader: asyncio.StreamReader, *, keep: int = 1 << 16, head_only: bool = False) -> RawResponse:
    """One response: a Content-Length, chunked or close-delimited body read to its end or to the connection's end;
    its first `keep` bytes are kept. A 1xx is a response of its own."""
    response = await read_head(reader)
    if head_only or response.status < 200 or response.status in (204, 304):
        response.complete = True
        return response

    def take(data: bytes) -> None:
        if len(response.body) < keep:
            response.body += data[: keep - len(response.body)]
        response.body_bytes += len(data)

    try:
        if response.headers.get(b"transfer-encoding") == b"chunked":
            while size := int((await _read(reader.readuntil(b"\r\n"))).split(b";")[0], 16):
                take((await _read(reader.readexactly(size + 2)))[:-2])
            await _read(reader.readuntil(b"\r\n"))
            response.complete = True
        elif b"content-length" in response.headers:
            left = int(response.headers[b"content-length"])
            while left:
                data = await _read(reader.read(min(left, MiB)))
                if not data:
                    response.closed = True
                    break
                take(data)
                left -= len(data)
            response.complete = not left
        else:
            while data := await _read(reader.read(MiB)):
                take(data)
            response.complete = response.closed = True
    except (asyncio.IncompleteReadError, ConnectionError):
        response.closed = True
    return response


async def _read(pending: Awaitable[bytes]) -> bytes:
    return await asyncio.wait_for(pending, SETTLE_SECONDS)


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Read until the other side closes (a reset counts); returns what came before. Bounded by SETTLE_SECONDS."""
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await _read(reader.read(65536)):
            data += chunk
    return data


async def upload_reading(port: int, head: bytes, size: int, sent: list[int] | None = None) -> RawResponse:
    """Send `head` and then `size` body bytes, reading all the while: the response that came meanwhile (the sending
    stops at the first error; `sent[0]` counts the body bytes sent). Plain socket calls, not streams: an asyncio
    stream drops what it received once a write fails, and a client reset while it still sends is what this is for
    (the kernel keeps what arrived before the reset)."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    chunk = b"u" * 65536
    received = asyncio.StreamReader()

    async def send() -> None:
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, head)
            for _ in range(size // len(chunk)):
                await loop.sock_sendall(sock, chunk)
                if sent is not None:
                    sent[0] += len(chunk)

    async def receive() -> None:
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(sock, 65536):
                received.feed_data(data)
        received.feed_eof()

    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
    try:
        return await read_response(received)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()
