"""From OpenAPI operations to route rules: templates, names, organizations, and an order that shadows nothing.

Where an OpenAPI document says more than a route rule can, the route asks for more, never for less: it never admits
a token that satisfies none of an operation's security alternatives, and a template broader than its operation (a
segment like `{name}.json`) is said so in a comment and requires what every later route it overlaps requires. Each
step is a small pure function with a table test in tests/test_init_openapi.py; scopes are `openapi_security`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scopegate.routing import TemplateError, compile_template
from scopegate.rules import HTTP_METHODS
from scopegate.tools.openapi_document import Document, Operation, Scheme
from scopegate.tools.openapi_security import Requirement, requirement, strongest

Shape = tuple[str | None, ...]  # a template's segments, None for a parameter: equal shapes match the same requests

# Path parameters that name the organization (compared without case, `_` and `-`), besides --organization-param.
ORGANIZATION_PARAMS = frozenset({"organizationid", "organisationid", "orgid"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    source: str  # the route's path template, the base path included
    params: tuple[tuple[str, str], ...]  # (name in the document, name in the template)
    shape: Shape
    notes: tuple[str, ...] = ()  # segments no template can express; any note means broader than the operation

    @property
    def broadened(self) -> bool:
        return bool(self.notes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    methods: tuple[str, ...]
    template: Template
    requirement: Requirement
    organization: str | None  # the template parameter holding the organization id; None: a global API route
    operations: tuple[Operation, ...]  # one, or several that the same requests reach
    notes: tuple[str, ...] = ()

    @property
    def notes_all(self) -> tuple[str, ...]:
        return _unique((*self.template.notes, *self.requirement.notes, *self.notes))


def plan_routes(document: Document, organization_param: str | None = None) -> tuple[Route, ...]:
    """One route per operation (merged where a template cannot tell operations apart), in a non-shadowing order."""
    operations = document.operations
    names = unique_names([route_name(op.operation_id, op.method, op.path) for op in operations])
    drafts = [
        _draft(op, name, document.schemes, organization_param) for op, name in zip(operations, names, strict=True)
    ]
    if all(op.security is None for op in operations):  # said once, in the header, rather than on every route
        drafts = [replace(draft, requirement=replace(draft.requirement, notes=())) for draft in drafts]
    routes = order_routes(with_head(merge_same_requests(drafts)))
    return tuple(strengthen_broadened(routes))


def _draft(operation: Operation, name: str, schemes: Mapping[str, Scheme], organization: str | None) -> Route:
    template = to_template(operation.path, operation.base)
    need = requirement(operation.security, schemes)
    param = None if need.public or need.left_out else organization_param(template, organization)
    notes = () if param is None else (f"organization-level API route: the organization id is the path's {{{param}}}",)
    return Route(
        name=name,
        methods=(operation.method,),
        template=template,
        requirement=need,
        organization=param,
        operations=(operation,),
        notes=notes,
    )


# --- templates ------------------------------------------------------------------------------------------------

_WHOLE_PARAM = re.compile(r"\{([^{}]+)\}")
_INNER_PARAM = re.compile(r"\{([^{}]*)\}")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def to_template(path: str, base: str = "") -> Template:
    """The route template for an OpenAPI path under `base` (literal segments, from `template_prefix`).

    Empty segments are dropped (scopegate collapses `//` and ignores a trailing `/` before matching). A segment a
    template cannot hold becomes a parameter, with a note: the route is then broader than the operation.
    """
    parts = [segment for segment in base.split("/") if segment]
    shape: list[str | None] = list(parts)
    params: list[tuple[str, str]] = []
    notes: list[str] = []
    for segment in (segment for segment in path.split("/") if segment):
        whole = _WHOLE_PARAM.fullmatch(segment)
        if whole is None and _is_literal(segment):
            parts.append(segment)
            shape.append(segment)
            continue
        inner = [whole.group(1)] if whole else _INNER_PARAM.findall(segment)
        original = next((name for name in inner if name), f"segment{len(shape) + 1}")
        name = param_name(original, {taken for _, taken in params})
        params.append((original, name))
        parts.append(f"{{{name}}}")
        shape.append(None)
        if whole is None:
            notes.append(_inexpressible(segment, name))
    return Template(source="/" + "/".join(parts), params=tuple(params), shape=tuple(shape), notes=tuple(notes))


def _is_literal(segment: str) -> bool:
    """A segment a template can hold as it is (no `*`, braces, escapes or characters normalization would encode)."""
    if any(char in segment for char in "*{}"):
        return False
    try:
        return not compile_template("/" + segment).param_names
    except TemplateError:
        return False


def _inexpressible(segment: str, name: str) -> str:
    mixed = "{" in segment or "}" in segment
    what = "mixes a parameter with text" if mixed else "cannot be a literal segment of a route template"
    return (
        f"the document's segment {segment!r} {what}: {{{name}}} matches any value in its place, so this route is"
        " broader than the operation"
    )


def param_name(original: str, taken: Iterable[str] = ()) -> str:
    """A template parameter name (`[A-Za-z_][A-Za-z0-9_]*`) for an OpenAPI one, unique among `taken`."""
    name = _NOT_NAME.sub("_", original) or "param"
    if name[0].isdigit():
        name = "_" + name
    used = set(taken)
    candidate, number = name, 2
    while candidate in used:
        candidate, number = f"{name}_{number}", number + 1
    return candidate


# --- names ----------------------------------------------------------------------------------------------------

_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.:-]+")
MAX_NAME = 100


def label(text: str) -> str:
    """`text` as a route name (`A-Za-z0-9_.:-`, up to 100, starting with a letter or digit); "" if nothing is left."""
    name = _NOT_LABEL.sub("-", text).lstrip("_.:-")
    return name[:MAX_NAME].rstrip("-")


def route_name(operation_id: str, method: str, path: str) -> str:
    """The operationId made label-safe, else the method and the path's words: `get-users-user_id-posts`."""
    words = "-".join(segment.replace("{", "").replace("}", "") for segment in path.split("/") if segment)
    return label(operation_id) or label(f"{method.lower()}-{words or 'root'}")


def unique_names(names: Sequence[str]) -> list[str]:
    """Each name's first use keeps it; a repeat gets the first free `-2`, `-3`, ... (never another's own name)."""
    first = {name: index for index, name in reversed(list(enumerate(names)))}
    taken = set(names)
    unique = []
    for index, name in enumerate(names):
        if first[name] != index:
            number = 2
            while (candidate := f"{name[: MAX_NAME - len(str(number)) - 1]}-{number}") in taken:
                number += 1
            taken.add(candidate)
            name = candidate
        unique.append(name)
    return unique


# --- organizations --------------------------------------------------------------------------------------------


def organization_param(template: Template, extra: str | None = None) -> str | None:
    """The template parameter holding the organization id: --organization-param's, else one named like an org id."""
    for original, name in template.params:
        if extra is not None and extra in (original, name):
            return name
    for original, name in template.params:
        if re.sub("[-_]", "", original).lower() in ORGANIZATION_PARAMS:
            return name
    return None


# --- merging, order, HEAD -------------------------------------------------------------------------------------


def merge_same_requests(routes: Sequence[Route]) -> list[Route]:
    """One route for operations whose templates and methods are the same (`/a/{id}` and `/a/{name}`, or what two
    segments a template cannot express became): a route cannot tell their requests apart."""
    groups: dict[tuple[Shape, tuple[str, ...]], list[Route]] = {}
    kept: list[Route] = []
    for route in routes:
        if route.requirement.left_out:
            kept.append(route)
            continue
        key = (route.template.shape, route.methods)
        if key not in groups:
            groups[key] = []
            kept.append(route)
        groups[key].append(route)
    return [_merged(groups[(r.template.shape, r.methods)]) if not r.requirement.left_out else r for r in kept]


def _merged(group: Sequence[Route]) -> Route:
    first = group[0]
    if len(group) == 1:
        return first
    others = ", ".join(f"{route.name} ({route.operations[0].path})" for route in group[1:])
    notes = [f"also stands for {others}: the same requests reach both, so the route requires the scopes of each"]
    places = {_organization_place(route) for route in group}
    if len(places) > 1:
        notes.append("the merged operations disagree on the organization: this route follows the first; review it")
    segment_notes = _unique(note for route in group for note in route.template.notes)
    return replace(
        first,
        template=replace(first.template, notes=segment_notes),
        requirement=strongest([route.requirement for route in group]),
        operations=tuple(op for route in group for op in route.operations),
        notes=_unique((*(note for route in group for note in route.notes), *notes)),
    )


def _organization_place(route: Route) -> int | None:
    if route.organization is None:
        return None
    names = [name for _, name in route.template.params]
    return names.index(route.organization)


def with_head(routes: Sequence[Route]) -> list[Route]:
    """GET routes take HEAD too (servers answer HEAD like GET), unless the document routes HEAD itself."""
    explicit = {route.template.shape for route in routes if "HEAD" in route.methods}
    return [
        replace(route, methods=("GET", "HEAD"))
        if route.methods == ("GET",) and route.template.shape not in explicit
        else route
        for route in routes
    ]


_METHOD_RANK = {method: rank for rank, method in enumerate(HTTP_METHODS)}


def order_routes(routes: Sequence[Route]) -> list[Route]:
    """Routes so that none matches everything a later one would: at the first segment where two differ, a literal
    comes before a parameter. Literal siblings keep the document's order; a path's own methods stay together."""
    first_seen: dict[Shape, int] = {}
    for index, route in enumerate(routes):
        shape = route.template.shape
        for end in range(1, len(shape) + 1):
            first_seen.setdefault(shape[:end], index)

    def key(route: Route) -> tuple[tuple[tuple[int, int], ...], int]:
        shape = route.template.shape
        segments = tuple((1, 0) if seg is None else (0, first_seen[shape[: at + 1]]) for at, seg in enumerate(shape))
        return segments, _METHOD_RANK.get(route.methods[0], len(_METHOD_RANK))

    return sorted(routes, key=key)


def overlaps(a: Template, b: Template) -> bool:
    """Some request path matches both templates (no template here ends in `/**`)."""
    if len(a.shape) != len(b.shape):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a.shape, b.shape, strict=True))


def strengthen_broadened(routes: Sequence[Route]) -> list[Route]:
    """A route broader than its operation catches requests meant for later routes it overlaps: it requires what
    they require too, so a token passes it only if it would have passed the route the request was meant for."""
    out = list(routes)
    for index, route in enumerate(out):
        if not route.template.broadened or route.requirement.left_out:
            continue
        later = [
            other
            for other in routes[index + 1 :]
            if not other.requirement.left_out
            and set(other.methods) & set(route.methods)
            and overlaps(route.template, other.template)
        ]
        if later:
            names = ", ".join(other.name for other in later)
            need = strongest([route.requirement, *(other.requirement for other in later)])
            note = (
                f"its template also matches requests meant for the later route(s) {names}: it requires their scopes too"
            )
            out[index] = replace(route, requirement=need, notes=(*route.notes, note))
    return out


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
