"""The fixed world every target is measured against: one nginx (one worker) on loopback serving
- the upstream: 200 with the same 100-byte text/plain body on every path but ECHO_PATH, which answers with the
  identity headers it was sent (for the checks);
- the issuer: `/oidc/.well-known/openid-configuration` and `/oidc/jwks`, static files made from the cached keys.

The issuer's port is part of every token's `iss`, so it is kept in bench/.cache/issuer-port and reused while it is
free; only when it is taken does the harness pick another one (and re-mint the tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import net
from .keys import SigningKey, discovery_document, jwks_document
from .layout import ECHO_PATH, LOOPBACK, REQUEST_PATH, UPSTREAM_BODY
from .procs import HarnessError, Proc, ProcessSet
from .templates import render

NGINX = "nginx"


@dataclass(frozen=True)
class Fixtures:
    upstream_port: int
    issuer_port: int
    proc: Proc

    @property
    def issuer(self) -> str:
        return issuer_url(self.issuer_port)

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"


def issuer_url(port: int) -> str:
    return f"http://{LOOPBACK}:{port}/oidc"


def choose_issuer_port(cache: Path) -> int:
    """The cached issuer port when it is free, else a new free one (remembered for next time)."""
    remembered = cache / "issuer-port"
    try:
        port = int(remembered.read_text())
        if net.port_is_free(port):
            return port
    except (OSError, ValueError):
        pass
    port = net.free_port()
    cache.mkdir(parents=True, exist_ok=True)
    remembered.write_text(f"{port}\n")
    return port


def start_fixtures(procs: ProcessSet, work: Path, keys: dict[str, SigningKey], issuer_port: int) -> Fixtures:
    _write_issuer_files(work / "issuer" / "oidc", keys, issuer_url(issuer_port))
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / "fixtures-tmp" / name).mkdir(parents=True, exist_ok=True)
    upstream_port = net.free_port()
    values = {
        "WORK": work,
        "UPSTREAM_PORT": upstream_port,
        "ISSUER_PORT": issuer_port,
        "BODY": UPSTREAM_BODY,
        "ECHO_PATH": ECHO_PATH,
    }
    config = render("fixtures.nginx.conf", values, work / "fixtures.nginx.conf")
    proc = procs.start("fixtures (nginx)", nginx_argv(config, work), work / "fixtures.log")
    fixtures = Fixtures(upstream_port, issuer_port, proc)
    net.wait_ready(proc, lambda: net.answers(upstream_port) and net.answers(issuer_port), "serving", timeout=15)
    _check_fixtures(fixtures, len(keys))
    return fixtures


def nginx_argv(config: Path, work: Path) -> list[str]:
    """nginx in the foreground (the config says `daemon off`) with its prefix and early error log in `work`."""
    return [NGINX, "-p", f"{work}/", "-e", str(work / "nginx-startup.log"), "-c", str(config)]


def _write_issuer_files(directory: Path, keys: dict[str, SigningKey], issuer: str) -> None:
    (directory / ".well-known").mkdir(parents=True, exist_ok=True)
    (directory / ".well-known" / "openid-configuration").write_text(json.dumps(discovery_document(issuer, keys)))
    (directory / "jwks").write_text(json.dumps(jwks_document(keys)))
    for path in (directory.parent, directory, directory / ".well-known"):  # nginx workers run as nobody
        path.chmod(0o755)
    for path in (directory / "jwks", directory / ".well-known" / "openid-configuration"):
        path.chmod(0o644)


def _check_fixtures(fixtures: Fixtures, key_count: int) -> None:
    upstream = net.get(fixtures.upstream_port, REQUEST_PATH)
    if upstream.status != 200 or upstream.body != UPSTREAM_BODY.encode():
        raise HarnessError(f"upstream nginx answered {upstream.status} {upstream.body[:120]!r}")
    echo = net.get(fixtures.upstream_port, ECHO_PATH, {"X-Auth-Subject": "fixture-check"})
    if echo.status != 200 or parse_echo(echo.body).get("x-auth-subject") != "fixture-check":
        raise HarnessError(f"upstream nginx {ECHO_PATH} answered {echo.status} {echo.body[:300]!r}")
    discovery = net.get(fixtures.issuer_port, "/oidc/.well-known/openid-configuration")
    jwks = net.get(fixtures.issuer_port, "/oidc/jwks")
    if discovery.status != 200 or json.loads(discovery.body).get("issuer") != fixtures.issuer:
        raise HarnessError(f"issuer discovery answered {discovery.status} {discovery.body[:200]!r}")
    if jwks.status != 200 or len(json.loads(jwks.body).get("keys", [])) != key_count:
        raise HarnessError(f"issuer JWKS answered {jwks.status} {jwks.body[:200]!r}")


def parse_echo(body: bytes) -> dict[str, str]:
    """The upstream's answer on ECHO_PATH: one `name: value` line per identity header (value empty when absent)."""
    headers = {}
    for line in body.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers
