"""The `scopegate` command: run, check, explain, test, routes, init, demo.

Exit codes: 0 success (explain: allow; test: all passed), 1 explain: deny / test: a case failed / run: could not
serve / check --online: an issuer's keys could not be fetched, 2 invalid config (check --strict: or a warning), test
file or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scopegate import __version__
from scopegate.config import Config, load_config
from scopegate.errors import ConfigError

EXIT_OK, EXIT_DENY, EXIT_FAILED, EXIT_CONFIG = 0, 1, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": _run,
        "check": _check,
        "explain": _explain,
        "test": _test,
        "routes": _routes,
        "init": _init,
        "demo": _demo,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scopegate", description="Policy enforcement proxy for Logto / RFC 9068 access tokens."
    )
    parser.add_argument("--version", action="version", version=f"scopegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve the proxy and the admin port")
    _config_option(run, required_env=True)
    run.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")

    check = commands.add_parser("check", help="validate and lint a config file, or a Helm values file's config:")
    _config_option(source := check.add_mutually_exclusive_group(), required_env=False)
    source.add_argument("--values", type=Path, metavar="FILE", help="a Helm values file: check its `config:` block")
    check.add_argument("--strict", action="store_true", help="warnings fail the check too (exit 2)")
    check.add_argument("--online", action="store_true", help="also fetch each issuer's discovery document and JWKS")

    explain = commands.add_parser("explain", help="show which route matches a request and the decision")
    _config_option(explain, required_env=True)
    explain.add_argument("method", metavar="METHOD")
    explain.add_argument("url", metavar="URL", help="a full URL or a path with query")
    token = explain.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="JWT", help="verify this token against the issuer's JWKS")
    token.add_argument("--claims", metavar="JSON", help="use these claims as they are (no signature check)")
    explain.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="a request header (repeatable)"
    )

    from scopegate.tools import openapi, policytest

    policytest.register(commands)
    openapi.register(commands)

    routes = commands.add_parser("routes", help="print the route table, in evaluation order")
    _config_option(routes, required_env=True)
    routes.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="default: text")

    demo = commands.add_parser("demo", help="run a local issuer, an echo upstream and the proxy, print curl lines")
    demo.add_argument("--config", type=Path, default=None, help="rules to serve (default: the bundled demo.yaml)")
    for name in ("proxy", "admin", "issuer", "upstream"):
        demo.add_argument(f"--{name}-port", type=int, default=None, metavar="PORT", help=f"{name} port (0: any free)")
    return parser


def _config_option(parser: argparse._ActionsContainer, *, required_env: bool) -> None:
    default = os.environ.get("SCOPEGATE_CONFIG")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        required=required_env and not default,
        help="config file (or set SCOPEGATE_CONFIG)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _load(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    """Problems and warnings on stdout (problems first); the OK line before the warnings; counts on stderr."""
    from scopegate.tools.lint import lint

    if args.config is None and args.values is None:
        print("scopegate check: give --config FILE or --values FILE (or set SCOPEGATE_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    source = args.values or args.config
    config, problems, warnings = _checked(args)
    if config is not None:
        found = lint(config.routes, crumb="config.routes" if args.values else "routes")
        warnings += [(warning.line, warning.render(str(source))) for warning in found]
    notes = [text for _, text in sorted(warnings, key=lambda warning: warning[0])]
    if config is None or (notes and args.strict):
        print("\n".join([*problems, *notes]))
        counts = [f"{len(problems)} problem(s)"] * bool(problems) + [f"{len(notes)} warning(s)"] * bool(notes)
        strict = "" if problems else "; --strict fails on warnings"
        print(f"{source}: {', '.join(counts)}{strict}", file=sys.stderr)
        return EXIT_CONFIG
    print(_summary(source, config, from_values=args.values is not None) + (f"; {len(notes)} warning(s)" * bool(notes)))
    print("\n".join(notes), end="\n" if notes else "")
    return _online(config) if args.online else EXIT_OK


def _summary(source: Path, config: Config, *, from_values: bool) -> str:
    public = sum(rule.public for rule in config.routes)
    names = [issuer.issuer for issuer in config.auth.issuers]
    issuers = f"issuer {names[0]}" if len(names) == 1 else f"issuers {', '.join(names)}"
    upstream = config.upstream
    if from_values:
        upstream = "set by the chart" if config.upstream else "none (decision mode)"
    return (
        f"{source}: OK: {'config: ' if from_values else ''}{len(config.routes)} routes "
        f"({len(config.routes) - public} protected, {public} public); {issuers}; upstream {upstream}"
    )


def _checked(args: argparse.Namespace) -> tuple[Config | None, list[str], list[tuple[int, str]]]:
    """The config (None when invalid), its problems, and the warnings found while reading it, with their lines."""
    if args.values is not None:
        from scopegate.tools.helmvalues import check_values

        checked = check_values(args.values)
        return checked.config, checked.problems, list(checked.warnings)
    try:
        return load_config(args.config), [], []
    except ConfigError as exc:
        return None, list(exc.problems), []


def _online(config: Config) -> int:
    from scopegate.tools.online import probe

    reports = asyncio.run(probe(config.auth))
    print("\n".join(line for report in reports for line in report.lines()))
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


def _init(args: argparse.Namespace) -> int:
    from scopegate.tools import openapi

    return openapi.run(args)


def _routes(args: argparse.Namespace) -> int:
    from scopegate.tools.routes import render

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    sys.stdout.write(render(config.routes, args.format))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from scopegate.observability import configure_logging
    from scopegate.serve import Server, run_until_signalled, use_uvloop

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log_level)
    try:
        if args.workers > 1:
            from scopegate.workers import run_workers

            return run_workers(config, args.workers)
        use_uvloop()
        return asyncio.run(run_until_signalled(Server(config)))
    except OSError as exc:
        print(f"scopegate: cannot serve: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _explain(args: argparse.Namespace) -> int:
    from scopegate.tools.explain import explain

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    claims: Any = None
    if args.claims is not None:
        try:
            claims = json.loads(args.claims)
        except json.JSONDecodeError as exc:
            print(f"scopegate: --claims is not JSON: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if not isinstance(claims, dict):
            print("scopegate: --claims must be a JSON object", file=sys.stderr)
            return EXIT_CONFIG
    from scopegate.observability import configure_logging

    configure_logging(config.log_level, stream=sys.stderr)  # stdout is the report, for pipes
    headers = [_header(text) for text in args.header]  # repeated names stay repeated, as on the wire
    result = asyncio.run(explain(config, args.method, args.url, headers=headers, token=args.token, claims=claims))
    print("\n".join(result.lines(config)))
    return EXIT_OK if result.allowed else EXIT_DENY


def _test(args: argparse.Namespace) -> int:
    from scopegate.observability import configure_logging
    from scopegate.tools import policytest

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log_level, stream=sys.stderr)  # stdout is the report
    return policytest.run(args, config)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"scopegate: --header wants NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _demo(args: argparse.Namespace) -> int:
    from scopegate.dev.demo import DEMO_CONFIG, DemoPorts, run_demo
    from scopegate.observability import configure_logging
    from scopegate.serve import use_uvloop

    config = _load(args.config or DEMO_CONFIG)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.log_level)
    use_uvloop()
    ports = DemoPorts(
        proxy=args.proxy_port, admin=args.admin_port, issuer=args.issuer_port, upstream=args.upstream_port
    )
    try:
        return asyncio.run(run_demo(config, ports))
    except OSError as exc:
        print(f"scopegate demo: cannot listen: {exc} (choose other ports with --proxy-port etc.)", file=sys.stderr)
        return EXIT_FAILED
