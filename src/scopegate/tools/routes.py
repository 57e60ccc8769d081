"""`scopegate routes`: the route table, one row per route in evaluation order, for a terminal, a README or a script.

Each row says what the route matches and what a token must carry there: its scenario (Logto's three, or public), the
API resource, where the organization id comes from, the scopes and the claim conditions. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from scopegate.rules import HTTP_METHODS, RouteRule

FORMATS = ("text", "markdown", "json")
COLUMNS = ("name", "methods", "path", "scenario", "resource", "organization", "scopes", "claims", "mode")


@dataclass(frozen=True, slots=True)
class Row:
    route: RouteRule

    @property
    def scenario(self) -> str:
        rule = self.route
        if rule.public:
            return "public"
        if rule.organization is None:
            return "global API"
        return "organization" if rule.resource is None else "organization API"

    def cells(self) -> dict[str, str]:
        """Each column as text; `-` for nothing."""
        rule = self.route
        organization = rule.organization
        return {
            "name": rule.name,
            "methods": ", ".join(_methods(rule)) if rule.methods is not None else "any",
            "path": rule.template.source,
            "scenario": self.scenario,
            "resource": rule.resource or "-",
            "organization": f"{organization.source.value} {organization.name}" if organization else "-",
            "scopes": f"{rule.scopes.mode.value}: {' '.join(rule.scopes.scopes)}" if rule.scopes.scopes else "-",
            "claims": ", ".join(f"{c.name}={json.dumps(c.value)}" for c in rule.claims) or "-",
            "mode": rule.mode.value,
        }

    def as_json(self) -> dict[str, object]:
        rule = self.route
        organization = rule.organization
        return {
            "name": rule.name,
            "line": rule.line,
            "methods": list(_methods(rule)) if rule.methods is not None else None,
            "path": rule.template.source,
            "scenario": self.scenario,
            "resource": rule.resource,
            "organization": {"from": organization.source.value, "name": organization.name} if organization else None,
            "scopes": {rule.scopes.mode.value: list(rule.scopes.scopes)},
            "claims": {condition.name: condition.value for condition in rule.claims},
            "mode": rule.mode.value,
        }


def render(routes: Sequence[RouteRule], output: str = "text") -> str:
    """The table in `output` (one of FORMATS), ending with a newline."""
    rows = [Row(rule) for rule in routes]
    if output == "json":
        return json.dumps([row.as_json() for row in rows], indent=2) + "\n"
    table = [[row.cells()[column] for column in COLUMNS] for row in rows]
    return _markdown(table) if output == "markdown" else _text(table)


def _text(table: list[list[str]]) -> str:
    header = [column.upper() for column in COLUMNS]
    widths = [max(len(cells[i]) for cells in (header, *table)) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) for cells in (header, *table)
    ]
    return "".join(line.rstrip() + "\n" for line in lines)


def _markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for cells in table:
        lines.append(
            "| " + " | ".join(_markdown_cell(cell, column) for cell, column in zip(cells, COLUMNS, strict=True)) + " |"
        )
    return "\n".join(lines) + "\n"


def _markdown_cell(text: str, column: str) -> str:
    """A path as code (templates hold no `|` or backtick); elsewhere a `|` would end the cell."""
    return f"`{text}`" if column == "path" else text.replace("|", "\\|")


def _methods(rule: RouteRule) -> list[str]:
    """In the usual order (GET, HEAD, POST, ...) rather than the set's."""
    methods = rule.methods or frozenset()
    return sorted(methods, key=lambda method: (HTTP_METHODS.index(method) if method in HTTP_METHODS else 99, method))
