"""Gateway options: `upstream_host` (which Host the upstream sees) and `strip_prefix` (re-rooting the path).

What is authorized is still what is forwarded: the route matched the full normalized path, and the upstream gets
exactly that path minus the route's literal prefix, with the raw query as sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from scopegate.config import parse_config
from scopegate.errors import ConfigError

from conftest import API, IssuerServer, Proxy, ProxyFactory, Running, make_config

RULES = """
upstream_host: preserve
routes:
  - name: api-v1
    match: { path: "/api/v1/**" }
    resource: https://api.example.com
    strip_prefix: /api
    upstream_host: upstream
  - name: legacy
    match: { path: "/legacy/{id}" }
    resource: https://api.example.com
    strip_prefix: /legacy
    upstream_host: legacy.internal:8443
  - name: exact
    match: { path: "/svc" }
    public: true
    strip_prefix: /svc
  - name: everything-else
    match: { path: "/**" }
    public: true
"""


@pytest.fixture
async def gateway(issuer: IssuerServer, upstream: Running, start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(make_config(issuer.issuer.issuer, upstream.url, rules=RULES))


async def seen_by_upstream(proxy: Proxy, path: str, headers: dict[str, str]) -> dict[str, Any]:
    async with proxy.session.get(proxy.url + path, headers=headers) as response:
        assert response.status == 200, await response.text()
        seen: dict[str, Any] = await response.json()
        return seen


async def test_strip_prefix_reroots_the_path_and_keeps_the_raw_query(gateway: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API)
    seen = await seen_by_upstream(gateway, "/api/v1/items?b=%20x&a=1", {"Authorization": f"Bearer {token}"})
    assert (seen["path"], seen["query"]) == ("/v1/items", "b=%20x&a=1")


async def test_strip_prefix_of_the_whole_path_forwards_the_root(gateway: Proxy) -> None:
    assert (await seen_by_upstream(gateway, "/svc", {}))["path"] == "/"
    assert (await seen_by_upstream(gateway, "/svc/", {}))["path"] == "/"


async def test_upstream_host_upstream_sends_the_upstreams_authority(
    gateway: Proxy, issuer: IssuerServer, upstream: Running
) -> None:
    token = issuer.issuer.mint(resource=API)
    seen = await seen_by_upstream(
        gateway, "/api/v1/x", {"Authorization": f"Bearer {token}", "Host": "public.example.com"}
    )
    assert seen["headers"]["Host"] == urlsplit(upstream.url).netloc
    assert seen["headers"]["X-Forwarded-Host"] == "public.example.com", "the client's host is kept for the app"


async def test_a_literal_upstream_host_is_sent_as_is(gateway: Proxy, issuer: IssuerServer) -> None:
    token = issuer.issuer.mint(resource=API)
    seen = await seen_by_upstream(gateway, "/legacy/7", {"Authorization": f"Bearer {token}", "Host": "a.example"})
    assert (seen["path"], seen["headers"]["Host"]) == ("/7", "legacy.internal:8443")
    assert seen["headers"]["X-Forwarded-Host"] == "a.example"


async def test_preserve_keeps_the_clients_host(gateway: Proxy) -> None:
    seen = await seen_by_upstream(gateway, "/other", {"Host": "app.example.com"})
    assert seen["headers"]["Host"] == "app.example.com"
    assert seen["path"] == "/other"


async def test_the_decision_log_shows_the_matched_and_the_forwarded_path(
    gateway: Proxy, issuer: IssuerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = issuer.issuer.mint(resource=API)
    await seen_by_upstream(gateway, "/api/v1/items", {"Authorization": f"Bearer {token}"})
    line = next(line for line in capsys.readouterr().out.splitlines() if "route=api-v1" in line)
    assert "path=/api/v1/items" in line
    assert "forwarded_path=/v1/items" in line


@pytest.mark.parametrize(
    ("snippet", "line", "message"),
    [
        pytest.param(
            "  - name: r\n    match: { path: /v2/x }\n    public: true\n    strip_prefix: /api",
            8,
            "does not start with strip_prefix '/api'",
            id="template-outside-the-prefix",
        ),
        pytest.param(
            "  - name: r\n    match: { path: /apix/y }\n    public: true\n    strip_prefix: /api",
            8,
            "does not start with strip_prefix '/api'",
            id="prefix-must-end-at-a-segment",
        ),
        pytest.param(
            "  - name: r\n    match: { path: '/a/{id}' }\n    public: true\n    strip_prefix: '/a/{id}'",
            8,
            "literal path segments",
            id="prefix-with-a-parameter",
        ),
        pytest.param(
            "  - name: r\n    match: { path: /a }\n    public: true\n    upstream_host: 'bad host!'",
            8,
            "expected preserve, upstream or a host name",
            id="bad-host",
        ),
    ],
)
def test_bad_gateway_options_are_config_errors_with_their_line(snippet: str, line: int, message: str) -> None:
    text = f"upstream: http://127.0.0.1:1\nauth:\n  issuer: https://issuer.example\nroutes:\n{snippet}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    (problem,) = caught.value.problems
    assert message in problem
    assert problem.startswith(f"<config>:{line}:"), problem


def test_a_top_level_prefix_a_route_cannot_strip_names_the_route_and_the_setting() -> None:
    text = (
        "upstream: http://127.0.0.1:1\nauth: {issuer: https://issuer.example}\nstrip_prefix: /api\n"
        "routes:\n  - name: ok\n    match: { path: /api/x }\n    public: true\n"
        "  - name: other\n    match: { path: /other }\n    public: true\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    (problem,) = caught.value.problems
    assert problem.startswith("<config>:8:"), problem
    assert "top-level strip_prefix, line 3" in problem
