"""Lint for route rules: rules that load fine but cannot do what their author meant. Pure: no I/O.

`scopegate check` prints these as warnings (`FILE:LINE: warning: ...`); `--strict` makes them fail the check.

Shadowing is decided exactly on the template language, not guessed from prefixes: a template is a `Shape` (one entry
per segment: its literal text, or None for a `{param}`; `rest` for a trailing `/**`), and `uncovered(inner, outers)`
either finds a path that `inner` matches and no outer does (the witness shown in the warning) or proves there is none.
A request's trailing `/` changes no template's answer, so paths are compared as lists of segments.

Routes are evaluated in order per method, so a route is shadowed for method M when the earlier routes that accept M
together match every path it matches. A route without `methods` after a route with the same path and some methods
takes the remaining methods: that is how "every other method" is written, and it is not warned about.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from scopegate.routing import PathTemplate
from scopegate.rules import HTTP_METHODS, RouteRule

# Stands for every method no route lists (the HTTP/1.1 parser accepts WebDAV's and others): only a route without
# `methods` takes those.
OTHER_METHOD = "*"


class Kind(enum.StrEnum):
    """The warnings, one name each (README: "Lint warnings")."""

    SHADOWED = "shadowed"  # earlier routes take every request the route matches
    PARTLY_SHADOWED = "partly-shadowed"  # ... for some of its methods
    SAME_PATH_OTHER_REQUIREMENTS = "same-path-other-requirements"  # an earlier route with its path decides them
    NO_SCOPES = "no-scopes"  # protected, but any token with the right audience passes
    GET_WITHOUT_HEAD = "get-without-head"  # HEAD on the route's paths matches no route at all


@dataclass(frozen=True, slots=True)
class LintWarning:
    line: int  # the route's line
    crumb: str  # `routes[3]`
    kind: Kind
    message: str

    def render(self, file: str) -> str:
        return f"{file}:{self.line}: warning: {self.crumb}: {self.message} [{self.kind}]"


# --- the template language --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """What a template matches: `segments` (literal text, or None for a `{param}`: any one segment), then with `rest`
    any number of further segments, none included. Parameter names do not matter: equal shapes match equal paths."""

    segments: tuple[str | None, ...]
    rest: bool = False

    @classmethod
    def of(cls, template: PathTemplate | str) -> Shape:
        source = template if isinstance(template, str) else template.source
        parts = [part for part in source.strip("/").split("/") if part]
        rest = bool(parts) and parts[-1] == "**"
        if rest:
            parts.pop()
        return cls(tuple(None if part.startswith("{") else part for part in parts), rest)

    def accepts_length(self, count: int) -> bool:
        return count >= len(self.segments) if self.rest else count == len(self.segments)

    def takes(self, index: int, segment: str) -> bool:
        """Does a path whose segment `index` is `segment` still fit (given the segments before it fit)?"""
        if index < len(self.segments):
            own = self.segments[index]
            return own is None or own == segment
        return self.rest


def covers(outer: Shape, inner: Shape) -> bool:
    """Does `outer` match every path `inner` matches?"""
    return uncovered(inner, [outer]) is None


def overlaps(a: Shape, b: Shape) -> bool:
    """Is there a path both match?"""
    shortest = max(len(a.segments), len(b.segments))
    if not (a.accepts_length(shortest) and b.accepts_length(shortest)):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a.segments, b.segments, strict=False))


def uncovered(inner: Shape, outers: Sequence[Shape]) -> str | None:
    """A path `inner` matches and none of `outers` does, or None when the outers together match all of inner's."""
    found = _search(inner, tuple(outer for outer in outers if overlaps(outer, inner)), ())
    return None if found is None else "/" + "/".join(found)


def _search(inner: Shape, alive: tuple[Shape, ...], prefix: tuple[str, ...]) -> tuple[str, ...] | None:
    """A witness starting with `prefix`; `alive` are the outers that fit `prefix`."""
    index = len(prefix)
    if inner.accepts_length(index) and not any(outer.accepts_length(index) for outer in alive):
        return prefix  # the path may end here, and no outer lets it
    if index >= len(inner.segments) and not inner.rest:
        return None
    if index >= len(inner.segments) and all(len(outer.segments) <= index for outer in alive):
        # Every longer path looks alike to every outer still alive: one with `**` takes them all, the others none.
        return None if any(outer.rest for outer in alive) else (*prefix, _other(alive, index))
    for segment in _choices(inner, alive, index):
        found = _search(inner, tuple(outer for outer in alive if outer.takes(index, segment)), (*prefix, segment))
        if found is not None:
            return found
    return None


def _choices(inner: Shape, alive: tuple[Shape, ...], index: int) -> list[str]:
    """One segment for each way the outers can tell segments apart at `index`: each literal, and anything else."""
    own = inner.segments[index] if index < len(inner.segments) else None
    if own is not None:
        return [own]
    return [*_literals_at(alive, index), _other(alive, index)]


def _literals_at(shapes: Sequence[Shape], index: int) -> list[str]:
    found = (shape.segments[index] for shape in shapes if index < len(shape.segments))
    return list(dict.fromkeys(literal for literal in found if literal is not None))


def _other(shapes: Sequence[Shape], index: int) -> str:
    """A segment that is none of the literals at `index`."""
    taken = set(_literals_at(shapes, index))
    candidate, number = "x", 0
    while candidate in taken:
        number += 1
        candidate = f"x{number}"
    return candidate


# --- the warnings -----------------------------------------------------------------------------------------------


def lint(routes: Sequence[RouteRule], *, crumb: str = "routes") -> list[LintWarning]:
    """Every warning about `routes` (in evaluation order), sorted by line; `crumb` names the list in messages."""
    shapes = [Shape.of(rule.template) for rule in routes]
    found: list[LintWarning] = []
    for index, rule in enumerate(routes):
        for kind, message in (
            _shadowing(routes, shapes, index),
            _no_scopes(rule),
            _get_without_head(routes, shapes, index),
        ):
            if message:
                found.append(LintWarning(rule.line, f"{crumb}[{index}]", kind, f"route {rule.name!r} {message}"))
    return sorted(found, key=lambda warning: warning.line)


Found = tuple[Kind, str]  # a warning's kind and message; an empty message is no warning


def _shadowing(routes: Sequence[RouteRule], shapes: Sequence[Shape], index: int) -> Found:
    rule, shape = routes[index], shapes[index]
    taken: dict[str, list[int]] = {}  # method -> the earlier routes that take its requests (all of them)
    for method in _methods(rule):
        earlier = [other for other in range(index) if _accepts(routes[other], method)]
        if uncovered(shape, [shapes[other] for other in earlier]) is None:
            taken[method] = [other for other in earlier if overlaps(shapes[other], shape)]
    takers = sorted({other for others in taken.values() for other in others})
    if not taken:
        return Kind.SHADOWED, ""
    if len(taken) == len(_methods(rule)):
        return Kind.SHADOWED, f"can never match: {_who(routes, shapes, index, takers)}"
    methods = ", ".join(sorted(taken, key=_method_order))
    same_path = [other for other in takers if shapes[other] == shape]
    if rule.methods is None and same_path == takers:
        return Kind.PARTLY_SHADOWED, ""  # the remaining methods of a path split by method before it: on purpose
    differing = [other for other in same_path if _requirements(routes[other]) != _requirements(rule)]
    if differing:
        other = routes[differing[0]]
        return Kind.SAME_PATH_OTHER_REQUIREMENTS, (
            f"has the same path as route {other.name!r} (line {other.line}), which comes first for {methods}: "
            f"those requests get that route's {_differences(other, rule)}, not this one's"
        )
    verb = "matches" if len(takers) == 1 else "match"
    return Kind.PARTLY_SHADOWED, f"never sees {methods}: {_names(routes, takers)} {verb} every such request first"


def _no_scopes(rule: RouteRule) -> Found:
    if rule.public or rule.scopes.scopes or rule.claims:
        return Kind.NO_SCOPES, ""
    return Kind.NO_SCOPES, f"is protected but requires no scope: {_anyone(rule)} passes; add `scopes`"


def _get_without_head(routes: Sequence[RouteRule], shapes: Sequence[Shape], index: int) -> Found:
    """A path of this GET route that no route at all takes HEAD for; nothing when it allows HEAD or every HEAD lands."""
    rule = routes[index]
    if rule.methods is None or "GET" not in rule.methods or "HEAD" in rule.methods:
        return Kind.GET_WITHOUT_HEAD, ""
    head = uncovered(shapes[index], [shapes[other] for other, route in enumerate(routes) if _accepts(route, "HEAD")])
    if head is None:
        return Kind.GET_WITHOUT_HEAD, ""
    return Kind.GET_WITHOUT_HEAD, f"allows GET but not HEAD, and no route takes `HEAD {head}` (404); add HEAD"


def _who(routes: Sequence[RouteRule], shapes: Sequence[Shape], index: int, takers: list[int]) -> str:
    rule, shape = routes[index], shapes[index]
    for other in takers:
        first = routes[other]
        if covers(shapes[other], shape) and all(_accepts(first, method) for method in _methods(rule)):
            differing = shapes[other] == shape and _requirements(first) != _requirements(rule)
            also = f", with that route's {_differences(first, rule)}" if differing else ""
            return f"route {first.name!r} (line {first.line}) matches every request it would{also}"
    return f"{_names(routes, takers)} together match every request it would"


def _names(routes: Sequence[RouteRule], indexes: Sequence[int]) -> str:
    named = [f"{routes[index].name!r} (line {routes[index].line})" for index in indexes]
    return ("route " if len(named) == 1 else "routes ") + ", ".join(named)


def _methods(rule: RouteRule) -> tuple[str, ...]:
    return (*HTTP_METHODS, OTHER_METHOD) if rule.methods is None else tuple(rule.methods)


def _accepts(rule: RouteRule, method: str) -> bool:
    return rule.methods is None or method in rule.methods


def _method_order(method: str) -> tuple[int, str]:
    return (HTTP_METHODS.index(method) if method in HTTP_METHODS else len(HTTP_METHODS), method)


def _anyone(rule: RouteRule) -> str:
    if rule.organization is not None and rule.resource is None:
        return "any organization token for the request's organization"
    if rule.organization is not None:
        return f"any token for {rule.resource} of the request's organization"
    return f"any token for {rule.resource}"


_REQUIREMENTS = ("public", "resource", "organization", "scopes", "claims", "issuers", "token_from", "mode")


def _requirements(rule: RouteRule) -> tuple[object, ...]:
    return tuple(getattr(rule, name) for name in _REQUIREMENTS)


def _differences(first: RouteRule, later: RouteRule) -> str:
    names = [f"`{name}`" for name in _REQUIREMENTS if getattr(first, name) != getattr(later, name)]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
