"""Reading YAML nodes with their locations, so every config problem can name its file, line and key.

PyYAML's `safe_load` throws line numbers away and silently keeps the last of two duplicate keys. Composing to nodes
keeps both: each `Field` carries the node it came from and a breadcrumb (`routes[2].match.methods[1]`), and every
problem is appended to one `Problems` list instead of raised, so a user sees all of them at once.

Anchors and aliases need nothing of their own: an alias is the very node its anchor names, so a problem in a shared
value is reported where the value is written. Merge keys (`<<: *defaults`) are resolved here, as YAML's merge key type
says: the mapping's own keys win over merged ones, and of several merged mappings the first to give a key wins.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_T = TypeVar("_T")
_D = TypeVar("_D")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

Scalar = str | int | float | bool


@dataclass
class Problems:
    """Every problem found in one file, each rendered as `FILE:LINE: breadcrumb: message`, reported in file order."""

    file: str
    _found: list[tuple[int, str]] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """The problems sorted by line (stable: problems on one line keep the order they were found in)."""
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def add(self, node: Node | None, crumb: str, message: str) -> None:
        self.add_at(_line(node), f"{crumb}: {message}" if crumb else message)

    def add_at(self, line: int, message: str) -> None:
        self._found.append((line, f"{self.file}:{line}: {message}"))


@dataclass(frozen=True)
class Field:
    """One YAML value with where it stands: its node, the key node naming it (if any) and its breadcrumb."""

    node: Node
    crumb: str
    problems: Problems
    key: Node | None = None

    @property
    def line(self) -> int:
        return _line(self.node)

    @property
    def key_line(self) -> int:
        """The line of the key naming this value (the value's own line for list items and the root)."""
        return _line(self.key or self.node)

    @property
    def kind(self) -> str:
        """What the value is, for messages: `a list`, `an integer 8080`, `a string 'yes'`."""
        return _kind(self.node)

    def error(self, message: str) -> None:
        """A problem with this value, on the line of its key when the value is a list or mapping below that key."""
        at = self.key if self.key is not None and isinstance(self.node, MappingNode | SequenceNode) else self.node
        self.problems.add(at, self.crumb, message)

    def missing(self, key: str, hint: str = "") -> None:
        """This mapping lacks a required key: reported where the mapping is named, where a user would add it."""
        self.problems.add(self.key or self.node, self.crumb, f"missing required key {key!r}{hint}")

    def child(self, node: Node, suffix: str, key: Node | None = None) -> Field:
        return Field(node, self.crumb + suffix, self.problems, key)

    # --- shapes -----------------------------------------------------------------------------------------------

    def mapping(
        self, allowed: tuple[str, ...], moved: Mapping[str, str] | None = None, *, free_prefix: str = ""
    ) -> dict[str, Field] | None:
        """The members of a mapping; unknown and repeated keys are problems (and dropped).

        `moved` names where keys that belong elsewhere go (`{"methods": "match"}`), for a better hint than a typo's.
        Keys starting with `free_prefix` (`x-`) are the user's own, free-form and left alone.
        """
        if not isinstance(self.node, MappingNode):
            self.error(f"expected a mapping with keys {', '.join(allowed)}; got {_kind(self.node)}")
            return None
        members: dict[str, Field] = {}
        for key_node, value_node in self.pairs():
            if not isinstance(key_node, ScalarNode):
                self.problems.add(key_node, self.crumb, f"expected a key name; got {_kind(key_node)} as a key")
                continue
            key = str(key_node.value)
            crumb = f"{self.crumb}.{key}" if self.crumb else key
            if free_prefix and key.startswith(free_prefix):
                continue
            if key not in allowed:
                hint = _unknown_key_hint(key, allowed, moved or {})
                self.problems.add(key_node, crumb, f"unknown key{hint}; expected one of {', '.join(allowed)}")
            elif key in members:
                first = members[key].key_line
                self.problems.add(key_node, crumb, f"duplicate key (first given on line {first})")
            else:
                members[key] = Field(value_node, crumb, self.problems, key_node)
        return members

    def sequence(self, *, empty: str = "") -> list[Field] | None:
        """The items of a list; with `empty`, an empty list is that problem (and None)."""
        if not isinstance(self.node, SequenceNode):
            self.error(f"expected a list; got {_kind(self.node)}")
            return None
        if empty and not self.node.value:
            self.error(empty)
            return None
        return [self.child(item, f"[{index}]") for index, item in enumerate(self.node.value)]

    def items(self) -> Iterator[tuple[str, Field]]:
        """Members of a free-form mapping (keys are data, e.g. claim names); repeated keys are problems."""
        if not isinstance(self.node, MappingNode):
            self.error(f"expected a mapping; got {_kind(self.node)}")
            return
        seen: set[str] = set()
        for key_node, value_node in self.pairs():
            key = _scalar_value(key_node)
            if not isinstance(key, str) or not key:
                self.problems.add(key_node, self.crumb, "keys must be non-empty strings")
                continue
            if key in seen:
                self.problems.add(key_node, f"{self.crumb}.{key}", "duplicate key")
                continue
            seen.add(key)
            yield key, self.child(value_node, f".{key}", key_node)

    def pairs(self) -> list[tuple[Node, Node]]:
        """A mapping's (key, value) nodes with its merge keys (`<<`) resolved; its own keys all kept, repeats too.

        Merged pairs come first, as PyYAML's loader orders them; a merged key the mapping gives itself is dropped, and
        so is one an earlier merged mapping already gave. A `<<` that is neither a mapping nor a list of mappings is
        a problem. Each mapping is merged at most once, so a merge cycle (`&a {<<: *a}`) ends.
        """
        if not isinstance(self.node, MappingNode):
            return []
        own = [(key, value) for key, value in self.node.value if key.tag != _MERGE]
        given = {str(key.value) for key, _ in own if isinstance(key, ScalarNode)}
        merged: list[tuple[Node, Node]] = []
        self._merge_into(merged, given, self.node, {id(self.node)})
        return merged + own

    def _merge_into(self, merged: list[tuple[Node, Node]], given: set[str], node: MappingNode, seen: set[int]) -> None:
        for key, value in node.value:
            if key.tag != _MERGE:
                continue
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in sources:
                if not isinstance(source, MappingNode):
                    where = source if isinstance(value, SequenceNode) else key
                    self.problems.add(
                        where,
                        self.crumb,
                        f"a merge key `<<` takes a mapping (e.g. an alias *defaults) or a list of them; got"
                        f" {_kind(source)}",
                    )
                    continue
                if id(source) in seen:
                    continue
                seen.add(id(source))
                self._take_pairs(merged, given, source, seen)

    def _take_pairs(
        self, merged: list[tuple[Node, Node]], given: set[str], source: MappingNode, seen: set[int]
    ) -> None:
        """The pairs `source` contributes: its own keys not given yet, then (with lower priority) its own merges."""
        own = [(key, value) for key, value in source.value if key.tag != _MERGE]
        for key, value in own:
            name = str(key.value) if isinstance(key, ScalarNode) else None
            if name is not None and name in given:
                continue
            if name is not None:
                given.add(name)
            merged.append((key, value))
        self._merge_into(merged, given, source, seen)

    # --- scalars ----------------------------------------------------------------------------------------------

    def scalar(self, hint: str = "") -> Scalar | None:
        """A string, number or boolean; null, lists and mappings are problems."""
        value = _scalar_value(self.node)
        if value is None:
            self.error(f"expected a string, number or boolean; got {_kind(self.node)}{hint}")
        return value

    def string(self, expected: str = "a string") -> str | None:
        if not (isinstance(self.node, ScalarNode) and self.node.tag == _STR):
            self.error(f"expected {expected}; got {_kind(self.node)}")
            return None
        if not self.node.value.strip():
            self.error("must not be empty")
            return None
        return str(self.node.value)

    def boolean(self) -> bool | None:
        value = _scalar_value(self.node)
        if not isinstance(value, bool):
            self.error(f"expected true or false; got {_kind(self.node)}")
            return None
        return value

    def number(self, *, minimum: float, strictly_above: bool = False) -> float | None:
        value = _scalar_value(self.node)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(f"expected a number; got {_kind(self.node)}")
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            written = str(self.node.value)
            self.error(f"expected a finite number; got {written if len(written) < 40 else written[:20] + '...'}")
            return None
        too_small = number <= minimum if strictly_above else number < minimum
        if too_small:
            self.error(f"must be {'greater than' if strictly_above else 'at least'} {minimum:g}; got {value}")
            return None
        return number

    def integer(self, *, minimum: int) -> int | None:
        """A whole number (YAML int, not a float or a boolean) of at least `minimum`."""
        value = _scalar_value(self.node)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(f"expected a whole number; got {_kind(self.node)}")
            return None
        if value < minimum:
            self.error(f"must be at least {minimum}; got {value}")
            return None
        return value

    def choice(self, options: tuple[str, ...], hint: str = "") -> str | None:
        value = self.string()
        if value is not None and value not in options:
            self.error(f"expected one of {', '.join(options)}; got {value!r}{hint}")
            return None
        return value

    def strings(self, *, empty: str = "") -> list[tuple[str, Field]] | None:
        """A list of non-empty strings, each with its own field for per-item errors; None if any item is not one.
        With `empty`, an empty list is that problem."""
        items = self.sequence(empty=empty)
        if items is None:
            return None
        values = [item.string() for item in items]  # every item is checked, so every bad one is reported
        out = [(value, item) for value, item in zip(values, items, strict=True) if value is not None]
        return out if len(out) == len(items) else None


def compose(text: str, problems: Problems) -> Field | None:
    """The document's root node, or None (with a problem) when the YAML itself does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        problems.add_at(*_yaml_error(exc))
        return None
    except yaml.YAMLError as exc:
        problems.add_at(1, f"invalid YAML: {exc}")
        return None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        problems.add_at(1, "invalid YAML: lists or mappings nested too deeply")
        return None
    if root is None:
        problems.add_at(1, "the file is empty")
        return None
    return Field(root, "", problems)


def _yaml_error(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """The line PyYAML stopped at, and its message with the construct it was inside (`while parsing ...`)."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc}"
    if exc.context and exc.context_mark and exc.context_mark is not mark:
        message += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
    return (mark.line + 1 if mark else 1), message


# Names people reach for from other tools' schemas (OAuth, Envoy, Kubernetes), and the key scopegate calls it.
_SYNONYMS = {
    "aud": "resource",
    "audience": "resource",
    "scp": "scopes",
    "permissions": "scopes",
    "org": "organization",
    "verbs": "methods",
    "prefix": "path",
}


def _unknown_key_hint(key: str, allowed: tuple[str, ...], moved: Mapping[str, str]) -> str:
    if key in moved:
        return f" here (it belongs under `{moved[key]}`)"
    close = _close_key(key, allowed)
    if close is not None:
        return f" (did you mean {close!r}?)"
    elsewhere = _close_key(key, tuple(moved))
    if elsewhere is not None:
        return f" (did you mean {elsewhere!r}? it belongs under `{moved[elsewhere]}`)"
    return ""


def _close_key(key: str, known: tuple[str, ...]) -> str | None:
    """The known key `key` is most likely a misspelling of: another case, `-` for `_`, a synonym, or a near miss."""
    folded = key.lower().replace("-", "_")
    for candidate in (folded, _SYNONYMS.get(folded)):
        if candidate is not None and candidate != key and candidate in known:
            return candidate
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) or difflib.get_close_matches(
        folded, known, n=1, cutoff=0.75
    )
    return close[0] if close else None


def _line(node: Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _scalar_value(node: Node) -> Scalar | None:
    """The value of a plain string, integer, float or boolean node; None for anything else, or an unreadable one."""
    if not isinstance(node, ScalarNode) or node.tag not in (_STR, _INT, _FLOAT, _BOOL):
        return None
    try:
        value: Any = yaml.SafeLoader("").construct_object(node)
    except Exception:  # PyYAML's constructors raise what they meet (ValueError, KeyError, IndexError, ...)
        return None  # an explicit tag on a value it cannot hold: `!!int abc`, `!!bool maybe`, a bare `!!int`
    return value if isinstance(value, str | int | float | bool) else None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "null"
    tag = node.tag.rsplit(":", 1)[-1]
    numeric = {_INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean"}
    short = len(str(node.value)) < 40
    if node.tag in numeric and _scalar_value(node) is not None:
        return f"{numeric[node.tag]} {node.value}" if short else numeric[node.tag]  # as written: 8080, true
    kind = "a string" if node.tag == _STR else f"an invalid {tag} value" if node.tag in numeric else f"a {tag} value"
    return f"{kind} {node.value!r}" if short else kind


def optional(members: dict[str, Field], key: str, parse: Callable[[Field], _T | None], default: _D) -> _T | _D | None:
    """Parse `key` when present (None on a problem), else the default."""
    return parse(members[key]) if key in members else default
