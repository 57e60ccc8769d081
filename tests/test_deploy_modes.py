"""The deployment shapes beside the chart's own sidecar and gateway: decision mode, scopegate inside someone else's
chart (library mode), the kustomize component, and the app container's securityContext in sidecar mode.

Each is rendered with the real tools (the `tools` fixture of test_deploy.py: Helm, kubectl kustomize,
kubernetes-validate, checkov) and held to the promises test_deploy.py checks for the other shapes: valid Kubernetes
1.30 objects under `kubernetes-validate --strict`, `helm lint --strict`, checkov, traffic only through scopegate's
ports, scopegate's container hardened with probes on its admin port, and a config file `scopegate check` accepts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import test_deploy
from test_deploy import (
    CHART,
    CHECKOV_SKIPS,
    CONFIG_PATH,
    CRD_KINDS,
    KUBE_VERSION,
    ROOT,
    Rendered,
    Tools,
    checkov,
    documents,
    failures,
    helm_template,
    port_of,
    scopegate_check,
)

# test_deploy.py's session fixture (scripts/deploy-tools once, then Helm, kubectl, kubernetes-validate and checkov on
# PATH), bound here so that pytest finds it for this module's tests too.
tools = test_deploy.tools

FIXTURES = ROOT / "tests" / "charts"
DECISION_VALUES = FIXTURES / "decision-values.yaml"
SOMEAPP = FIXTURES / "someapp"
COMPONENT_OVERLAY = ROOT / "deploy" / "overlays" / "sidecar-component"
SIDECAR_VALUES = CHART / "ci" / "sidecar-values.yaml"
HARDENED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{shlex.join(map(str, done.args))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    )
    return done.stdout


def validate_strict(tools: Tools, text: str) -> None:
    """kubernetes-validate --strict: every object passes, and only the Prometheus Operator kinds go unchecked."""
    done = tools.run("kubernetes-validate", "--strict", "-k", KUBE_VERSION, "-", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    kinds = [doc["kind"] for doc in documents(text)]
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    assert len(passed) == len([kind for kind in kinds if kind not in CRD_KINDS]), done.stdout
    assert len([line for line in lines if line.startswith("WARN")]) == len([k for k in kinds if k in CRD_KINDS])


def config_passes_check(text: str, tmp_path: Path) -> dict[str, Any]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    done = scopegate_check(config_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": OK: " in done.stdout
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def ports_by_name(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def opened_ports(policy: dict[str, Any]) -> set[int | str]:
    return {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}


def assert_scopegate_container(container: dict[str, Any], *, serving: str, admin: str) -> None:
    """Hardened, probed on its admin port, its config mounted as a directory, whoever rendered it."""
    assert container["args"][:3] == ["run", "--config", CONFIG_PATH]
    assert set(ports_by_name(container)) == {serving, admin}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": admin}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": admin}
    assert container["securityContext"].items() >= HARDENED.items()
    assert container["securityContext"]["runAsUser"] >= 10000
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/scopegate"]
    assert mount == {"name": "scopegate-config", "mountPath": "/etc/scopegate", "readOnly": True}


# --- decision mode ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def decision(tools: Tools) -> str:
    return ok(helm_template(tools, "-f", str(DECISION_VALUES)))


def test_decision_mode_lints_strict(tools: Tools) -> None:
    out = tools.ok("helm", "lint", "--strict", CHART, "-f", DECISION_VALUES)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_decision_mode_runs_scopegate_alone_on_its_decision_port(decision: str) -> None:
    rendered = Rendered(documents(decision))
    assert {doc["kind"] for doc in rendered.docs} == {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
        "HorizontalPodAutoscaler", "ServiceMonitor",
    }  # fmt: skip
    assert [c["name"] for c in rendered.containers()] == ["scopegate"]
    scopegate = rendered.scopegate
    assert_scopegate_container(scopegate, serving="decision", admin="admin")
    assert ports_by_name(scopegate) == {"decision": 8181, "admin": 9090}
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/component"] == "decision"

    service = rendered.one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("decision", 80, "decision"),
        ("admin", 9090, "admin"),
    }
    policy = rendered.one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules == {
        8181: [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        9090: None,
    }
    deployment = rendered.one("Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert rendered.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert rendered.one("ServiceMonitor")["spec"]["endpoints"][0]["port"] == "admin"


def test_decision_mode_config_serves_decisions_only(decision: str, tmp_path: Path) -> None:
    rendered = Rendered(documents(decision))
    text = rendered.config_text()
    assert text is not None
    config = config_passes_check(text, tmp_path)
    assert "upstream" not in config, "no upstream: the proxy port is not served"
    assert "listen" not in config, "scopegate warns about a listen it ignores"
    ports = ports_by_name(rendered.scopegate)
    assert port_of(config["decision_listen"]) == ports["decision"]
    assert port_of(config["admin_listen"]) == ports["admin"]
    assert config["decision_path_prefix"] == "/authz"
    sleep = int(rendered.scopegate["lifecycle"]["preStop"]["exec"]["command"][1])
    assert rendered.pod["terminationGracePeriodSeconds"] > sleep + config["shutdown_grace_seconds"]


def test_decision_mode_kubernetes_validate_strict(tools: Tools, decision: str) -> None:
    validate_strict(tools, decision)


def test_decision_mode_notes_ask_as_an_ingress_does(tools: Tools, decision: str, tmp_path: Path) -> None:
    """The notes name the Service's in-cluster URL for each ingress, and their tokenless request gets the 401."""
    notes = ok(
        tools.run(
            "helm", "install", "sg", CHART, "--namespace", "reports", "--dry-run=client", "-f", DECISION_VALUES
        )
    ).split("\nNOTES:\n", 1)[1]  # fmt: skip
    url = "http://sg-scopegate.reports.svc.cluster.local:80/"
    assert f'nginx.ingress.kubernetes.io/auth-url: "{url}"' in notes
    assert f'address: "{url}"' in notes
    assert 'path_prefix: "/authz"' in notes
    assert 'nginx.ingress.kubernetes.io/auth-method: "GET"' in notes
    lines = notes.splitlines()
    curl = shlex.split(lines[lines.index("     # without a token: expect 401 with a WWW-Authenticate challenge") + 1])
    headers = dict(curl[i + 1].split(": ", 1) for i, arg in enumerate(curl) if arg == "-H")
    assert headers.keys() == {"X-Original-Method", "X-Original-URI"}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(Rendered(documents(decision)).config_text() or "")
    explained = subprocess.run(
        [
            sys.executable, "-m", "scopegate", "explain", "--config", str(config_file),
            headers["X-Original-Method"], headers["X-Original-URI"],
        ],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=60,
    )  # fmt: skip
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "-> 401" in explained.stdout
    assert "missing_token" in explained.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--set", "ingress.enabled=true", "--set", "ingress.hosts[0].host=api.example.com"],
            "ingress.enabled does not apply to decision mode",
            id="ingress",
        ),
        pytest.param(["--set", "scopegate.decisionPort=9090"], "decisionPort and scopegate.adminPort must", id="clash"),
        pytest.param(["--set", "nativeSidecar=true"], "nativeSidecar applies to sidecar mode only", id="native"),
        pytest.param(["--set", "scopegate.decisionPort=authz"], "/scopegate/decisionPort", id="port-type"),
        pytest.param(["--set", "config.decision_path_prefix=/authz/"], "/config/decision_path_prefix", id="prefix"),
    ],
)
def test_decision_mode_refuses(tools: Tools, args: list[str], message: str) -> None:
    done = helm_template(tools, "-f", str(DECISION_VALUES), *args)
    assert done.returncode != 0
    assert message in done.stderr


# --- library mode: scopegate's container in someone else's chart --------------------------------------------------


@pytest.fixture(scope="session")
def someapp(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/charts/someapp with its file:// dependency built, in a copy of the tree (no build output in the repo)."""
    tree = tmp_path_factory.mktemp("someapp-tree")
    shutil.copytree(CHART, tree / "helm" / "scopegate")
    chart = tree / "tests" / "charts" / "someapp"
    shutil.copytree(SOMEAPP, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    out = tools.ok("helm", "dependency", "build", chart)
    assert "Saving 1 charts" in out
    return chart


def render_someapp(tools: Tools, chart: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return tools.run("helm", "template", "web", chart, "--namespace", "shop", "--kube-version", KUBE_VERSION, *args)


@pytest.fixture(scope="session")
def someapp_rendered(tools: Tools, someapp: Path) -> str:
    return ok(render_someapp(tools, someapp))


def test_someapp_lints_strict(tools: Tools, someapp: Path) -> None:
    out = tools.ok("helm", "lint", "--strict", someapp)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_someapp_keeps_its_deployment_and_gains_scopegate(someapp_rendered: str) -> None:
    rendered = Rendered(documents(someapp_rendered))
    assert sorted(doc["kind"] for doc in rendered.docs) == ["ConfigMap", "Deployment", "NetworkPolicy", "Service"], (
        "library mode renders nothing of scopegate's own: no second Deployment, Service or ServiceAccount"
    )
    deployment = rendered.one("Deployment")
    own_labels = {"app.kubernetes.io/name": "someapp", "app.kubernetes.io/instance": "web"}
    assert deployment["metadata"]["name"] == "web-someapp"
    assert deployment["metadata"]["labels"] == {
        **own_labels, "helm.sh/chart": "someapp-1.2.3", "app.kubernetes.io/managed-by": "Helm",
    }  # fmt: skip
    assert deployment["spec"]["selector"]["matchLabels"] == own_labels
    assert deployment["spec"]["template"]["metadata"]["labels"] == own_labels
    assert [c["name"] for c in rendered.containers()] == ["someapp", "scopegate"]
    assert_scopegate_container(rendered.scopegate, serving="scopegate-http", admin="scopegate-admin")

    config_map = rendered.one("ConfigMap")
    volumes = {volume["name"]: volume for volume in rendered.pod["volumes"]}
    assert volumes["scopegate-config"]["configMap"] == {"name": config_map["metadata"]["name"]}
    assert volumes["scopegate-tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config-restart"]) == 64

    # The app calls its own port "http" too: the Service's named target must still be scopegate's port.
    service = rendered.one("Service")
    app_ports = ports_by_name(rendered.pod["containers"][0])
    assert "http" in app_ports
    targets = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert targets == {"http": "scopegate-http", "metrics": "scopegate-admin"}
    assert set(targets.values()) <= ports_by_name(rendered.scopegate).keys()
    assert not set(targets.values()) & app_ports.keys()
    assert opened_ports(rendered.one("NetworkPolicy")) == set(targets.values())


def test_someapp_config_forwards_to_the_app_over_loopback(someapp_rendered: str, tmp_path: Path) -> None:
    rendered = Rendered(documents(someapp_rendered))
    text = rendered.config_text()
    assert text is not None
    config = config_passes_check(text, tmp_path)
    (listen_addr,) = [env["value"] for env in rendered.pod["containers"][0]["env"] if env["name"] == "LISTEN_ADDR"]
    assert config["upstream"] == f"http://{listen_addr}"
    ports = ports_by_name(rendered.scopegate)
    assert port_of(config["listen"]) == ports["scopegate-http"]
    assert port_of(config["admin_listen"]) == ports["scopegate-admin"]
    sleep = int(rendered.scopegate["lifecycle"]["preStop"]["exec"]["command"][1])
    assert rendered.pod["terminationGracePeriodSeconds"] > sleep + config["shutdown_grace_seconds"]


def test_someapp_kubernetes_validate_strict(tools: Tools, someapp_rendered: str) -> None:
    validate_strict(tools, someapp_rendered)


def test_someapp_auth_change_rolls_and_rules_change_reloads(tools: Tools, someapp: Path) -> None:
    def restart_checksum(*args: str) -> str:
        deployment = Rendered(documents(ok(render_someapp(tools, someapp, *args)))).one("Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config-restart"])

    routes = yaml.safe_load((SOMEAPP / "values.yaml").read_text())["scopegate"]["config"]["routes"]
    routes[0]["scopes"] = ["write:item"]
    before = restart_checksum()
    assert restart_checksum("--set-json", f"scopegate.config.routes={json.dumps(routes)}") == before
    assert restart_checksum("--set", "scopegate.config.auth.issuer=https://other.logto.app/oidc") != before


@pytest.mark.parametrize(
    ("template", "args", "message"),
    [
        pytest.param(
            '{{ include "scopegate.container" $ }}',
            [],
            'scopegate.container takes scopegate\'s own context: include "scopegate.container" .Subcharts.scopegate',
            id="own-context",
        ),
        pytest.param(None, ["--set", "scopegate.mode=sidecar"], "set scopegate.mode: library", id="mode-not-library"),
        pytest.param(None, ["--set", "scopegate.app.port=9090"], "app.port and scopegate.adminPort must", id="clash"),
        pytest.param(None, ["--set", "scopegate.config.logLevel=info"], "logLevel", id="schema"),
    ],
)
def test_someapp_refuses(tools: Tools, someapp: Path, template: str | None, args: list[str], message: str) -> None:
    wrong = someapp / "templates" / "wrong.yaml"
    if template is not None:
        wrong.write_text(template + "\n")
    try:
        done = render_someapp(tools, someapp, *args)
    finally:
        wrong.unlink(missing_ok=True)
    assert done.returncode != 0
    assert message in done.stderr


def test_library_mode_alone_renders_nothing(tools: Tools) -> None:
    done = helm_template(tools, "-f", str(SIDECAR_VALUES), "--set", "mode=library")
    assert documents(ok(done)) == []


# --- the kustomize component --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def component_overlay(tools: Tools) -> str:
    return tools.ok("kubectl", "kustomize", COMPONENT_OVERLAY)


def source_documents() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in documents((COMPONENT_OVERLAY / "app.yaml").read_text())
    }


def test_component_adds_scopegate_to_the_annotated_deployment_only(component_overlay: str) -> None:
    built = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents(component_overlay)}
    assert set(built) == {
        ("Deployment", "someapp"), ("Deployment", "someapp-worker"), ("Service", "someapp"),
        ("ConfigMap", "scopegate-config"), ("NetworkPolicy", "someapp"), ("NetworkPolicy", "someapp-worker"),
    }  # fmt: skip
    source = source_documents()
    app = Rendered([built[("Deployment", "someapp")]])
    before = source[("Deployment", "someapp")]
    assert app.docs[0]["metadata"]["labels"] == before["metadata"]["labels"]
    assert app.docs[0]["spec"]["selector"] == before["spec"]["selector"]
    assert app.docs[0]["spec"]["template"]["metadata"] == before["spec"]["template"]["metadata"]
    # Appended after the app's container, which stays exactly as it was.
    assert [c["name"] for c in app.containers()] == ["someapp", "scopegate"]
    assert app.pod["containers"][0] == before["spec"]["template"]["spec"]["containers"][0]
    assert_scopegate_container(app.scopegate, serving="scopegate-http", admin="scopegate-admin")
    assert app.scopegate["image"] == "registry.example.com/scopegate:0.1.0"
    volumes = {volume["name"]: volume for volume in app.pod["volumes"]}
    assert volumes["scopegate-config"]["configMap"] == {"name": "scopegate-config"}
    assert "emptyDir" in volumes["scopegate-tmp"]

    worker = dict(built[("Deployment", "someapp-worker")])
    assert worker == {**source[("Deployment", "someapp-worker")], "metadata": worker["metadata"]}
    assert worker["metadata"]["namespace"] == "shop"

    assert opened_ports(built[("NetworkPolicy", "someapp")]) == {"scopegate-http", "scopegate-admin"}
    assert "ingress" not in built[("NetworkPolicy", "someapp-worker")]["spec"]

    service = built[("Service", "someapp")]
    (port,) = service["spec"]["ports"]
    assert port == {"name": "http", "port": 80, "targetPort": "scopegate-http", "protocol": "TCP"}
    assert service["spec"]["selector"] == source[("Service", "someapp")]["spec"]["selector"]


def test_component_config_matches_the_ports_and_passes_check(component_overlay: str, tmp_path: Path) -> None:
    rendered = Rendered(documents(component_overlay))
    text = rendered.config_text()
    assert text is not None
    config = config_passes_check(text, tmp_path)
    app = Rendered([doc for doc in rendered.docs if doc["metadata"]["name"] == "someapp"])
    ports = ports_by_name(app.scopegate)
    assert port_of(config["listen"]) == ports["scopegate-http"]
    assert port_of(config["admin_listen"]) == ports["scopegate-admin"]
    (listen_addr,) = [env["value"] for env in app.pod["containers"][0]["env"] if env["name"] == "LISTEN_ADDR"]
    assert config["upstream"] == f"http://{listen_addr}"


def test_component_kubernetes_validate_strict(tools: Tools, component_overlay: str) -> None:
    validate_strict(tools, component_overlay)


# --- checkov, over every shape above ------------------------------------------------------------------------------


def test_checkov_passes_every_new_shape(
    tools: Tools, decision: str, someapp_rendered: str, component_overlay: str, tmp_path: Path
) -> None:
    shapes = {"decision": decision, "someapp": someapp_rendered, "sidecar-component": component_overlay}
    for name, text in shapes.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    reports = checkov(tools, "--directory", tmp_path, "--framework", "kubernetes", skips=CHECKOV_SKIPS)
    assert failures(reports) == []
    summary = reports[0]["summary"]
    assert summary["resource_count"] >= 3 * len(shapes)
    assert summary["passed"] > 100


# --- sidecar mode: the app container's securityContext ------------------------------------------------------------

ROUTE = {"name": "r", "match": {"path": "/r"}, "resource": "https://api.example.com", "scopes": ["read:r"]}
MINIMAL_SIDECAR = [
    "--set", "app.image.repository=registry.example.com/reports-api", "--set", "app.image.tag=1.4.2",
    "--set", "config.auth.issuer=https://tenant.logto.app/oidc", "--set-json", f"config.routes={json.dumps([ROUTE])}",
]  # fmt: skip


def sidecar_pod(tools: Tools, *args: str) -> Rendered:
    return Rendered(documents(ok(helm_template(tools, *MINIMAL_SIDECAR, *args))))


def test_sidecar_sets_no_security_context_on_the_app_by_default(tools: Tools) -> None:
    rendered = sidecar_pod(tools)
    app, scopegate = rendered.pod["containers"]
    assert app["name"] == "app"
    assert "securityContext" not in app
    assert scopegate["securityContext"].items() >= HARDENED.items(), "scopegate's own container stays hardened"


def test_sidecar_puts_the_app_security_context_it_is_given(tools: Tools) -> None:
    wanted = {"runAsUser": 1000, "readOnlyRootFilesystem": False, "capabilities": {"add": ["NET_BIND_SERVICE"]}}
    rendered = sidecar_pod(tools, "--set-json", f"app.securityContext={json.dumps(wanted)}")
    app, scopegate = rendered.pod["containers"]
    assert app["securityContext"] == wanted
    assert scopegate["securityContext"].items() >= HARDENED.items()


def test_optional_config_keys_reach_the_file_only_when_set(tools: Tools, tmp_path: Path) -> None:
    """The schema always accepted these two; they used to be dropped from the rendered file without a word."""
    default = Rendered(documents(ok(helm_template(tools, *MINIMAL_SIDECAR)))).config_text() or ""
    assert "trust_forwarded_headers" not in default
    assert "allow_path_parameters" not in default
    set_ = ["--set", "config.trust_forwarded_headers=false", "--set", "config.allow_path_parameters=true"]
    text = Rendered(documents(ok(helm_template(tools, *MINIMAL_SIDECAR, *set_)))).config_text()
    assert text is not None
    config = config_passes_check(text, tmp_path)
    assert config["trust_forwarded_headers"] is False
    assert config["allow_path_parameters"] is True


PEER_PARITY_VALUES = """
config:
  auth:
    issuers:
      - {issuer: https://tenant.logto.app/oidc}
      - {issuer: https://auth.example.com/oidc, leeway_seconds: 30}
  token_from: [header, {cookie: session}]
  forward_claims: {email: X-Auth-Email}
  cors: {allow_origins: [https://app.example.com], allow_credentials: true}
  upstream_host: upstream
  routes:
    - name: staff
      match: {path: "/api/v1/staff/**"}
      resource: https://api.example.com
      strip_prefix: /api
      issuers: [https://auth.example.com/oidc]
      claims: {roles: [admin, owner]}
      forward_payload: true
"""


def test_every_config_extension_renders_and_passes_check(tools: Tools, tmp_path: Path) -> None:
    """Several issuers, token sources, claim headers, CORS, gateway options and any-of claims through the chart."""
    values = tmp_path / "peer-parity-values.yaml"
    values.write_text(PEER_PARITY_VALUES, encoding="utf-8")
    image = ["--set", "app.image.repository=registry.example.com/reports-api", "--set", "app.image.tag=1.4.2"]
    text = Rendered(documents(ok(helm_template(tools, *image, "-f", str(values))))).config_text()
    assert text is not None
    config = config_passes_check(text, tmp_path)
    assert [issuer["issuer"] for issuer in config["auth"]["issuers"]][1] == "https://auth.example.com/oidc"
    assert config["cors"]["allow_credentials"] is True
    assert config["routes"][0]["strip_prefix"] == "/api"
