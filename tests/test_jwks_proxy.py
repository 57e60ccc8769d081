"""Signing keys as the running proxy sees them: outages, fail-closed, rotation and kid floods."""

from __future__ import annotations

import json
from base64 import urlsafe_b64decode, urlsafe_b64encode

import pytest
from aiohttp import web

from scopegate.dev.issuer import DevIssuer

from conftest import API, IssuerServer, ProxyFactory, Running, free_port, make_config, start_app


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_kid(token: str, kid: str) -> str:
    """The same token with another kid in its header (the signature no longer matters: the kid is unknown)."""
    header_b64, payload, signature = token.split(".")
    header = json.loads(urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header["kid"] = kid
    encoded = urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}.{signature}"


async def test_no_keys_ever_fails_closed(upstream: Running, start_proxy: ProxyFactory) -> None:
    dead_issuer = f"http://127.0.0.1:{free_port()}/oidc"
    proxy = await start_proxy(make_config(dead_issuer, upstream.url), wait_ready=False)
    stranger = DevIssuer(dead_issuer).mint(resource=API, scopes=["read:report"])
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=auth(stranger)) as response:
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert (await response.json())["error"] == "temporarily_unavailable"
    async with proxy.session.get(proxy.url + "/api/reports/1") as response:
        assert response.status == 401, "no token is still a 401: nothing to verify"
    async with proxy.session.get(proxy.url + "/public/x") as response:
        assert response.status == 200, "public routes need no keys"
    async with proxy.session.get(proxy.admin + "/readyz") as response:
        assert response.status == 503
    async with proxy.session.get(proxy.admin + "/healthz") as response:
        assert response.status == 200
    assert proxy.metrics.requests.labels("reports-read", "deny", "jwks_unavailable")._value.get() == 1


async def test_cached_keys_keep_serving_while_the_issuer_is_down(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(make_config(issuer.issuer.issuer, upstream.url))
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    await issuer.stop()
    await proxy.server.gateway._keys.refresh()  # type: ignore[union-attr]
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=auth(token)) as response:
        assert response.status == 200
    async with proxy.session.get(proxy.admin + "/readyz") as response:
        assert response.status == 200
    assert proxy.metrics.jwks_refresh.labels("failure")._value.get() >= 1


async def test_rotation_new_kid_accepted_after_one_refetch(
    issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory
) -> None:
    proxy = await start_proxy(make_config(issuer.issuer.issuer, upstream.url, cooldown=0))
    old_token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    fetches_before = proxy.metrics.jwks_refresh.labels("success")._value.get()
    # The tenant rotates: same issuer URL, a new signing key (and the old one withdrawn).
    await issuer.stop()
    rotated = DevIssuer(issuer.issuer.issuer)
    issuer.issuer = rotated
    await issuer.restart()
    new_token = rotated.mint(resource=API, scopes=["read:report"])
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=auth(new_token)) as response:
        assert response.status == 200
    assert proxy.metrics.jwks_refresh.labels("success")._value.get() == fetches_before + 1
    async with proxy.session.get(proxy.url + "/api/reports/1", headers=auth(old_token)) as response:
        assert response.status == 401, "the withdrawn key no longer verifies"


@pytest.fixture
async def counted_issuer() -> tuple[IssuerServer, list[str]]:
    port = free_port()
    dev = DevIssuer(f"http://127.0.0.1:{port}/oidc")
    fetched: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if request.path.endswith("/jwks"):
            fetched.append(request.path)
        return await handler(request)

    app = dev.app()
    app.middlewares.append(count)
    return IssuerServer(dev, await start_app(app, port), port), fetched


async def test_kid_flood_does_not_become_a_jwks_flood(
    counted_issuer: tuple[IssuerServer, list[str]], upstream: Running, start_proxy: ProxyFactory
) -> None:
    issuer, fetched = counted_issuer
    config = make_config(issuer.issuer.issuer, upstream.url, cooldown=30)
    proxy = await start_proxy(config)
    token = issuer.issuer.mint(resource=API, scopes=["read:report"])
    assert len(fetched) == 1
    for i in range(200):
        async with proxy.session.get(proxy.url + "/api/reports/1", headers=auth(with_kid(token, f"k{i}"))) as resp:
            assert resp.status == 401
    assert len(fetched) <= 2, f"{len(fetched)} JWKS fetches for 200 unknown kids"
    await issuer.stop()
