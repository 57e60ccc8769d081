"""Fetching the issuer's keys over HTTP: OIDC discovery (once), then the JWKS document, both strictly bounded.

The key cache (`jwks.py`) takes any `FetchJwks`; this is the production one, on the app's own aiohttp session (not
pyjwt's blocking urllib client). Every failure is a `JwksFetchError` naming the URL; aiohttp's exceptions never leave
this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp

from scopegate.errors import JwksFetchError


def new_session() -> aiohttp.ClientSession:
    """The session key fetches go over: no cookies kept, no proxy settings taken from the environment."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class HttpJwksFetcher:
    """`FetchJwks` over the app's aiohttp session: OIDC discovery (once) when no jwks_uri is configured, then the JWKS.

    Every failure is a `JwksFetchError` naming the URL; aiohttp's exceptions never leave this class.
    """

    __slots__ = ("_discovery_url", "_issuer", "_jwks_uri", "_max_bytes", "_session", "_timeout")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        issuer: str,
        jwks_uri: str | None,
        timeout_seconds: float = 5.0,
        max_bytes: int = 1 << 20,
    ) -> None:
        self._session = session
        self._issuer = issuer
        self._jwks_uri = jwks_uri
        self._discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._max_bytes = max_bytes

    @property
    def url(self) -> str:
        """Where the keys come from, for logs: the JWKS URL once known (configured or discovered), else discovery's."""
        return self._jwks_uri or self._discovery_url

    async def __call__(self) -> Mapping[str, Any]:
        return await self._get_json(await self._jwks_url())

    async def _jwks_url(self) -> str:
        if self._jwks_uri is None:
            document = await self._get_json(self._discovery_url)
            self._jwks_uri = _jwks_uri_from_discovery(document, self._issuer, self._discovery_url)
        return self._jwks_uri

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        try:
            async with self._session.get(
                url, timeout=self._timeout, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status != 200:
                    _fail(url, f"HTTP {response.status} (expected 200; redirects are not followed)")
                body = await _read_bounded(response.content, self._max_bytes, url)
        except TimeoutError as exc:
            _fail(url, f"no complete answer within {self._timeout.total} s", exc)
        except aiohttp.ClientError as exc:
            _fail(url, f"{type(exc).__name__}: {exc}", exc)
        return _json_object(body, url)


def _fail(url: str, what: str, cause: BaseException | None = None) -> NoReturn:
    raise JwksFetchError(f"GET {url}: {what}") from cause


async def _read_bounded(content: aiohttp.StreamReader, max_bytes: int, url: str) -> bytes:
    """The body, refusing more than max_bytes whatever Content-Length claims (or omits)."""
    body = bytearray()
    async for chunk in content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            _fail(url, f"body larger than {max_bytes} bytes")
    return bytes(body)


def _json_object(body: bytes, url: str) -> Mapping[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        _fail(url, f"body is not JSON ({type(exc).__name__})", exc)
    if not isinstance(value, dict):
        _fail(url, "body is not a JSON object")
    return value


def _jwks_uri_from_discovery(document: Mapping[str, Any], issuer: str, url: str) -> str:
    """OIDC Discovery section 4.3: the document's issuer must be ours exactly, or its keys are someone else's."""
    if document.get("issuer") != issuer:
        _fail(url, f"discovery names issuer {str(document.get('issuer'))[:200]!r}, not the configured {issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
        _fail(url, "discovery has no http(s) jwks_uri")
    return jwks_uri
