"""`scopegate check --values`: the `config:` block of a Helm values file, checked as the chart would render it.

The chart (helm/scopegate, `scopegate.configFile` in templates/_helpers.tpl) turns `config:` into scopegate's config
file: it adds `listen`, `admin_listen` and `upstream` itself (in decision mode `admin_listen` and `decision_listen`,
and no upstream), writes the single-issuer `auth` keys only when they are set (an empty `jwks_uri` or `algorithms`
is left out, so scopegate's defaults apply) and, when `auth.issuers` is set, nothing of `auth` but `issuers` and
`token_cache_entries`. This module does the same to the values file's nodes, with placeholders where the chart fills
in, so every problem is reported with the values file's own line and a `config.` breadcrumb before `helm install`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scopegate.config import EXTENSION_PREFIX, ISSUER_KEYS, Config, config_from_field
from scopegate.yamlnodes import Field, Problems, compose

CHART_MODES = ("sidecar", "gateway", "decision", "library")
# What the chart writes itself, from which values.
SET_BY_THE_CHART = {
    "listen": "scopegate.port",
    "admin_listen": "scopegate.adminPort",
    "upstream": "app.port (gateway mode: gateway.upstream)",
    "decision_listen": "scopegate.decisionPort",
}
# Placeholders that pass the check for whatever the chart would write; the ports are the chart's defaults.
_PLACEHOLDERS = {
    "listen": "0.0.0.0:8080",
    "admin_listen": "0.0.0.0:9090",
    "upstream": "http://127.0.0.1:3000",
    "decision_listen": "0.0.0.0:8181",
}
# Top-level keys the chart writes only when they are set (not null); `limits` only when not empty either.
_WHEN_SET = (
    "allow_path_parameters",
    "trust_forwarded_headers",
    "decision_path_prefix",
    "upstream_host",
    "strip_prefix",
    "forward_payload",
    "token_from",
    "forward_claims",
    "cors",
)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"


@dataclass
class ValuesCheck:
    """The config the chart would render, or the problems that stop it; warnings either way, with their lines."""

    config: Config | None
    problems: list[str]  # FILE:LINE: breadcrumb: message
    warnings: list[tuple[int, str]] = field(default_factory=list)  # (LINE, "FILE:LINE: warning: ...")


def check_values(path: Path) -> ValuesCheck:
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return ValuesCheck(None, [f"{path}:1: cannot read the values file: {exc}"])
    return parse_values(text, path)


def parse_values(text: str, source: Path) -> ValuesCheck:
    problems = Problems(str(source))
    warnings: list[tuple[int, str]] = []
    root = compose(text, problems)
    config = _from_values(root, source, warnings) if root is not None else None
    rendered = [(line, f"{source}:{line}: warning: {message}") for line, message in warnings]
    if problems.lines or config is None:
        return ValuesCheck(None, problems.lines or [f"{source}:1: invalid values file"], rendered)
    return ValuesCheck(config, [], rendered)


def _from_values(root: Field, source: Path, warnings: list[tuple[int, str]]) -> Config | None:
    if not isinstance(root.node, MappingNode):
        root.error(f"expected a Helm values file (a mapping with a `config` key); got {root.kind}")
        return None
    top = {key: Field(value.node, key, value.problems, value.key) for key, value in root.items()}
    for key, value in top.items():
        if key.startswith(EXTENSION_PREFIX):
            _refuse_extension(value, "the top level")
    mode = (top["mode"].choice(CHART_MODES) if "mode" in top else None) or "sidecar"  # a bad one is a problem
    existing = _member(top.get("existingConfigMap"), "name")
    if existing is not None and _truthy(existing):
        root.problems.add(
            existing,
            "existingConfigMap.name",
            "the chart mounts this ConfigMap's file and renders nothing from `config:`; check that file with --config",
        )
        return None
    if "config" not in top:
        root.problems.add_at(
            1,
            "no `config:` block: the chart renders scopegate's config file from it (with existingConfigMap.name, "
            "check that ConfigMap's config file with --config instead)",
        )
        return None
    block = top["config"]
    if not isinstance(block.node, MappingNode):
        block.error(f"expected a mapping of scopegate's config keys; got {block.kind}")
        return None
    if mode == "gateway":
        _require_gateway_upstream(top)
    read = _HelmReader(warnings).read(block.node, "config")
    rendered = _render(Field(read, "config", root.problems, block.key), mode, warnings)
    return config_from_field(Field(rendered, "config", root.problems, block.key), source)


class _HelmReader:
    """The nodes as Helm reads them: its YAML library (go-yaml v2) applies a mapping's keys in document order, a `<<`
    setting every key it merges (the first of a list of mappings winning) over whatever came before it.

    The YAML merge key type, which scopegate's own config files follow, lets a key the mapping gives itself win
    wherever the `<<` stands; the two differ only for a key given before a `<<` that merges it too, which is warned
    about. A `<<` of something that is not a mapping is kept, for the config parser to report.
    """

    def __init__(self, warnings: list[tuple[int, str]]) -> None:
        self._warnings = warnings
        self._done: dict[int, Node] = {}  # aliases are one node: read once (and a cycle ends)

    def read(self, node: Node, crumb: str) -> Node:
        if id(node) in self._done:
            return self._done[id(node)]
        if isinstance(node, SequenceNode):
            items: list[Node] = []
            self._done[id(node)] = SequenceNode(node.tag, items, node.start_mark, node.end_mark)
            items += [self.read(item, f"{crumb}[{index}]") for index, item in enumerate(node.value)]
        elif isinstance(node, MappingNode):
            pairs: list[tuple[Node, Node]] = []
            self._done[id(node)] = MappingNode(node.tag, pairs, node.start_mark, node.end_mark)
            self._read_pairs(node, crumb, pairs)
        else:
            self._done[id(node)] = node
        return self._done[id(node)]

    def _read_pairs(self, node: MappingNode, crumb: str, pairs: list[tuple[Node, Node]]) -> None:
        where: dict[str, int] = {}  # key -> its index in pairs
        explicit: set[int] = set()  # indexes of the keys the mapping gives itself
        for key, value in node.value:
            if key.tag != _MERGE:
                name = str(key.value) if isinstance(key, ScalarNode) else ""
                pair = (key, self.read(value, f"{crumb}.{name}"))
                if name in where and where[name] not in explicit:
                    pairs[where[name]] = pair  # over a merged value; a key given twice stays twice, a problem
                else:
                    where[name] = len(pairs)
                    pairs.append(pair)
                explicit.add(where[name])
                continue
            sources = list(reversed(value.value)) if isinstance(value, SequenceNode) else [value]
            if not all(isinstance(source, MappingNode) for source in sources):
                pairs.append((key, value))
                continue
            for source in sources:
                merged = self.read(source, crumb)
                for merged_key, merged_value in merged.value if isinstance(merged, MappingNode) else ():
                    name = str(merged_key.value) if isinstance(merged_key, ScalarNode) else ""
                    if name in where:
                        self._overridden(pairs[where[name]][0], key, f"{crumb}.{name}", where[name] in explicit)
                        explicit.discard(where[name])
                        pairs[where[name]] = (merged_key, merged_value)
                    else:
                        where[name] = len(pairs)
                        pairs.append((merged_key, merged_value))

    def _overridden(self, given: Node, merge: Node, crumb: str, explicit: bool) -> None:
        if explicit:
            self._warnings.append(
                (
                    given.start_mark.line + 1,
                    f"{crumb}: Helm takes this key's value from the `<<` on line {merge.start_mark.line + 1} after it"
                    " (YAML's merge rules, and scopegate reading a config file, keep the one given here); put `<<:`"
                    " first",
                )
            )


def _render(block: Field, mode: str, warnings: list[tuple[int, str]]) -> MappingNode:
    """The `config:` mapping as the chart writes it, as nodes that keep the values file's lines."""
    at = block.key or block.node
    chart_keys = ("admin_listen", "decision_listen") if mode == "decision" else ("listen", "admin_listen", "upstream")
    pairs: list[tuple[Node, Node]] = [(_scalar(key, at), _scalar(_PLACEHOLDERS[key], at)) for key in chart_keys]
    for key_node, value_node in block.pairs():
        key = str(key_node.value) if isinstance(key_node, ScalarNode) else ""
        here = block.child(value_node, f".{key}", key_node)
        if key.startswith(EXTENSION_PREFIX):
            _refuse_extension(here, "`config`")
        elif key in SET_BY_THE_CHART:
            here.error(f"the chart sets {key} itself (from {SET_BY_THE_CHART[key]}); remove it from `config`")
        elif (key in _WHEN_SET and _is_null(value_node)) or (key == "limits" and _is_empty(value_node)):
            continue
        elif key == "upstream_timeout_seconds" and mode == "decision":
            continue  # no upstream in decision mode: the chart leaves it out
        elif key == "auth" and isinstance(value_node, MappingNode):
            pairs.append((key_node, _render_auth(here, warnings)))
        else:
            pairs.append((key_node, value_node))
    return MappingNode(_MAP, pairs, at.start_mark, at.end_mark)


def _render_auth(auth: Field, warnings: list[tuple[int, str]]) -> MappingNode:
    members = auth.pairs()
    names = [str(key.value) if isinstance(key, ScalarNode) else "" for key, _ in members]
    several = any(name == "issuers" and _truthy(value) for name, (_, value) in zip(names, members, strict=True))
    kept: list[tuple[Node, Node]] = []
    for name, (key, value) in zip(names, members, strict=True):
        if several and name in ISSUER_KEYS:
            if _truthy(value):
                why = "ignored: with auth.issuers set, the chart writes only issuers and token_cache_entries"
                warnings.append((key.start_mark.line + 1, f"config.auth.{name}: {why}"))
            continue
        if name == "issuers" and not several:
            continue  # empty: the chart takes the single issuer
        if name in ("jwks_uri", "algorithms") and not _truthy(value):
            continue  # empty means "scopegate's default" to the chart
        if name != "issuer" and _is_null(value):
            continue
        kept.append((key, value))
    return MappingNode(_MAP, kept, auth.node.start_mark, auth.node.end_mark)


def _member(field: Field | None, name: str) -> Node | None:
    """The value under `name` in a mapping of the values file, if both are there."""
    if field is None:
        return None
    return next((value for key, value in field.pairs() if isinstance(key, ScalarNode) and key.value == name), None)


def _require_gateway_upstream(top: dict[str, Field]) -> None:
    upstream = _member(top.get("gateway"), "upstream")
    if upstream is None or not _truthy(upstream):
        top["mode"].error("gateway mode needs gateway.upstream (e.g. http://my-api.my-namespace.svc.cluster.local:80)")


def _refuse_extension(field: Field, where: str) -> None:
    field.problems.add(
        field.key,
        field.crumb,
        f"the chart's values.schema.json refuses keys it does not know at {where}, so `x-` blocks only work in a "
        "config file; in a values file, anchor a value the chart knows (e.g. the first route's `resource: &api ...`,"
        " then `resource: *api`)",
    )


def _scalar(text: str, at: Node) -> ScalarNode:
    return ScalarNode(_STR, text, at.start_mark, at.end_mark)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _is_empty(node: Node) -> bool:
    return _is_null(node) or (isinstance(node, MappingNode | SequenceNode) and not node.value)


def _truthy(node: Node) -> bool:
    """Go templates' truth: anything but null, "", 0, false, an empty list or an empty mapping."""
    if isinstance(node, MappingNode | SequenceNode):
        return bool(node.value)
    if not isinstance(node, ScalarNode) or node.tag == _NULL:
        return False
    if node.tag == _STR:
        return bool(node.value != "")
    return str(node.value).lower() not in _FALSY


_FALSY = frozenset({"0", "0.0", "-0", "+0", "0x0", "0o0", "false", "no", "off"})
