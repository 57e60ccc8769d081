"""Baselines written the obvious way with aiohttp: targets `aiohttp-minimal` and `aiohttp-pyjwt`.

- aiohttp-minimal: aiohttp's low-level server (`web.Server`: no router, no middlewares, no access log), one
  ClientSession with a keepalive pool to the upstream, uvloop. Each request is forwarded, the upstream's response
  read whole and returned. The floor for any aiohttp proxy on this machine.
- aiohttp-pyjwt (`--issuer` given): the same plus what a naive auth layer adds: the JWKS loaded once at start
  (OIDC discovery, then jwks_uri), then on every request `jwt.decode` (signature, iss, aud, exp), 401 without a
  token or with a bad one, 403 without the scope. What scopegate has to beat to justify its extra work.

Usage: python aioproxy.py --port P --upstream http://127.0.0.1:U [--issuer URL --audience AUD --scope SCOPE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import jwt
import uvloop
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Verifier:
    """`jwt.decode` with a key picked by `kid` from the JWKS loaded at start, then the scope check."""

    def __init__(self, jwks: dict[str, Any], issuer: str, audience: str, scope: str) -> None:
        self._keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(jwks).keys}
        self._issuer = issuer
        self._audience = audience
        self._scope = scope

    def denial(self, authorization: str | None) -> web.Response | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _deny(401, 'Bearer realm="aioproxy"')
        try:
            key = self._keys[jwt.get_unverified_header(token).get("kid")]
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, KeyError):
            return _deny(401, 'Bearer realm="aioproxy", error="invalid_token"')
        scope = claims.get("scope")
        if not isinstance(scope, str) or self._scope not in scope.split():
            return _deny(403, f'Bearer realm="aioproxy", error="insufficient_scope", scope="{self._scope}"')
        return None


def _deny(status: int, challenge: str) -> web.Response:
    return web.Response(status=status, headers={"WWW-Authenticate": challenge})


def make_handler(session: aiohttp.ClientSession, upstream: str, verifier: Verifier | None) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if verifier is not None:
            denied = verifier.denial(request.headers.get("Authorization"))
            if denied is not None:
                return denied
        return await forward(session, upstream, request)

    return handle


async def forward(session: aiohttp.ClientSession, upstream: str, request: web.BaseRequest) -> web.Response:
    headers = CIMultiDict((name, value) for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP)
    body = await request.read()
    url = URL(upstream + request.raw_path, encoded=True)
    try:
        async with session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as response:
            payload = await response.read()
            out = CIMultiDict(
                (name, value) for name, value in response.headers.items() if name.lower() not in HOP_BY_HOP
            )
            return web.Response(status=response.status, body=payload, headers=out)
    except (aiohttp.ClientError, TimeoutError):
        return web.Response(status=502, text="bad gateway\n")


async def load_jwks(session: aiohttp.ClientSession, issuer: str) -> dict[str, Any]:
    async with session.get(f"{issuer}/.well-known/openid-configuration") as response:
        response.raise_for_status()
        discovery = json.loads(await response.read())
    async with session.get(discovery["jwks_uri"]) as response:
        response.raise_for_status()
        jwks: dict[str, Any] = json.loads(await response.read())
    return jwks


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=300)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        verifier = None
        if args.issuer:
            jwks = await load_jwks(session, args.issuer)
            verifier = Verifier(jwks, args.issuer, args.audience, args.scope)
        server = web.Server(make_handler(session, args.upstream.rstrip("/"), verifier), access_log=None)
        listener = await loop.create_server(server, "127.0.0.1", args.port, backlog=1024)
        await stop.wait()
        listener.close()
        await server.shutdown(1.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--upstream", required=True, help="http://host:port to forward to")
    parser.add_argument("--issuer", help="verify bearer tokens from this issuer (enables aiohttp-pyjwt)")
    parser.add_argument("--audience", default="https://api.example.com")
    parser.add_argument("--scope", default="read:report")
    return parser.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(serve(parse_args()))
