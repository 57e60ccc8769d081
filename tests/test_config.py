"""Config loading: golden broken configs with their exact error lines, the defaults, and each schema form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scopegate.config import ASYMMETRIC_ALGORITHMS, Config, HostPort, load_config, parse_config
from scopegate.errors import ConfigError
from scopegate.rules import Mode, OrganizationFrom, OrganizationSource, RouteRule, ScopeMode, ScopeRequirement

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
BROKEN = sorted(CONFIGS.glob("*.yaml"))

HEAD = """\
upstream: http://127.0.0.1:3000
auth:
  issuer: https://tenant.logto.app/oidc
"""
REPORTS = """\
routes:
  - name: reports
    match: { path: "/api/reports/{id}" }
    resource: https://api.example.com
"""


def route(body: str, *, head: str = HEAD) -> RouteRule:
    """The single route of a config made of `head` and one route item whose keys are `body`."""
    item = "\n".join("    " + line for line in body.strip().splitlines())
    config = parse_config(f"{head}routes:\n  - name: r\n{item}\n")
    (rule,) = config.routes
    return rule


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return list(caught.value.problems)


# --- golden broken configs ------------------------------------------------------------------------------------


def test_every_broken_config_has_its_expected_errors_and_nothing_else_is_there() -> None:
    names = {path.name for path in CONFIGS.iterdir()}
    stems = {Path(name).stem for name in names}
    assert names == {f"{stem}{suffix}" for stem in stems for suffix in (".yaml", ".errors")}
    assert len(BROKEN) >= 40


@pytest.mark.parametrize("config", BROKEN, ids=[path.stem for path in BROKEN])
def test_broken_config_reports_every_problem_with_its_line(config: Path) -> None:
    expected = config.with_suffix(".errors").read_text(encoding="utf-8").replace("{file}", str(config))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert list(caught.value.problems) == expected.splitlines()
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_problems_are_reported_in_file_order() -> None:
    config = CONFIGS / "several_problems.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    lines = [int(problem.removeprefix(f"{config}:").split(":")[0]) for problem in caught.value.problems]
    assert len(lines) >= 8
    assert lines == sorted(lines)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{missing}:1: cannot read the config file: ")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("upstream: http://caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(latin)
    assert caught.value.problems[0].startswith(f"{latin}:1: cannot read the config file: ")


def test_text_without_a_file_is_named_config() -> None:
    assert problems("listen: 8080\n" + HEAD + REPORTS) == [
        "<config>:1: listen: expected HOST:PORT as a string (e.g. 0.0.0.0:8080 or [::]:8080); got an integer 8080"
    ]


def test_deeply_nested_yaml_is_a_config_error() -> None:
    assert problems("a: " + "[" * 1000) == ["<config>:1: invalid YAML: lists or mappings nested too deeply"]


# --- the sample configs ---------------------------------------------------------------------------------------


def test_example_config_loads_with_one_route_per_scenario() -> None:
    config = load_config(ROOT / "config" / "example.yaml")
    assert config.source == ROOT / "config" / "example.yaml"
    assert [rule.name for rule in config.routes] == [
        "reports-read",
        "org-member-invite",
        "org-projects",
        "org-settings",
        "admin-only",
        "beta-search",
        "public",
    ]
    assert config.auth.algorithms == frozenset({"ES384", "RS256"})
    assert config.auth.jwks_uri is None
    by_name = {rule.name: rule for rule in config.routes}
    assert by_name["beta-search"].mode is Mode.AUDIT
    assert by_name["public"].public is True
    assert by_name["org-settings"].organization == OrganizationSource(
        source=OrganizationFrom.HEADER, name="X-Organization-Id"
    )


def test_demo_config_loads() -> None:
    config = load_config(ROOT / "src" / "scopegate" / "dev" / "demo.yaml")
    assert config.listen == HostPort(host="127.0.0.1", port=8080)
    assert config.auth.issuer == "http://127.0.0.1:8082/oidc"
    assert [rule.name for rule in config.routes] == [
        "reports-read",
        "org-member-invite",
        "org-projects",
        "admin-only",
        "public",
    ]


# --- defaults and forms ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config(HEAD + REPORTS)
    assert config.source is None
    assert str(config.listen) == "0.0.0.0:8080"
    assert str(config.admin_listen) == "0.0.0.0:9090"
    assert config.upstream_timeout_seconds == 30.0
    assert config.shutdown_grace_seconds == 20.0
    assert config.log_level == "info"
    assert config.mode is Mode.ENFORCE
    assert config.auth.leeway_seconds == 60.0
    assert config.auth.jwks_refresh_seconds == 300.0
    assert config.auth.jwks_refetch_cooldown_seconds == 5.0
    assert config.auth.algorithms == ASYMMETRIC_ALGORITHMS
    assert config.auth.jwks_uri is None
    assert config.auth.token_cache_entries == 4096
    (rule,) = config.routes
    assert rule.methods is None
    assert rule.public is False
    assert rule.organization is None
    assert rule.scopes == ScopeRequirement(mode=ScopeMode.ALL, scopes=())
    assert rule.claims == ()
    assert rule.mode is Mode.ENFORCE
    assert rule.line == 5
    assert rule.template.source == "/api/reports/{id}"


def test_algorithms_never_include_symmetric_or_none() -> None:
    assert not {"none", "HS256", "HS384", "HS512"} & ASYMMETRIC_ALGORITHMS
    assert "EdDSA" in ASYMMETRIC_ALGORITHMS


def test_explicit_values_are_kept() -> None:
    config = parse_config(
        "listen: 127.0.0.1:18080\nadmin_listen: 127.0.0.1:19090\nupstream_timeout_seconds: 2.5\n"
        "shutdown_grace_seconds: 0\nlog_level: debug\n"
        "upstream: http://127.0.0.1:3000\n"
        "auth:\n  issuer: https://tenant.logto.app/oidc\n  jwks_uri: https://keys.example.com/jwks\n"
        "  algorithms: [EdDSA]\n  leeway_seconds: 0\n  jwks_refresh_seconds: 1\n  jwks_refetch_cooldown_seconds: 0\n"
        "  token_cache_entries: 0\n" + REPORTS
    )
    assert config.listen == HostPort(host="127.0.0.1", port=18080)
    assert config.admin_listen == HostPort(host="127.0.0.1", port=19090)
    assert config.upstream_timeout_seconds == 2.5
    assert config.shutdown_grace_seconds == 0.0
    assert config.log_level == "debug"
    assert config.auth.jwks_uri == "https://keys.example.com/jwks"
    assert config.auth.algorithms == frozenset({"EdDSA"})
    assert (config.auth.leeway_seconds, config.auth.jwks_refresh_seconds) == (0.0, 1.0)
    assert config.auth.jwks_refetch_cooldown_seconds == 0.0
    assert config.auth.token_cache_entries == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1", 1, id="one"),
        pytest.param("100000", 100000, id="large"),
    ],
)
def test_token_cache_entries_is_a_whole_number(value: str, expected: int) -> None:
    config = parse_config(HEAD + f"  token_cache_entries: {value}\n" + REPORTS)
    assert config.auth.token_cache_entries == expected
    assert isinstance(config.auth.token_cache_entries, int)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("-1", "must be at least 0; got -1", id="negative"),
        pytest.param("2.5", "expected a whole number; got a number 2.5", id="fraction"),
        pytest.param("4096.0", "expected a whole number; got a number 4096.0", id="float"),
        pytest.param(".inf", "expected a whole number; got a number .inf", id="infinity"),
        pytest.param("true", "expected a whole number; got a boolean true", id="boolean"),
        pytest.param('"4096"', "expected a whole number; got a string '4096'", id="quoted"),
        pytest.param("null", "expected a whole number; got null", id="null"),
        pytest.param("[1]", "expected a whole number; got a list", id="list"),
    ],
)
def test_token_cache_entries_must_be_a_whole_number_of_at_least_zero(value: str, message: str) -> None:
    assert problems(HEAD + f"  token_cache_entries: {value}\n" + REPORTS) == [
        f"<config>:4: auth.token_cache_entries: {message}"
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("scopes: [a, b]", ScopeRequirement(mode=ScopeMode.ALL, scopes=("a", "b")), id="list-is-all"),
        pytest.param("scopes: {all: [a, b]}", ScopeRequirement(mode=ScopeMode.ALL, scopes=("a", "b")), id="all"),
        pytest.param("scopes: {any: [a, b]}", ScopeRequirement(mode=ScopeMode.ANY, scopes=("a", "b")), id="any"),
        pytest.param("scopes: []", ScopeRequirement(mode=ScopeMode.ALL, scopes=()), id="empty-list-needs-none"),
        pytest.param("scopes: {all: []}", ScopeRequirement(mode=ScopeMode.ALL, scopes=()), id="empty-all"),
        pytest.param("scopes: [b, a, b]", ScopeRequirement(mode=ScopeMode.ALL, scopes=("b", "a")), id="deduplicated"),
    ],
)
def test_scope_forms(body: str, expected: ScopeRequirement) -> None:
    rule = route(f'match: {{ path: "/x" }}\nresource: https://api.example.com\n{body}')
    assert rule.scopes == expected


@pytest.mark.parametrize(
    ("path", "organization", "expected"),
    [
        pytest.param("/orgs/{org_id}", "{ from: path, name: org_id }", (OrganizationFrom.PATH, "org_id"), id="path"),
        pytest.param("/x", "{ from: header, name: X-Org }", (OrganizationFrom.HEADER, "X-Org"), id="header"),
        pytest.param("/x", "{ from: query, name: org }", (OrganizationFrom.QUERY, "org"), id="query"),
    ],
)
def test_organization_sources(path: str, organization: str, expected: tuple[OrganizationFrom, str]) -> None:
    rule = route(f'match: {{ path: "{path}" }}\norganization: {organization}')
    assert rule.organization == OrganizationSource(source=expected[0], name=expected[1])
    assert rule.resource is None


def test_route_mode_inherits_the_global_mode_unless_it_sets_its_own() -> None:
    config = parse_config(
        "mode: audit\n" + HEAD + REPORTS + "  - name: strict\n    match: { path: /s }\n"
        "    resource: https://api.example.com\n    mode: enforce\n"
    )
    assert config.mode is Mode.AUDIT
    assert [(rule.name, rule.mode) for rule in config.routes] == [("reports", Mode.AUDIT), ("strict", Mode.ENFORCE)]


@pytest.mark.parametrize(
    ("listen", "expected", "shown"),
    [
        pytest.param('"[::]:8080"', HostPort(host="::", port=8080), "[::]:8080", id="ipv6-any"),
        pytest.param('"[::1]:1"', HostPort(host="::1", port=1), "[::1]:1", id="ipv6-loopback"),
        pytest.param("localhost:65535", HostPort(host="localhost", port=65535), "localhost:65535", id="name"),
        pytest.param("127.0.0.1:0", HostPort(host="127.0.0.1", port=0), "127.0.0.1:0", id="ephemeral"),
    ],
)
def test_listen_addresses(listen: str, expected: HostPort, shown: str) -> None:
    config = parse_config(f"listen: {listen}\n" + HEAD + REPORTS)
    assert config.listen == expected
    assert str(config.listen) == shown


@pytest.mark.parametrize(
    "listen",
    [
        pytest.param("0.0.0.0:65536", id="above-65535"),
        pytest.param("0.0.0.0:-1", id="negative"),
        pytest.param("0.0.0.0:http", id="service-name"),
        pytest.param("[::]", id="ipv6-without-port"),
        pytest.param("0.0.0.0:\u0668\u0660", id="non-ascii-digits"),
        pytest.param("0.0.0.0:" + "9" * 5000, id="thousands-of-digits"),
    ],
)
def test_listen_rejects_bad_ports(listen: str) -> None:
    (problem,) = problems(f'listen: "{listen}"\n' + HEAD + REPORTS)
    assert problem.startswith("<config>:1: listen: expected HOST:PORT")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("0", "must be greater than 0; got 0", id="zero"),
        pytest.param("-0.5", "must be greater than 0; got -0.5", id="negative"),
        pytest.param(".nan", "expected a finite number; got .nan", id="nan"),
        pytest.param("-.inf", "expected a finite number; got -.inf", id="minus-infinity"),
        pytest.param("1" + "0" * 400, "expected a finite number; got 10000000000000000000...", id="beyond-float"),
        pytest.param("true", "expected a number; got a boolean true", id="boolean"),
        pytest.param('"30"', "expected a number; got a string '30'", id="quoted"),
        pytest.param("!!int 3x", "expected a number; got an invalid int value '3x'", id="bad-tag"),
    ],
)
def test_timeout_must_be_a_positive_finite_number(value: str, message: str) -> None:
    assert problems(f"upstream_timeout_seconds: {value}\n" + HEAD + REPORTS) == [
        f"<config>:1: upstream_timeout_seconds: {message}"
    ]


def test_ephemeral_ports_may_be_shared_by_listen_and_admin_listen() -> None:
    config = parse_config("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + HEAD + REPORTS)
    assert config.listen == config.admin_listen == HostPort(host="127.0.0.1", port=0)


def test_same_port_on_different_specific_hosts_is_allowed() -> None:
    config = parse_config("listen: 127.0.0.1:8080\nadmin_listen: 10.0.0.1:8080\n" + HEAD + REPORTS)
    assert config.listen.port == config.admin_listen.port == 8080


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        pytest.param("http://127.0.0.1:3000/", "http://127.0.0.1:3000", id="root-slash"),
        pytest.param("https://app.internal/base//", "https://app.internal/base", id="base-path-slashes"),
        pytest.param("http://[::1]:3000", "http://[::1]:3000", id="ipv6-unchanged"),
    ],
)
def test_upstream_trailing_slash_is_stripped(upstream: str, expected: str) -> None:
    config = parse_config(HEAD.replace("http://127.0.0.1:3000", upstream) + REPORTS)
    assert config.upstream == expected


def test_methods_and_claims_keep_their_types() -> None:
    rule = route(
        'match: { path: "/x", methods: [GET, HEAD] }\nresource: https://api.example.com\n'
        'claims: { roles: admin, email_verified: true, level: 3, ratio: 0.5, code: "3" }'
    )
    assert rule.methods == frozenset({"GET", "HEAD"})
    assert [(claim.name, claim.value, type(claim.value)) for claim in rule.claims] == [
        ("roles", "admin", str),
        ("email_verified", True, bool),
        ("level", 3, int),
        ("ratio", 0.5, float),
        ("code", "3", str),
    ]


def test_public_route_needs_no_audience() -> None:
    rule = route('match: { path: "/public/**" }\npublic: true')
    assert rule.public is True
    assert rule.resource is None
    assert rule.organization is None


def test_template_is_compiled_at_load() -> None:
    rule = route('match: { path: "/orgs/{org_id}/**" }\norganization: { from: path, name: org_id }')
    assert rule.template.param_names == ("org_id",)
    assert rule.template.match("/orgs/acme/projects/1") == {"org_id": "acme"}


@pytest.mark.parametrize(
    ("obj", "attribute"),
    [
        pytest.param(parse_config(HEAD + REPORTS), "upstream", id="config"),
        pytest.param(parse_config(HEAD + REPORTS).auth, "token_cache_entries", id="auth"),
        pytest.param(parse_config(HEAD + REPORTS).auth.issuers[0], "issuer", id="issuer"),
        pytest.param(parse_config(HEAD + REPORTS).listen, "port", id="host-port"),
        pytest.param(parse_config(HEAD + REPORTS).routes[0], "resource", id="route"),
        pytest.param(parse_config(HEAD + REPORTS).routes[0].scopes, "scopes", id="scopes"),
    ],
)
def test_config_objects_are_frozen(obj: object, attribute: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, "changed")


def test_config_collections_are_immutable() -> None:
    config = parse_config(HEAD + REPORTS)
    assert isinstance(config.routes, tuple)
    assert isinstance(config.auth.algorithms, frozenset)
    assert isinstance(config, Config)


# --- hostile input --------------------------------------------------------------------------------------------

_EXAMPLE = (ROOT / "config" / "example.yaml").read_text(encoding="utf-8")
_YAML_BITS = st.sampled_from(
    [
        "\n", "  ", "- ", ": ", "{", "}", "[", "]", ",", "#", "'", '"', "&a ", "*a", "!!int ", "!!bool ", "!!float ",
        "!!str ", "!!binary ", "!!timestamp ", "!!set ", "? ", "---\n", "...\n", "|\n", ">\n", "<<: ", "~", "null",
        ".nan", ".inf", "-1", "0x1F", "1e999", "99999999999999999999", "yes", "true", "listen", "admin_listen",
        "upstream", "auth", "routes", "issuer", "algorithms", "name", "match", "path", "methods", "scopes", "any",
        "all", "claims", "organization", "from", "resource", "public", "mode", "/api/{id}", "/**", "GET", "RS256",
        "http://h:1", "[::]:80", "\t", "\x00", "\ufeff", "é",
    ]
)  # fmt: skip


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """The example config with a few lines deleted, duplicated or spliced with YAML fragments."""
    lines = _EXAMPLE.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "splice"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        else:
            at = draw(st.integers(0, len(lines[index])))
            lines[index] = lines[index][:at] + draw(_YAML_BITS) + lines[index][at:]
    return "\n".join(lines)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(_YAML_BITS, max_size=40).map("".join), mutated_example()))
@example("routes: [{name: a, match: {path: /a}, public: !!bool maybe}]")
@example("upstream_timeout_seconds: !!float zz")
@example("auth: {leeway_seconds: !!int 0x}")
@example("a: &a [*a]")
@example("? [a]\n: 1")
@example("routes: !!set {a}")
@example("!!int")
@example("a: " + "[" * 1000)
@example("listen: !!binary aGk=")
@example("upstream_timeout_seconds: " + "9" * 5000)
def test_any_text_loads_or_raises_config_error_only(text: str) -> None:
    try:
        config: Config | None = parse_config(text)
        reported: tuple[str, ...] = ()
    except ConfigError as exc:
        config, reported = None, exc.problems
    if config is not None:
        assert config.routes
        return
    assert reported
    assert all(problem.startswith("<config>:") for problem in reported)
    lines = [int(problem.split(":")[1]) for problem in reported]
    assert lines == sorted(lines)
