"""Reading an OpenAPI 3 document for `scopegate init`: its operations, their security and servers, with their lines.

The document is composed into YAML nodes, not loaded into dicts, so that a file that is not OpenAPI 3 is refused at
the line that says so, and every generated route can name the line of its operation. JSON is read the same way; a
JSON file YAML cannot compose (tab indentation, escaped surrogate pairs, a key over 1024 characters) is parsed as
JSON and then has no line numbers. Only what
route rules need is read: paths and methods, `operationId`, `summary`, `security`, `servers` and the security
schemes. Schemas, parameters and responses are never looked at, so a large document costs little more than parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scopegate.errors import ScopegateError
from scopegate.routing import TemplateError, compile_template

# The operations of a Path Item Object (OpenAPI 3.0 and 3.1), in the order the specification lists them.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Schemes whose credential is a bearer token scopegate verifies: OAuth 2.0 and OpenID Connect (scopes in the
# token's `scope`), and HTTP bearer (a token, no scopes of its own).
ENFORCEABLE_KINDS = frozenset({"oauth2", "openIdConnect", "http bearer"})
_MAX_REF_HOPS = 16
_NO_MARK_LINE = 0  # a node without a position (JSON read as JSON)


class SpecError(ScopegateError):
    """The document cannot be turned into routes; `problems` holds each reason as "FILE:LINE: message"."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scheme:
    """A security scheme as route rules see it: its name in the document and what kind of credential it is."""

    name: str
    kind: str  # oauth2, openIdConnect, http bearer, http basic, apiKey, mutualTLS, ... or "undefined"

    @property
    def enforceable(self) -> bool:
        return self.kind in ENFORCEABLE_KINDS


# One Security Requirement Object: every (scheme, scopes) pair in it is needed. A list of them are alternatives.
SecurityRequirement = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    method: str  # upper-case
    path: str  # as the document writes it
    operation_id: str  # "" when the document gives none
    summary: str  # the summary, else the description's first line, else ""
    security: tuple[SecurityRequirement, ...] | None  # the operation's, else the document's; None: neither says
    base: str  # the path prefix requests carry ("" for none), from the servers or --base-path
    line: int  # in the document; 0 when unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    source: str
    openapi: str  # the `openapi` version as written
    title: str
    version: str  # info.version
    operations: tuple[Operation, ...]
    schemes: Mapping[str, Scheme]
    base_note: str  # where the path prefix came from, for the header comment


def read_document(text: str, source: str, *, base_path: str | None = None) -> Document:
    """The operations of an OpenAPI 3 document, or `SpecError` saying why the text is not one we can read.

    `base_path` (already checked with `template_prefix`) replaces the prefix taken from the `servers` URLs.
    """
    reader = _Reader(source, _root(text, source))
    return reader.document(base_path)


def template_prefix(path: str) -> str:
    """`path` as a prefix for route templates: "" for none, else `/literal/segments`; ValueError says what is wrong."""
    trimmed = path.strip().rstrip("/")
    if not trimmed:
        return ""
    prefix = trimmed if trimmed.startswith("/") else "/" + trimmed
    if any(char in prefix for char in "*{}"):
        raise ValueError(f"{prefix!r} has a parameter or a wildcard; a prefix is literal segments only")
    try:
        compile_template(prefix)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return prefix


# --- composing ------------------------------------------------------------------------------------------------


def _root(text: str, source: str) -> Node:
    try:
        root = _composed(text)
    except yaml.YAMLError as exc:
        root = _json_root(text)
        if root is None:
            raise SpecError([_yaml_problem(exc, source)]) from None
    except RecursionError:
        raise SpecError([f"{source}:1: the document nests lists or mappings too deeply"]) from None
    if root is None:
        raise SpecError([f"{source}:1: the file is empty"])
    return root


def _composed(text: str) -> Node | None:
    """libyaml when installed (large documents compose fast); PyYAML's own reader where libyaml refuses the text
    (it reads JSON's surrogate-pair escapes, libyaml does not), and for the error message."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.compose(text, Loader=fast)
        except yaml.YAMLError:
            pass
    node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    return node


def _json_root(text: str) -> Node | None:
    """JSON that YAML cannot compose, as nodes without positions; None if it is not JSON either."""
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    node: Node = yaml.representer.SafeRepresenter(sort_keys=False).represent_data(data)
    return node


def _yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{source}:{line}: neither YAML nor JSON: {problem}"


def _line(node: Node | None) -> int:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else _NO_MARK_LINE


def _members(node: Node | None) -> dict[str, Node]:
    """A mapping's members by key (the last of repeated keys, as YAML loaders keep); {} for anything else."""
    if not isinstance(node, MappingNode):
        return {}
    return {str(key.value): value for key, value in node.value if isinstance(key, ScalarNode)}


def _keyed(node: Node) -> list[tuple[str, Node, Node]]:
    """A mapping's (key, key node, value) in document order."""
    return [(str(key.value), key, value) for key, value in node.value if isinstance(key, ScalarNode)]


def _text(node: Node | None) -> str:
    """A scalar as written ("" for null, lists and mappings): `openapi: 3.1` reads "3.1", not 3.1 the float."""
    if not isinstance(node, ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        return ""
    return str(node.value)


# --- reading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reader:
    """Walks the composed document; every problem it raises names the node's line."""

    source: str
    root: Node

    def at(self, node: Node | None, message: str) -> str:
        line = _line(node)
        return f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}"

    def fail(self, node: Node | None, message: str) -> SpecError:
        return SpecError([self.at(node, message)])

    def document(self, base_path: str | None) -> Document:
        top = self._check_openapi_3()
        paths = top["paths"]
        schemes = self._schemes(_members(_members(top.get("components")).get("securitySchemes")))
        default_security = self._security(top["security"]) if "security" in top else None
        servers = top.get("servers")
        operations: list[Operation] = []
        for path, key, item in _keyed(paths):
            if path.startswith("x-"):
                continue  # a specification extension, not a path
            if not path.startswith("/"):
                raise self.fail(key, f"path {path!r} does not start with '/'")
            operations.extend(self._operations(path, self._resolve(item), default_security, servers, base_path))
        if not operations:
            raise self.fail(paths, "`paths` lists no operations: there is nothing to make routes from")
        info = _members(top.get("info"))
        base_note = "--base-path" if base_path is not None else self._base_note(servers)
        return Document(
            source=self.source,
            openapi=_text(top["openapi"]),
            title=_text(info.get("title")),
            version=_text(info.get("version")),
            operations=tuple(operations),
            schemes=schemes,
            base_note=base_note,
        )

    def _check_openapi_3(self) -> dict[str, Node]:
        if not isinstance(self.root, MappingNode):
            kind = "a list" if isinstance(self.root, SequenceNode) else f"the scalar {_text(self.root)[:40]!r}"
            raise self.fail(
                self.root, f"expected an OpenAPI 3 document (a mapping with `openapi` and `paths`); got {kind}"
            )
        top = _members(self.root)
        if "swagger" in top:
            raise self.fail(
                top["swagger"],
                f"this is a Swagger {_text(top['swagger']) or '2.0'} document; scopegate init reads OpenAPI 3.0 and "
                "3.1 (convert it first, for example with swagger2openapi or editor.swagger.io)",
            )
        if "openapi" not in top:
            raise self.fail(self.root, "no `openapi` version: not an OpenAPI 3 document")
        version = _text(top["openapi"])
        if not version.startswith("3."):
            raise self.fail(top["openapi"], f"`openapi: {version}`: scopegate init reads OpenAPI 3.0 and 3.1")
        if "paths" not in top:
            raise self.fail(self.root, "no `paths`: the document describes no operations to make routes from")
        if not isinstance(top["paths"], MappingNode):
            raise self.fail(top["paths"], "`paths` must be a mapping of paths to path items")
        return top

    def _operations(
        self,
        path: str,
        item: Node,
        default: tuple[SecurityRequirement, ...] | None,
        servers: Node | None,
        base_path: str | None,
    ) -> list[Operation]:
        servers = _members(item).get("servers", servers)
        keys = {name: key for name, key, _ in _keyed(item)} if isinstance(item, MappingNode) else {}
        found = []
        for method in (method for method in METHODS if method in keys):
            node = self._resolve(_members(item)[method])
            if not isinstance(node, MappingNode):
                raise self.fail(keys[method], f"{method} {path}: an operation must be a mapping")
            operation = _members(node)
            security = self._security(operation["security"]) if "security" in operation else default
            own_servers = operation.get("servers", servers)
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    operation_id=_text(operation.get("operationId")).strip(),
                    summary=_summary(operation),
                    security=security,
                    base=base_path if base_path is not None else self._base(own_servers),
                    line=_line(keys[method]),  # the `get:` line, where a reader looks
                )
            )
        return found

    def _resolve(self, node: Node) -> Node:
        """Follow a local `$ref` (`#/components/pathItems/x`); other references cannot be read from one file."""
        for _ in range(_MAX_REF_HOPS):
            ref = _members(node).get("$ref")
            if ref is None:
                return node
            node = self._pointer(ref)
        raise self.fail(node, f"more than {_MAX_REF_HOPS} $ref hops (a reference loop?)")

    def _pointer(self, ref: Node) -> Node:
        text = _text(ref)
        if not text.startswith("#/"):
            raise self.fail(
                ref, f"$ref {text!r} points outside this file; bundle the document first (for example: redocly bundle)"
            )
        node = self.root
        for part in text[2:].split("/"):
            found = _members(node).get(unquote(part).replace("~1", "/").replace("~0", "~"))
            if found is None:
                raise self.fail(ref, f"$ref {text!r} names nothing in this document")
            node = found
        return node

    def _security(self, node: Node) -> tuple[SecurityRequirement, ...]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, "`security` must be a list of security requirement objects")
        return tuple(self._requirement(item) for item in node.value)

    def _requirement(self, node: Node) -> SecurityRequirement:
        if not isinstance(node, MappingNode):
            raise self.fail(node, "a security requirement must be a mapping of scheme names to scope lists")
        pairs = []
        for name, _, scopes in _keyed(node):
            if not isinstance(scopes, SequenceNode) or not all(isinstance(s, ScalarNode) for s in scopes.value):
                raise self.fail(scopes, f"security scheme {name!r}: expected a list of scopes")
            pairs.append((name, tuple(_text(scope) for scope in scopes.value)))
        return tuple(pairs)

    def _schemes(self, members: dict[str, Node]) -> dict[str, Scheme]:
        return {name: Scheme(name=name, kind=_kind(_members(self._resolve(node)))) for name, node in members.items()}

    def _base(self, servers: Node | None) -> str:
        """The path of the first server URL, as a template prefix; a prefix no template can hold is a problem."""
        server = _first_server(servers)
        if server is None:
            return ""
        url_node = _members(server).get("url")
        url = _substituted(_text(url_node), _members(_members(server).get("variables")))
        path = _url_path(url)
        try:
            return template_prefix(path)
        except ValueError as exc:
            message = f"the server URL {url!r} has a path no route template can start with ({exc}); give --base-path"
            raise self.fail(url_node or server, message) from None

    def _base_note(self, servers: Node | None) -> str:
        server = _first_server(servers)
        if server is None:
            return "no `servers`"
        members = _members(server)
        return f"the first server URL {_substituted(_text(members.get('url')), _members(members.get('variables')))}"


def _first_server(servers: Node | None) -> Node | None:
    if isinstance(servers, SequenceNode) and servers.value:
        first: Node = servers.value[0]
        return first
    return None


_VARIABLE = re.compile(r"\{([^{}]*)\}")


def _substituted(url: str, variables: dict[str, Node]) -> str:
    """The URL with each `{variable}` replaced by its default (one without a default stays, and is refused later)."""

    def default(found: re.Match[str]) -> str:
        value = _text(_members(variables.get(found.group(1))).get("default"))
        return value or found.group()

    return _VARIABLE.sub(default, url)


def _url_path(url: str) -> str:
    """The path part of an absolute server URL, or of a relative one (`/v1`, `v1`: relative to the document)."""
    parts = urlsplit(url)
    if parts.scheme or url.startswith("//"):
        return parts.path
    return url.split("?", 1)[0].split("#", 1)[0]


def _kind(members: dict[str, Node]) -> str:
    kind = _text(members.get("type"))
    if kind == "http":
        return f"http {_text(members.get('scheme')).lower() or '(no scheme)'}"
    return kind or "undefined"


def _summary(operation: dict[str, Node]) -> str:
    summary = _text(operation.get("summary")).strip()
    if summary:
        return summary
    lines = _text(operation.get("description")).strip().splitlines()
    return lines[0] if lines else ""
