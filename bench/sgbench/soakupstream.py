"""The soak's upstream, a process of its own: scopegate's echo app, plus a record of every request that reaches it.

`python -m sgbench.soakupstream --port P` serves `scopegate.dev.echo` (which answers with what it received: method,
raw path, headers, body length and digest, so the soak can check identity headers per request) and writes one line
per request to stdout, `<X-Request-Id>\\t<method>\\t<raw target>`, flushed at once: after the run the soak holds the
record against what it expected forwarded. One injected fault of its own: `/reset/...` aborts the connection
without an answer, which scopegate must turn into a 502.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvloop
from aiohttp import web

from scopegate.dev.echo import echo_app

RESET_PREFIX = "/reset/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "-")
    sys.stdout.write(f"{request_id}\t{request.method}\t{request.raw_path[:300]}\n")
    if request.raw_path.startswith(RESET_PREFIX) and request.transport is not None:
        request.transport.abort()
        return web.Response(status=500)  # never reaches anyone: the connection is gone
    return await handler(request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgbench.soakupstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    app = echo_app()
    app.middlewares.append(record)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
