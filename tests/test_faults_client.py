"""Client faults against the real `scopegate run`: clients that leave mid-upload or mid-download, send their head a
byte at a time, send nothing at all, or open thousands of connections and sit on them.

As in `test_faults_upstream.py`: what the client gets and what the log says, nothing denied reaching the upstream,
no traceback, and the process's file descriptors and TCP connections back to their baseline afterwards.
`limits.request_header_timeout_seconds` is 1 s, except for the idle-connections test, whose connections must stay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from test_operations import bearer

from conftest import IssuerServer
from faultlib import (
    Gate,
    MiB,
    ScriptedUpstream,
    UpstreamRequest,
    closed_by_peer,
    fresh_session,
    raise_fd_limit,
    read_head,
    run_gate,
    scripted_upstream,
    tcp_sockets,
    until,
)

IMPATIENT = """
limits:
  request_header_timeout_seconds: 1
  send_timeout_seconds: 1
"""
PATIENT = """
limits:
  request_header_timeout_seconds: 60
  keepalive_timeout_seconds: 60
"""
IDLE_CONNECTIONS = 2000
LEAVING = ("reset", "close")


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as upstream:
        yield upstream


@pytest.fixture
async def gate(tmp_path: Path, issuer: IssuerServer, scripted: ScriptedUpstream) -> AsyncIterator[Gate]:
    async with run_gate(tmp_path, issuer.issuer, scripted.url, extra=IMPATIENT) as running:
        yield running


async def leave(writer: asyncio.StreamWriter, how: str) -> None:
    """Go away: a reset (`abort`) or a plain close."""
    if how == "reset":
        writer.transport.abort()
    else:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- leaving mid-request ----------------------------------------------------------------------------------------


async def test_a_client_leaving_mid_upload(gate: Gate, scripted: ScriptedUpstream) -> None:
    """Logged as 499 `client_closed_mid_body`; the upstream connection carrying the half body is closed, not
    pooled (its request can never complete). Left with a reset, then with a plain close."""
    baseline = gate.snapshot()
    started = asyncio.Event()

    async def read_upload(request: UpstreamRequest) -> bool:
        started.set()
        await request.read_body()
        raise AssertionError("the whole body arrived, but the client sent only part of it")

    scripted.script(b"/f/upload/", read_upload)
    for how in LEAVING:
        started.clear()
        _, writer = await gate.connect()
        writer.write(gate.head("POST", f"/f/upload/{how}", f"Content-Length: {8 * MiB}") + b"u" * MiB)
        await writer.drain()
        await asyncio.wait_for(started.wait(), 20)  # the exchange is under way
        await leave(writer, how)
        line = await gate.decision(f"/f/upload/{how}")
        assert (line["decision"], line["status"], line["detail"]) == ("allow", 499, "client_closed_mid_body"), how
        await until(lambda: scripted.connections_open == 0, "the proxy closed the upstream connection")
        await gate.settles(baseline, scripted, pooled=0)
    await gate.assert_denials_stay_out(scripted)
    gate.assert_clean()


async def endless_download(request: UpstreamRequest) -> bool:
    await request.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
    chunk = b"d" * 65536
    for _ in range(1 << 24):  # 1 TiB: more than any client here reads, yet bounded
        await request.send(chunk)
    return False


async def test_a_client_leaving_mid_download(gate: Gate, scripted: ScriptedUpstream) -> None:
    """The upstream connection still sending is closed (its response cannot be finished), the decision line says
    why, and nothing is left open. Left with a reset, then with a plain close."""
    baseline = gate.snapshot()
    scripted.script(b"/f/download/", endless_download)
    for how in LEAVING:
        reader, writer = await gate.connect()
        writer.write(gate.head("GET", f"/f/download/{how}"))
        assert (await read_head(reader)).status == 200
        await reader.readexactly(MiB)
        await leave(writer, how)
        await until(lambda: scripted.connections_open == 0, "the proxy closed the upstream connection")
        line = await gate.decision(f"/f/download/{how}")
        assert (line["decision"], line["detail"]) == ("allow", "client_closed_mid_body"), how
        await gate.settles(baseline, scripted, pooled=0)
    await gate.assert_denials_stay_out(scripted)
    gate.assert_clean()


async def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    """Slow read: a client takes the head and a little body, then reads nothing and never closes. Once its buffers
    are full and nothing has moved for `limits.send_timeout_seconds`, scopegate cuts it off, closes the upstream
    connection feeding it, and logs why; nothing stays open."""
    baseline = gate.snapshot()
    scripted.script(b"/f/slow-reader", endless_download)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/slow-reader"))
    assert (await read_head(reader)).status == 200
    await reader.readexactly(MiB)
    writer.transport.pause_reading()  # and from here on, read nothing: the socket buffers fill up
    await until(lambda: scripted.connections_open == 0, "the proxy closed the upstream connection")
    line = await gate.decision("/f/slow-reader")
    assert (line["status"], line["detail"]) == (200, "client_not_reading")
    writer.transport.abort()
    await gate.settles(baseline, scripted, pooled=0)
    gate.assert_clean()


async def test_a_client_leaving_mid_download_keeps_the_status_it_was_sent(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    """README: 499 is for a client gone before the response; mid-body, the log keeps the status already sent (as
    nginx does) and says why in `detail`."""
    scripted.script(b"/f/download", endless_download)
    reader, writer = await gate.connect()
    writer.write(gate.head("GET", "/f/download"))
    assert (await read_head(reader)).status == 200
    await reader.readexactly(MiB)
    writer.transport.abort()
    line = await gate.decision("/f/download")
    assert (line["status"], line["detail"]) == (200, "client_closed_mid_body")


# --- slow and silent clients ------------------------------------------------------------------------------------


async def trickle(gate: Gate, data: bytes) -> bytes:
    """Send `data` a byte at a time, every 50 ms, until the proxy answers or closes; returns what it answered."""
    reader, writer = await gate.connect()
    answer = asyncio.create_task(closed_by_peer(reader))
    try:
        for byte in data:
            if answer.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.sleep(0.05)
        return await answer
    finally:
        writer.transport.abort()


async def test_a_head_sent_byte_by_byte_gets_408_and_closes(gate: Gate, scripted: ScriptedUpstream) -> None:
    """Slowloris: ten connections each trickle an allowed request's head (far longer to send than the 1 s head
    deadline); each gets 408, then the connection closes, and nothing reaches the upstream."""
    baseline = gate.snapshot()
    head = gate.head("GET", "/f/slow")
    answers = await asyncio.gather(*(trickle(gate, head) for _ in range(10)))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert b"\r\nConnection: close\r\n" in answer
    await gate.logged(
        lambda line: line.get("status") == 408 and line.get("detail") == "request_header_timeout", "a 408"
    )
    assert b"/f/slow" not in scripted.targets
    await gate.assert_denials_stay_out(scripted)
    await gate.settles(baseline, scripted, pooled=0)
    gate.assert_clean()


async def test_a_connection_that_sends_nothing_is_closed_without_a_response(
    gate: Gate, scripted: ScriptedUpstream
) -> None:
    baseline = gate.snapshot()
    connections = [await gate.connect() for _ in range(20)]
    answers = await asyncio.gather(*(closed_by_peer(reader) for reader, _ in connections))
    assert answers == [b""] * 20
    for _, writer in connections:
        writer.close()
    assert not gate.cli.events("decision"), "nothing was asked, nothing is logged as a request"
    await gate.settles(baseline, scripted, pooled=0)
    gate.assert_clean()


async def test_thousands_of_idle_connections_do_not_stop_a_request(
    tmp_path: Path, issuer: IssuerServer, scripted: ScriptedUpstream
) -> None:
    """2000 connections that send nothing (with a head deadline long enough to keep them all): a normal request is
    still answered, and once the clients close, the process holds what it held before."""
    raise_fd_limit(2 * IDLE_CONNECTIONS + 1024)  # this process's sockets, and (inherited) the proxy's
    async with run_gate(tmp_path, issuer.issuer, scripted.url, extra=PATIENT) as gate:
        baseline = gate.snapshot()
        idle: list[asyncio.StreamWriter] = []
        try:
            for _ in range(IDLE_CONNECTIONS // 200):
                idle += [writer for _, writer in await asyncio.gather(*(gate.connect() for _ in range(200)))]
            await until(
                lambda: (
                    len([sock for sock in tcp_sockets(gate.pid) if sock.local_port == gate.port]) >= IDLE_CONNECTIONS
                ),
                "the proxy accepted every connection",
            )
            url, headers = gate.url + "/f/among-idle", bearer(gate.token())
            async with fresh_session() as session, session.get(url, headers=headers) as response:
                assert (response.status, await response.read()) == (200, b"/f/among-idle")
            await gate.assert_denials_stay_out(scripted)
        finally:
            for writer in idle:
                writer.transport.abort()
        await gate.settles(baseline, scripted)
        gate.assert_clean()
