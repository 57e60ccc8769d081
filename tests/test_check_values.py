"""`scopegate check --values`: a Helm values file's `config:` block, checked as the chart renders it, with the values
file's lines; YAML anchors, merge keys and top-level `x-` blocks in config files, with lines that still point at the
text that is wrong."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scopegate.config import Config, parse_config
from scopegate.errors import ConfigError
from scopegate.tools.helmvalues import parse_values

from conftest import ROOT

CHART = ROOT / "helm" / "scopegate"
TOOLS = ROOT / ".tools"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scopegate", "check", *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("c.yaml"))
    return list(caught.value.problems)


# --- anchors, merge keys and x- blocks in a config file ---------------------------------------------------------

SHARED = """\
x-api: &api
  resource: https://api.example.com
  mode: audit
x-read: &read
  scopes: [read:report]
upstream: http://127.0.0.1:3000
auth: { issuer: https://tenant.logto.app/oidc }
routes:
  - name: reports
    match: { path: "/api/reports/{id}", methods: [GET, HEAD] }
    <<: [*api, *read]
  - name: write
    match: { path: "/api/reports/{id}", methods: [PUT] }
    <<: *api
    mode: enforce
    scopes: [write:report]
"""


def test_x_blocks_anchors_and_merge_keys_make_a_shared_resource() -> None:
    reports, write = parse_config(SHARED).routes
    assert {rule.resource for rule in (reports, write)} == {"https://api.example.com"}
    assert (reports.scopes.scopes, reports.mode) == (("read:report",), "audit")
    assert (write.scopes.scopes, write.mode) == (("write:report",), "enforce")
    assert (reports.line, write.line) == (9, 12), "a route's line is where it starts, not where its anchor is"


def test_a_problem_in_a_shared_block_is_reported_where_it_is_written() -> None:
    text = SHARED.replace("  resource: https://api.example.com", "  resource: not a uri")
    assert problems_of(text) == [
        "c.yaml:2: routes[0].resource: expected an absolute URI without fragment (RFC 8707 resource indicator);"
        " got 'not a uri'",
        "c.yaml:2: routes[1].resource: expected an absolute URI without fragment (RFC 8707 resource indicator);"
        " got 'not a uri'",
    ]


def test_a_misspelt_key_in_a_shared_block_gets_its_line_and_a_suggestion() -> None:
    text = SHARED.replace("  scopes: [read:report]", "  scope: [read:report]")
    assert problems_of(text) == [
        "c.yaml:5: routes[0].scope: unknown key (did you mean 'scopes'?); expected one of name, match, public,"
        " resource, organization, scopes, claims, mode, forward_unverified_token, upstream_host, strip_prefix,"
        " token_from, forward_claims, forward_payload, issuers"
    ]


def test_an_alias_of_a_whole_route_part() -> None:
    text = (
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://tenant.logto.app/oidc }\nroutes:\n"
        "  - name: a\n"
        "    match: &m { path: /a, methods: [GET, HEAD] }\n"
        "    resource: &api https://api.example.com\n"
        "  - name: b\n"
        "    match: *m\n"
        "    resource: *api\n"
        "    scopes: [s]\n"
    )
    a, b = parse_config(text).routes
    assert (a.template.source, b.template.source, b.resource) == ("/a", "/a", "https://api.example.com")


MERGES = [
    pytest.param("<<: {mode: audit}\nmode: enforce", "enforce", id="own-key-wins"),
    pytest.param("<<: [{mode: audit}, {mode: enforce}]", "audit", id="first-merged-wins"),
    pytest.param("<<: [{<<: {mode: audit}}, {mode: enforce}]", "audit", id="nested-merge-before-next-source"),
    pytest.param("<<: [{scopes: [s]}, {mode: audit}]", "audit", id="keys-from-each"),
]


@pytest.mark.parametrize(("merge", "mode"), MERGES)
def test_merge_keys_follow_the_yaml_merge_rules(merge: str, mode: str) -> None:
    body = "".join(f"    {line}\n" for line in merge.splitlines())
    text = (
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://tenant.logto.app/oidc }\nroutes:\n"
        f"  - name: a\n    match: {{ path: /a }}\n    resource: https://a.example.com\n{body}"
    )
    (rule,) = parse_config(text).routes
    assert rule.mode == mode


def test_a_merge_key_needs_a_mapping() -> None:
    text = (
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://tenant.logto.app/oidc }\nroutes:\n"
        "  - name: a\n    match: { path: /a }\n    resource: https://a.example.com\n    <<: 5\n"
    )
    assert problems_of(text) == [
        "c.yaml:7: routes[0]: a merge key `<<` takes a mapping (e.g. an alias *defaults) or a list of them; got an"
        " integer 5"
    ]


def test_a_merge_cycle_ends() -> None:
    """An alias inside its own anchor is the node itself (PyYAML composes cycles): each mapping merges once."""
    text = (
        "x-a: &a\n  mode: audit\n  <<: *a\n"
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://tenant.logto.app/oidc }\nroutes:\n"
        "  - name: a\n    match: { path: /a }\n    resource: https://a.example.com\n    <<: *a\n"
    )
    (rule,) = parse_config(text).routes
    assert rule.mode == "audit"
    cyclic = "routes: &r\n  - name: a\n    match: { path: /a }\n    <<: {<<: *r}\n"
    assert problems_of(cyclic) == [
        "c.yaml:1: missing required key 'auth'",
        "c.yaml:1: missing required key 'upstream'",
        "c.yaml:2: routes[0]: a protected route needs `resource` (API resource), `organization`, or both; set"
        " `public: true` for a route that needs no token",
    ]


def test_a_key_given_twice_is_still_an_error_beside_merges() -> None:
    text = (
        "upstream: http://127.0.0.1:3000\nauth: { issuer: https://tenant.logto.app/oidc }\nroutes:\n"
        "  - name: a\n    match: { path: /a }\n    <<: {resource: https://b.example.com}\n"
        "    resource: https://a.example.com\n    resource: https://c.example.com\n"
    )
    assert problems_of(text) == ["c.yaml:8: routes[0].resource: duplicate key (first given on line 7)"]


def test_x_keys_are_free_only_at_the_top_level() -> None:
    text = (
        "x-anything: [1, {a: !!int nope}]\nupstream: http://127.0.0.1:3000\n"
        "auth: { issuer: https://tenant.logto.app/oidc, x-note: hi }\nroutes:\n"
        "  - { name: a, match: { path: /a }, resource: https://a.example.com }\n"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("c.yaml:3: auth.x-note: unknown key; expected one of issuer,")


# --- values files -------------------------------------------------------------------------------------------------

VALUES = """\
app:
  image: { repository: registry.example.com/reports-api, tag: "1.4.2" }
  port: 3000
config:
  auth:
    issuer: https://tenant.logto.app/oidc
    jwks_uri: ""
    algorithms: []
  routes:
    - name: reports-read
      match: { path: "/api/reports/{report_id}", methods: [GET, HEAD] }
      resource: &api https://api.example.com
      scopes: [read:report]
    - name: org-projects
      match: { path: "/api/orgs/{org_id}/projects/**" }
      <<: &org
        resource: *api
        organization: { from: path, name: org_id }
      scopes: { any: [read:project, admin:project] }
"""


def test_a_values_file_that_renders_fine_passes(tmp_path: Path) -> None:
    values = tmp_path / "my-values.yaml"
    values.write_text(VALUES)
    done = check("--values", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == (
        f"{values}: OK: config: 2 routes (2 protected, 0 public); issuer https://tenant.logto.app/oidc;"
        " upstream set by the chart\n"
    )


VALUES_PROBLEMS = [
    pytest.param(
        "      scopes: [read:report]\n", "      scope: [read:report]\n",
        ["13: config.routes[0].scope: unknown key (did you mean 'scopes'?)"],
        id="typo-in-a-route",
    ),
    pytest.param(
        "name: org_id }", "name: org }",
        ["18: config.routes[1].organization.name: the path template has no parameter {org} (it has: org_id)"],
        id="organization-parameter",
    ),
    pytest.param(
        "config:\n", "config:\n  listen: 0.0.0.0:8080\n  upstream: http://127.0.0.1:1\n",
        ["5: config.listen: the chart sets listen itself (from scopegate.port); remove it from `config`",
         "6: config.upstream: the chart sets upstream itself (from app.port (gateway mode: gateway.upstream))"],
        id="keys-the-chart-sets",
    ),
    pytest.param(
        "config:\n", "config:\n  x-api: &a {resource: https://api.example.com}\n",
        ["5: config.x-api: the chart's values.schema.json refuses keys it does not know at `config`"],
        id="x-block-under-config",
    ),
    pytest.param(
        "app:\n", "x-api: 1\napp:\n",
        ["1: x-api: the chart's values.schema.json refuses keys it does not know at the top level"],
        id="x-block-at-the-top",
    ),
    pytest.param(
        "    issuer: https://tenant.logto.app/oidc\n", "    issuer: \"\"\n",
        ["6: config.auth.issuer: must not be empty"],
        id="empty-issuer",
    ),
    pytest.param(
        "app:\n", "mode: gateway\napp:\n",
        ["1: mode: gateway mode needs gateway.upstream"],
        id="gateway-without-upstream",
    ),
    pytest.param(
        "app:\n", "mode: proxy\napp:\n",
        ["1: mode: expected one of sidecar, gateway, decision, library; got 'proxy'"],
        id="unknown-chart-mode",
    ),
    pytest.param(
        "app:\n", "existingConfigMap: { name: rules }\napp:\n",
        ["1: existingConfigMap.name: the chart mounts this ConfigMap's file and renders nothing from `config:`"],
        id="existing-configmap",
    ),
    pytest.param(
        "  routes:\n", "  routes: []\n  unused:\n",
        ["9: config.routes: must list at least one route", "10: config.unused: unknown key"],
        id="no-routes",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "expected"), VALUES_PROBLEMS)
def test_values_problems_carry_the_values_files_lines(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    values = tmp_path / "my-values.yaml"
    assert old in VALUES
    values.write_text(VALUES.replace(old, new, 1))
    done = check("--values", str(values))
    assert done.returncode == 2, done.stdout
    lines = done.stdout.splitlines()
    assert len(lines) == len(expected), lines
    for line, text in zip(lines, expected, strict=True):
        assert line.startswith(f"{values}:{text}"), line
    assert done.stderr == f"{values}: {len(expected)} problem(s)\n"


def test_values_warnings_and_lint_use_the_values_files_lines(tmp_path: Path) -> None:
    values = tmp_path / "my-values.yaml"
    text = VALUES.replace(
        "    issuer: https://tenant.logto.app/oidc\n",
        "    issuer: https://tenant.logto.app/oidc\n    issuers: [{issuer: https://b.example.com/oidc}]\n",
    ).replace("methods: [GET, HEAD]", "methods: [GET]")
    values.write_text(text)
    done = check("--values", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    ok, *warnings = done.stdout.splitlines()
    assert ok.startswith(f"{values}: OK: config: 2 routes")
    assert ok.endswith("; 2 warning(s)")
    assert warnings == [
        f"{values}:6: warning: config.auth.issuer: ignored: with auth.issuers set, the chart writes only issuers and"
        " token_cache_entries",
        f"{values}:11: warning: config.routes[0]: route 'reports-read' allows GET but not HEAD, and no route takes"
        " `HEAD /api/reports/x` (404); add HEAD [get-without-head]",
    ]
    assert check("--values", str(values), "--strict").returncode == 2


def test_a_key_before_a_merge_that_helm_overrides_is_warned_about() -> None:
    checked = parse_values(HELM_MERGES, Path("v.yaml"))
    assert checked.config is not None
    assert [rule.mode.value for rule in checked.config.routes] == ["audit", "audit", "enforce", "audit"]
    assert checked.warnings == [
        (18, "v.yaml:18: warning: config.routes[3].mode: Helm takes this key's value from the `<<` on line 19 after"
             " it (YAML's merge rules, and scopegate reading a config file, keep the one given here); put `<<:` first")
    ]  # fmt: skip


def test_decision_mode_has_no_upstream() -> None:
    checked = parse_values("mode: decision\n" + VALUES, Path("v.yaml"))
    assert checked.problems == []
    assert checked.config is not None
    assert checked.config.upstream is None
    assert checked.config.decision_listen is not None


# --- against the real chart ---------------------------------------------------------------------------------------

# Where Helm's YAML reader and YAML's merge rules agree (a list of merged mappings: the first wins) and where they do
# not (a key given before a `<<` that merges it too: Helm takes the merged one).
HELM_MERGES = """\
app:
  image: { repository: registry.example.com/reports-api, tag: "1.4.2" }
config:
  auth: { issuer: https://tenant.logto.app/oidc }
  routes:
    - name: first-of-a-list
      match: { path: /a, methods: [POST] }
      <<: [{mode: audit, scopes: [s]}, {mode: enforce, resource: https://a.example.com}]
    - name: nested
      match: { path: /b, methods: [POST] }
      <<: [{<<: {mode: audit}, scopes: [s]}, {mode: enforce, resource: https://a.example.com}]
    - name: own-key-after
      match: { path: /c, methods: [POST] }
      <<: {mode: audit, resource: https://a.example.com, scopes: [s]}
      mode: enforce
    - name: own-key-before
      match: { path: /d, methods: [POST] }
      mode: enforce
      <<: {mode: audit, resource: https://a.example.com, scopes: [s]}
"""

CHART_VALUES = {
    "readme": VALUES,
    "decision": "mode: decision\nconfig:\n" + VALUES.split("config:\n", 1)[1],
    "several-issuers": VALUES.replace(
        "    issuer: https://tenant.logto.app/oidc\n",
        "    issuers: [{issuer: https://a.example.com/oidc, leeway_seconds: 5}, {issuer: https://b.example.com}]\n"
        "    token_cache_entries: 0\n",
    ),
    "options": VALUES.replace(
        "config:\n",
        "config:\n  log_level: debug\n  upstream_host: upstream\n  limits: {}\n"
        "  token_from: [header, {cookie: session}]\n  forward_claims: {email: X-Auth-Email}\n",
    ).replace("    algorithms: []\n", "    algorithms: [ES384]\n    leeway_seconds: 10\n"),
    "merges": HELM_MERGES,
}


@pytest.fixture(scope="module")
def helm() -> Path:
    done = subprocess.run([ROOT / "scripts" / "deploy-tools"], capture_output=True, text=True, timeout=3000)
    if done.returncode == 75:  # scripts/deploy-tools: no package registry reachable
        pytest.skip(f"helm could not be installed:\n{done.stderr[-2000:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    return TOOLS / "bin" / "helm"


def rendered_config(helm: Path, values: Path) -> str:
    done = subprocess.run(
        [helm, "template", "sg", CHART, "-f", values, "--show-only", "templates/configmap.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(values.parent), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config: Any = yaml.safe_load(done.stdout)["data"]["config.yaml"]
    return str(config)


def comparable(config: Config) -> tuple[object, ...]:
    routes = tuple(dataclasses.replace(rule, line=0) for rule in config.routes)
    return (routes, config.auth, config.mode, config.log_level, config.limits, config.upstream is None)


@pytest.mark.parametrize("name", sorted(CHART_VALUES))
def test_check_values_reads_the_config_the_chart_renders(helm: Path, tmp_path: Path, name: str) -> None:
    """Anchors, merge keys, empty and null values, several issuers: what `check --values` reads is what the chart
    writes into the ConfigMap, route for route."""
    values = tmp_path / "values.yaml"
    values.write_text(CHART_VALUES[name])
    checked = parse_values(CHART_VALUES[name], values)
    assert checked.problems == [], checked.problems
    assert checked.config is not None
    assert comparable(parse_config(rendered_config(helm, values))) == comparable(checked.config)


def test_a_route_the_proxy_would_refuse_renders_fine_and_fails_check_values(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(VALUES.replace("name: org_id }", "name: org }"))
    with pytest.raises(ConfigError):  # the pods would crash-loop on this ConfigMap
        parse_config(rendered_config(helm, values))
    done = check("--values", str(values))
    assert done.returncode == 2
    assert done.stdout.startswith(f"{values}:18: config.routes[1].organization.name: the path template has no")


@pytest.mark.parametrize("name", ["gateway-values.yaml", "sidecar-values.yaml", "native-sidecar-values.yaml"])
def test_the_charts_own_examples_pass(name: str) -> None:
    done = check("--values", str(CHART / "ci" / name))
    assert done.returncode == 0, done.stdout + done.stderr
