"""Upstream faults against the real `scopegate run`: an upstream that refuses, resets, hangs, fails, floods, never
ends, drops pooled connections, answers before the upload is done, or botches a WebSocket handshake.

Each test scripts a raw upstream (`faultlib.ScriptedUpstream`), sends raw requests, and checks what the README
promises for the fault (502 `upstream_error`, 504 `upstream_timeout`, a cut response once the head is out ...), that
denied requests stay denied while it goes on, that the process logged no traceback, and that its file descriptors
and TCP connections go back to their baseline. `upstream_timeout_seconds` is 1 s throughout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from test_operations import bearer

from conftest import IssuerServer, free_port
from faultlib import (
    Gate,
    MiB,
    Script,
    ScriptedUpstream,
    UpstreamRequest,
    answer_ok,
    closed_by_peer,
    fresh_session,
    memory_bytes,
    read_head,
    read_response,
    run_gate,
    scripted_upstream,
    until,
    upload_reading,
)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as upstream:
        yield upstream


@pytest.fixture
async def gate(tmp_path: Path, issuer: IssuerServer, scripted: ScriptedUpstream) -> AsyncIterator[Gate]:
    async with run_gate(tmp_path, issuer.issuer, scripted.url, timeout=1) as running:
        yield running


async def hang_until_closed(request: UpstreamRequest) -> bool:
    """Never answer; wait (reading nothing of substance) until the proxy closes the connection."""
    await request.reader.read()
    return False


# --- connecting and breaking off --------------------------------------------------------------------------------


async def test_an_upstream_refusing_connections_is_502(tmp_path: Path, issuer: IssuerServer) -> None:
    async with run_gate(tmp_path, issuer.issuer, f"http://127.0.0.1:{free_port()}") as gate:
        baseline = gate.snapshot()
        async with fresh_session() as session:

            async def one(n: int) -> tuple[int, str]:
                async with session.get(f"{gate.url}/f/refused/{n}", headers=bearer(gate.token())) as response:
                    return response.status, (await response.json())["error"]

            assert await asyncio.gather(*(one(n) for n in range(20))) == [(502, "bad_gateway")] * 20
        await gate.assert_denials_stay_out(None)
        line = await gate.decision("/f/refused/19")
        assert (line["decision"], line["reason"], line["status"]) == ("allow", "upstream_error", 502)
        await gate.settles(baseline)
        gate.assert_clean()


def reset_after(data: bytes) -> Script:
    async def script(request: UpstreamRequest) -> bool:
        await request.send(data)
        request.reset()
        return False

    return script


# Rows run one after another on one process (a process per row would cost more than the rows): (the row's name,
# what the upstream sends before its RST, the status the client gets, whether the body is cut, the logged detail)
RESETS = [
    ("before-the-head", b"", 502, False, "ConnectionResetError"),
    ("mid-head", b"HTTP/1.1 200 OK\r\nContent-Le", 502, False, None),
    (
        "after-part-of-a-length-body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000,
        200,
        True,
        "upstream_broke_off_mid_body",
    ),
    (
        "after-part-of-a-chunked-body",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"a" * 1000 + b"\r\n",
        200,
        True,
        "upstream_broke_off_mid_body",
    ),
]


async def test_an_upstream_resetting_mid_response(gate: Gate, scripted: ScriptedUpstream) -> None:
    """Before the head: a 502, and the client's connection stays usable. After it: the client's connection is cut
    (a short body, never a clean end), the log says `upstream_error`."""
    baseline = gate.snapshot()
    for row, sent, status, cut, detail in RESETS:
        path = f"/f/reset/{row}"
        scripted.script(path.encode(), reset_after(sent))
        reader, writer = await gate.connect()
        writer.write(gate.head("GET", path))
        response = await read_response(reader)
        assert response.status == status, row
        if cut:
            assert (response.body_bytes, response.complete, response.closed) == (1000, False, True), row
        else:
            assert (json_error(response.body), response.complete) == ("bad_gateway", True), row
            writer.write(gate.head("GET", f"/f/after/{row}"))
            after = await read_response(reader)
            assert (after.status, after.body) == (200, f"/f/after/{row}".encode()), row
        writer.close()
        line = await gate.decision(path)
        assert (line["reason"], line["status"]) == ("upstream_error", status), row
        assert detail is None or line["detail"] == detail, (row, line)
        await gate.settles(baseline, scripted)
    await gate.assert_denials_stay_out(scripted)
    gate.assert_clean()


def json_error(body: bytes) -> str:
    return str(json.loads(body)["error"])


# --- hanging ----------------------------------------------------------------------------------------------------


async def test_an_upstream_hanging_before_the_head_is_504_and_its_connection_closed(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    baseline = gate.snapshot()
    scripted.script(b"/f/hang", hang_until_closed)
    async with fresh_session() as session:

        async def one(n: int) -> tuple[int, str]:
            async with session.get(f"{gate.url}/f/hang/{n}", headers=bearer(gate.token())) as response:
                return response.status, (await response.json())["error"]

        assert await asyncio.gather(*(one(n) for n in range(5))) == [(504, "gateway_timeout")] * 5
    line = await gate.decision("/f/hang/0")
    assert (line["reason"], line["detail"], line["status"]) == ("upstream_timeout", "header_deadline", 504)
    await until(lambda: scripted.connections_open == 0, "the proxy closed every hung upstream connection")
    await gate.assert_denials_stay_out(scripted)
    await gate.settles(baseline, scripted, pooled=0)
    gate.assert_clean()


async def test_an_upstream_hanging_after_the_head_leaves_the_process_serving(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    """No deadline after the head: the response stays open past `upstream_timeout_seconds` (a request started after
    it got its 504 meanwhile), other requests are served, and when the upstream finally hangs up the client gets a
    cut response."""
    baseline = gate.snapshot()
    release = asyncio.Event()

    async def stuck(request: UpstreamRequest) -> bool:
        await request.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        await release.wait()
        return False

    scripted.script(b"/f/stuck", stuck)
    scripted.script(b"/f/hang", hang_until_closed)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/stuck"))
    head = await read_head(reader)
    assert head.status == 200
    assert await reader.readexactly(10) == b"0123456789"

    async with fresh_session() as session:
        async with session.get(gate.url + "/f/hang/after-the-stuck-head", headers=bearer(gate.token())) as response:
            assert response.status == 504
        async with session.get(gate.url + "/f/fine", headers=bearer(gate.token())) as response:
            assert (response.status, await response.read()) == (200, b"/f/fine")
        async with session.get(f"http://127.0.0.1:{gate.admin_port}/healthz") as response:
            assert response.status == 200
    await gate.assert_denials_stay_out(scripted)
    with pytest.raises(TimeoutError):  # still open, nothing more: not cut by any deadline
        await asyncio.wait_for(reader.read(1), timeout=0.2)

    release.set()
    assert await closed_by_peer(reader) == b"", "cut: a short body, then the connection closes"
    writer.close()
    line = await gate.decision("/f/stuck")
    assert (line["reason"], line["detail"], line["status"]) == ("upstream_error", "upstream_broke_off_mid_body", 200)
    await gate.settles(baseline, scripted, pooled=1)
    gate.assert_clean()


async def test_a_body_streaming_longer_than_the_upstream_timeout_is_not_cut(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    """Chunks every 0.3 s for 3 s, with a 1 s `upstream_timeout_seconds`: all of them arrive, and the body ends."""
    baseline = gate.snapshot()
    chunks = [b"chunk-%02d;" % n for n in range(10)]

    async def trickle(request: UpstreamRequest) -> bool:
        await request.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in chunks:
            await asyncio.sleep(0.3)
            await request.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await request.send(b"0\r\n\r\n")
        return True

    scripted.script(b"/f/trickle", trickle)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/trickle"))
    response = await read_response(reader)
    assert (response.status, response.body, response.complete) == (200, b"".join(chunks), True)
    writer.close()
    line = await gate.decision("/f/trickle")
    assert (line["reason"], line["status"]) == ("ok", 200)
    await gate.settles(baseline, scripted)
    gate.assert_clean()


# --- answers ----------------------------------------------------------------------------------------------------


async def test_upstream_5xx_answers_pass_through_as_they_are(gate: Gate, scripted: ScriptedUpstream) -> None:
    """The upstream's own 500/502/503/504 reach the client with its body and headers, on a connection kept alive;
    scopegate logs them as forwarded (`ok`), not as its own upstream failures."""
    baseline = gate.snapshot()

    async def fail(request: UpstreamRequest) -> bool:
        status = int(request.target.rsplit(b"/", 1)[1])
        body = b"the app says %d" % status
        await request.send(
            b"HTTP/1.1 %d App Trouble\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
        )
        return True

    scripted.script(b"/f/5xx/", fail)
    reader, writer = await gate.connect()
    for status in (500, 502, 503, 504):
        writer.write(gate.head("GET", f"/f/5xx/{status}"))
        response = await read_response(reader)
        assert (response.status, response.body) == (status, b"the app says %d" % status)
        assert response.headers[b"retry-after"] == b"7"
        line = await gate.decision(f"/f/5xx/{status}")
        assert (line["decision"], line["reason"], line["status"]) == ("allow", "ok", status)
    writer.close()
    await gate.assert_denials_stay_out(scripted)
    await gate.settles(baseline, scripted)
    gate.assert_clean()


async def test_a_huge_body_is_streamed_not_buffered(gate: Gate, scripted: ScriptedUpstream) -> None:
    """200 MiB with a client that stops reading for a while: the upstream is held back (TCP back-pressure through
    the proxy), and the proxy's peak RSS stays far below the body's size."""
    size, chunk = 200 * MiB, b"\x5a" * MiB
    baseline, rss_before = gate.snapshot(), memory_bytes(gate.pid)
    sent = [0]

    async def flood(request: UpstreamRequest) -> bool:
        await request.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // MiB):
            await request.send(chunk)
            sent[0] += MiB
        return True

    scripted.script(b"/f/huge", flood)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/huge"))
    head = await read_head(reader)
    assert head.headers[b"content-length"] == b"%d" % size
    received = len(await reader.readexactly(MiB))

    # The client reads nothing now: the upstream must come to a stop well short of the whole body.
    last = [-1]
    await until(lambda: _unchanged(sent, last), "the upstream stopped sending")
    assert sent[0] < size // 2, f"{sent[0] // MiB} MiB left the upstream while the client read 1 MiB"

    while data := await asyncio.wait_for(reader.read(MiB), 20):
        received += len(data)
        if received == size:
            break
    assert received == size
    writer.close()
    grown = memory_bytes(gate.pid, "VmHWM") - rss_before
    assert grown < 64 * MiB, f"peak RSS grew by {grown // MiB} MiB for a {size // MiB} MiB body"
    line = await gate.decision("/f/huge")
    assert (line["reason"], line["status"]) == ("ok", 200)
    await gate.settles(baseline, scripted)
    gate.assert_clean()


def _unchanged(sent: list[int], last: list[int]) -> bool:
    """True once `sent[0]` is the same on two calls in a row (called every 20 ms by `until`)."""
    same = sent[0] == last[0]
    last[0] = sent[0]
    return same


async def test_an_endless_body_the_client_abandons_ends_upstream_too(gate: Gate, scripted: ScriptedUpstream) -> None:
    baseline = gate.snapshot()
    chunk = b"e" * 65536

    async def endless(request: UpstreamRequest) -> bool:
        await request.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1 << 20):  # 64 GiB: endless for this test, yet bounded
            await request.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        return False

    scripted.script(b"/f/endless", endless)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/endless"))
    assert (await read_head(reader)).status == 200
    await reader.readexactly(4 * MiB)
    writer.transport.abort()
    await until(lambda: scripted.connections_open == 0, "the proxy closed the endless upstream connection")
    line = await gate.decision("/f/endless")
    assert line["detail"] == "client_closed_mid_body"
    await gate.assert_denials_stay_out(scripted)
    await gate.settles(baseline, scripted, pooled=0)
    gate.assert_clean()


# --- pooled connections the upstream closes ---------------------------------------------------------------------


def close_on_second_request(*, reset: bool) -> Script:
    """Answer the first request of a connection; close (or reset) it when the next one arrives, unanswered: the
    upstream's keep-alive timer fired just as the proxy reused the connection."""

    async def script(request: UpstreamRequest) -> bool:
        if request.served == 0:
            return await answer_ok(request)
        if reset:
            request.reset()
        return False

    return script


# (method, body, whether the upstream resets rather than closes, the status the client gets, how many times the
# upstream saw the request)
STALE = [
    ("GET", b"", False, 200, 2),
    ("GET", b"", True, 200, 2),
    ("HEAD", b"", False, 200, 2),
    ("DELETE", b"", False, 200, 2),
    ("PUT", b"", False, 200, 2),  # a bodyless PUT
    ("POST", b"", False, 502, 1),
    ("POST", b"hello", False, 502, 1),
    ("PUT", b"hello", False, 502, 1),
]


async def test_a_pooled_connection_closed_as_it_is_reused(gate: Gate, scripted: ScriptedUpstream) -> None:
    """README: an idempotent request without a body is sent once more on a new connection; anything else is a 502
    (the upstream may have acted on it)."""
    baseline = gate.snapshot()
    for n, (method, body, reset, status, seen) in enumerate(STALE):
        row = f"{n}-{method}-{len(body)}-{'reset' if reset else 'close'}"
        scripted.script(f"/f/ka/{row}/".encode(), close_on_second_request(reset=reset))
        reader, writer = await gate.connect()
        writer.write(gate.head("GET", f"/f/ka/{row}/warm"))
        assert (await read_response(reader)).status == 200, row
        fields = [f"Content-Length: {len(body)}"] if body or method in ("POST", "PUT") else []
        writer.write(gate.head(method, f"/f/ka/{row}/stale", *fields) + body)
        response = await read_response(reader, head_only=method == "HEAD")
        assert response.status == status, row
        writer.close()
        assert scripted.targets.count(f"/f/ka/{row}/stale".encode()) == seen, row
        line = await gate.decision(f"/f/ka/{row}/stale")
        assert line["reason"] == ("ok" if status == 200 else "upstream_error"), row
        await gate.settles(baseline, scripted)
    gate.assert_clean()


async def test_an_upstream_closing_idle_connections_at_will_fails_no_request(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    """Idle pooled connections closed between requests (by the upstream after each answer, or all at once): every
    next request still succeeds, on the same client connection."""
    baseline = gate.snapshot()

    async def answer_then_close(request: UpstreamRequest) -> bool:
        await answer_ok(request)
        return False

    scripted.script(b"/f/once/", answer_then_close)
    reader, writer = await gate.connect()
    for n in range(10):
        writer.write(gate.head("GET", f"/f/once/{n}"))
        assert (await read_response(reader)).body == b"/f/once/%d" % n
    for n in range(10):
        writer.write(gate.head("GET", f"/f/kept/{n}"))
        assert (await read_response(reader)).body == b"/f/kept/%d" % n
        await scripted.drop_connections()
    writer.close()
    await gate.assert_denials_stay_out(scripted)
    await gate.settles(baseline, scripted)
    gate.assert_clean()


# --- an early answer ----------------------------------------------------------------------------------------------


# (the row's name, the upstream's early status, whether it waits for the upload to stall first, whether it then
# closes at once or keeps the connection without reading it)
EARLY = [
    ("413-at-once-then-close", 413, False, True),
    ("401-at-once-connection-kept", 401, False, False),
    ("413-once-the-upload-stalled-connection-kept", 413, True, False),
]


def refuse_early(status: int, *, stalled: bool, close: bool, sent: list[int]) -> Script:
    async def script(request: UpstreamRequest) -> bool:
        if stalled:  # back-pressure all the way to the client: the proxy holds body bytes it cannot send
            last = [-1]
            await until(lambda: _unchanged(sent, last), "the upload stalled")
        await request.send(b"HTTP/1.1 %d Not Now\r\nContent-Length: 7\r\nConnection: close\r\n\r\nnot now" % status)
        if not close:
            await asyncio.Event().wait()  # holds the connection, reads nothing, until the test drops it
        return False

    return script


async def test_an_early_answer_during_an_upload_reaches_the_client(gate: Gate, scripted: ScriptedUpstream) -> None:
    """The upstream answers after the head, reading none of the 64 MiB body the client is still sending: the client
    reads that answer (not a reset), the log shows it forwarded with no upstream fault, and the upstream connection
    is closed even though the upstream never reads what the proxy still had for it. Three uploads a row: the answer
    racing the body's writes is the point."""
    baseline = gate.snapshot()
    size, sent = 64 * MiB, [0]
    for row, status, stalled, close in EARLY:
        scripted.script(f"/f/upload/{row}/".encode(), refuse_early(status, stalled=stalled, close=close, sent=sent))
        for attempt in range(3):
            path = f"/f/upload/{row}/{attempt}"
            sent[0] = 0
            response = await upload_reading(gate.port, gate.head("POST", path, f"Content-Length: {size}"), size, sent)
            assert (response.status, response.body) == (status, b"not now"), path
            assert response.headers[b"connection"] == b"close", path
            line = await gate.decision(path)
            assert (line["decision"], line["reason"], line["status"]) == ("allow", "ok", status), path
        await gate.settles(baseline, scripted, pooled=0)
    await gate.assert_denials_stay_out(scripted)
    gate.assert_clean()


# --- WebSocket handshakes -----------------------------------------------------------------------------------------

HANDSHAKE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")


def answer(data: bytes, *, close: bool = False) -> Script:
    async def script(request: UpstreamRequest) -> bool:
        await request.send(data)
        return not close

    return script


# (the row's name, the client's Sec-WebSocket-Version, the upstream's script, the status the client gets)
WEBSOCKETS = [
    ("refused-403", "13", answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"), 403),
    (
        "invalid-client-handshake",
        "99",
        answer(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"),
        426,
    ),
    ("not-http", "13", answer(b"SSH-2.0-OpenSSH_9.6\r\n", close=True), 502),
    ("hangs-up", "13", answer(b"", close=True), 502),
    ("never-answers", "13", hang_until_closed, 504),
    (
        "101-then-hangs-up",
        "13",
        answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", close=True),
        101,
    ),
]


async def test_a_failed_websocket_handshake_leaks_no_connection(gate: Gate, scripted: ScriptedUpstream) -> None:
    """Whatever becomes of the handshake, the client's connection closes after the answer, and the upstream's is
    closed or back in the pool; a handshake without a token never reaches the upstream."""
    baseline = gate.snapshot()
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/ws-denied", *HANDSHAKE, "Sec-WebSocket-Version: 13", token=False))
    assert (await read_response(reader)).status == 401
    assert await closed_by_peer(reader) == b""
    writer.close()
    for row, version, script, status in WEBSOCKETS:
        path = f"/f/ws/{row}"
        scripted.script(path.encode(), script)
        reader, writer = await gate.connect()
        writer.write(gate.head("GET", path, *HANDSHAKE, f"Sec-WebSocket-Version: {version}"))
        response = await read_response(reader, head_only=status == 101)
        assert response.status == status, row
        assert await closed_by_peer(reader) == b"", row
        writer.close()
        await gate.decision(path)
        await gate.settles(baseline, scripted)
    assert b"/f/ws-denied" not in scripted.targets
    gate.assert_clean()
