"""Decision logs and metrics: what an operator reads to see why each request was allowed or denied.

Logs are one JSON object per line on stdout (a readable console rendering when stdout is a terminal). As a last
line of defence, a processor masks anything shaped like a JWT or a bearer credential in any log field, so a token
cannot reach the log even through an exception message.

Metrics live in a registry owned by the app (tests build their own); label values are bounded: route names from the
config and the closed `Reason` set, never a path or a subject.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json as json_module
import logging
import os
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, BinaryIO, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from scopegate.errors import Reason
from scopegate.tokencache import CacheStats

# A JWT starts with a base64url JSON object: `eyJ`. Truncated ones (a log field cut short, a parser's error message
# quoting part of a header line) must be masked too, so one part of the token is enough to match.
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}")
# Whitespace after the scheme may come rendered as a JSON or repr escape (`\t`) when the whole line is checked.
_BEARER_CREDENTIAL = re.compile(r"(?i)(bearer(?:\s|\\[tnr])+)[A-Za-z0-9\-._~+/]+=*")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def redact(value: str) -> str:
    """`value` with JWT-shaped strings and bearer credentials masked, whatever the case of the scheme."""
    if "eyJ" not in value and "bearer" not in value.lower():
        return value
    return _BEARER_CREDENTIAL.sub(r"\1[redacted]", _JWT_SHAPED.sub("[redacted-jwt]", value))


class _Redacted:
    """A renderer whose every output passes `redact`: the whole line, so no field, nested value or formatted
    exception escapes it, at the cost of one scan of the line."""

    def __init__(self, render: Callable[[Any, str, MutableMapping[str, Any]], str], *, to_bytes: bool) -> None:
        self._render = render
        self._to_bytes = to_bytes

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str | bytes:
        line = redact(self._render(logger, name, event))
        return line.encode() if self._to_bytes else line


# The standard library's encoder with its default `", "` and `": "` separators: the log format users already match
# against. Its C core is built once here; JSONEncoder.encode (and so structlog's JSONRenderer) builds one per line.
_C_ENCODER: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(json_module.encoder, "c_make_encoder", None)
_ENCODE_JSON = (
    _C_ENCODER(None, repr, json_module.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    if _C_ENCODER is not None
    else None
)
_JSON = json_module.JSONEncoder(default=repr)


def _render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    if _ENCODE_JSON is not None:
        return "".join(_ENCODE_JSON(event, 0))
    return _JSON.encode(event)


class _Second:
    """The current second's `YYYY-MM-DDTHH:MM:SS`, formatted once per second."""

    number = -1
    text = ""


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`timestamp` as structlog's `TimeStamper(fmt="iso", utc=True)` writes it, without a datetime per line."""
    now = time.time()
    second = int(now)
    if second != _Second.number:
        _Second.number = second
        _Second.text = datetime.datetime.fromtimestamp(second, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    micro = int((now - second) * 1_000_000)
    event["timestamp"] = f"{_Second.text}.{micro:06d}Z" if micro else f"{_Second.text}Z"
    return event


def configure_logging(level: str = "info", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Set up structlog once per process: JSON lines, or console rendering when the stream is a TTY.

    JSON lines on a binary stream take structlog's fast path: rendered to bytes and written by `LineBatcher`, which
    gathers the lines of one event-loop iteration into few writes, each of whole lines and at most PIPE_BUF bytes, so
    worker processes sharing one stdout pipe never interleave halves of their lines. The standard library's loggers
    (aiohttp's among them) go through the same processors, redactor included: aiohttp quotes a malformed header line,
    token and all, in the error it logs. Loggers bound before a reconfiguration keep the old settings:
    `bound_logger()` gives the request path a fresh one after each call here.
    """
    out = stream or sys.stdout
    as_json = json if json is not None else not out.isatty()
    binary = getattr(out, "buffer", None) if as_json else None
    shared: list[Any] = [
        _add_worker_pid,
        structlog.processors.add_log_level,
        _timestamp,
        structlog.processors.format_exc_info,
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    global _batcher
    flush_logs()
    if binary is not None:
        batcher = _batcher = LineBatcher(binary)
        logger_factory: Any = lambda *_: batcher  # noqa: E731 -- one batcher for every logger of the process
    else:
        logger_factory = structlog.WriteLoggerFactory(out)
    structlog.configure(
        processors=[*shared, _renderer(as_json, binary=binary is not None)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=_renderer(as_json, binary=False),
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)


def tag_worker(pid: int) -> None:
    """From now on every log line of this process says which worker wrote it (`worker_pid`)."""
    _Worker.pid = pid


class _Worker:
    pid: int | None = None


def _add_worker_pid(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _Worker.pid is not None:
        event["worker_pid"] = _Worker.pid
    return event


class LineBatcher:
    """A structlog logger writing rendered lines in batches: the lines of one event-loop iteration go out together.

    A decision line per request is scopegate's most frequent system call otherwise. Each write holds whole lines and
    at most PIPE_BUF bytes (a line longer than that alone), which a pipe writes atomically. Lines are batched only
    while a server runs (`batch_logs_in`); otherwise each is written at once.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._pending: list[bytes] = []
        self._scheduled = False

    def msg(self, message: bytes) -> None:
        line = message + b"\n"
        loop = _Batching.loop
        if loop is None:
            self._write([line])
            return
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            self._write(pending)

    def _write(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > _PIPE_BUF:
                self._emit(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._emit(chunk)

    def _emit(self, chunk: list[bytes]) -> None:
        self._file.write(b"".join(chunk))
        self._file.flush()


_PIPE_BUF = 4096
_batcher: LineBatcher | None = None  # the one in use, so reconfiguring and exiting can flush what it holds


class _Batching:
    """Where log lines are batched, if anywhere."""

    loop: asyncio.AbstractEventLoop | None = None


def batch_logs_in(loop: asyncio.AbstractEventLoop | None) -> None:
    """Batch log lines per iteration of `loop` (a running server's), or (None) write each at once again.

    The loop is handed over rather than looked up per line: on Python 3.11 `asyncio.get_running_loop()` costs a
    getpid() system call each time.
    """
    if loop is None:
        flush_logs()
    _Batching.loop = loop


def flush_logs() -> None:
    """Write the log lines still held (at shutdown)."""
    if _batcher is not None:
        _batcher.flush()


atexit.register(flush_logs)


def _renderer(as_json: bool, *, binary: bool) -> _Redacted:
    if not as_json:
        return _Redacted(structlog.dev.ConsoleRenderer(), to_bytes=False)
    return _Redacted(_render_json, to_bytes=binary)


def bound_logger(name: str = "scopegate") -> Any:
    """A logger bound to the configuration in force now: the request path's, so its calls skip the lazy proxy."""
    return structlog.get_logger(name).bind()


def multiprocess_dir() -> str | None:
    """Set by `scopegate run --workers N`: metrics are then written to files there and summed by the admin port."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric scopegate exports, registered in one registry.

    With several worker processes each gauge says how its values combine (`multiprocess_mode`): in-flight requests
    and ready workers add up, key counts and the config hash take the largest live value.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "scopegate_requests", "Requests by route, decision and reason.", ["route", "decision", "reason"], registry=r
        )
        self.request_duration = Histogram(
            "scopegate_request_duration_seconds",
            "Whole request as seen by the client.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "scopegate_upstream_duration_seconds",
            "Until the upstream's response headers arrived.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jwks_refresh = Counter("scopegate_jwks_refresh", "JWKS fetch attempts.", ["result"], registry=r)
        self.jwks_keys = Gauge(
            "scopegate_jwks_keys", "Signing keys currently cached.", registry=r, multiprocess_mode="livemax"
        )
        self.config_reloads = Counter("scopegate_config_reloads", "Config reload attempts.", ["result"], registry=r)
        self.config_info = Gauge(
            "scopegate_config_info",
            "Hash of the config in force (value 1).",
            ["hash"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            "scopegate_inflight_requests", "Requests being handled now.", registry=r, multiprocess_mode="livesum"
        )
        self.worker_ready = Gauge(
            "scopegate_worker_ready",
            "Worker processes ready to serve (signing keys loaded, not draining).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.token_cache_entries = Gauge(
            "scopegate_token_cache_entries",
            "Verified tokens remembered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.token_cache_lookups = Counter(
            "scopegate_token_cache_lookups",
            "Verified-token cache lookups by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.token_cache_evictions = Counter(
            "scopegate_token_cache_evictions",
            "Verified tokens dropped: for room, expired, or their key left the JWKS.",
            registry=r,
        )
        self._config_hash: str | None = None
        self._meters: dict[str, RouteMeter] = {}
        self._cache_seen = CacheStats(capacity=0, entries=0, hits=0, misses=0, evictions=0)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def meter(self, route: str) -> RouteMeter:
        """The metric children of `route` ("" for requests no route matched), bound on first use and kept."""
        meter = self._meters.get(route)
        if meter is None:
            meter = self._meters[route] = RouteMeter(self, route)
        return meter

    def token_cache_now(self, stats: CacheStats) -> None:
        """Bring the cache metrics up to `stats`: the cache counts in plain ints, synced here now and then, so a
        lookup costs no metric update."""
        seen = self._cache_seen
        self.token_cache_entries.set(stats.entries)
        self.token_cache_lookups.labels("hit").inc(max(0, stats.hits - seen.hits))
        self.token_cache_lookups.labels("miss").inc(max(0, stats.misses - seen.misses))
        self.token_cache_evictions.inc(max(0, stats.evictions - seen.evictions))
        self._cache_seen = stats

    def jwks_refreshed(self, success: bool, keys: int) -> None:
        self.jwks_refresh.labels("success" if success else "failure").inc()
        self.jwks_keys.set(keys)

    def config_loaded(self, digest: str) -> None:
        if self._config_hash is not None and self._config_hash != digest:
            # Multi-process values live in files that clear() cannot reach: mark the old hash 0 instead.
            if multiprocess_dir():
                self.config_info.labels(self._config_hash).set(0)
            else:
                self.config_info.remove(self._config_hash)
        self.config_info.labels(digest).set(1)
        self._config_hash = digest


class RouteMeter:
    """One route's metric children, bound once: recording a request is then a few increments, no label lookups."""

    __slots__ = ("_duration", "_metrics", "_outcomes", "_route", "_upstream")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._metrics = metrics
        self._route = route
        self._outcomes: dict[tuple[str, Reason], Any] = {}
        self._duration: Any = None
        self._upstream: Any = None

    def record(self, decision: str, reason: Reason, seconds: float, upstream_seconds: float | None) -> None:
        outcome = self._outcomes.get((decision, reason))
        if outcome is None:
            outcome = self._outcomes[(decision, reason)] = self._metrics.requests.labels(
                self._route, decision, reason.value
            )
        outcome.inc()
        if self._duration is None:
            self._duration = self._metrics.request_duration.labels(self._route)
        self._duration.observe(seconds)
        if upstream_seconds is not None:
            if self._upstream is None:
                self._upstream = self._metrics.upstream_duration.labels(self._route)
            self._upstream.observe(upstream_seconds)
