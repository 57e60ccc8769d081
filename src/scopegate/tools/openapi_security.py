"""An OpenAPI operation's security, as what a route requires of the token: public, or scopes (all or any).

OpenAPI's `security` is alternatives (OR) of requirement objects (AND of schemes, each with its scopes); a route rule
holds one scope list, all or any. The translation never admits a token that satisfies none of the alternatives: what
it cannot express it leaves out and names in a comment, and where several requirements must hold at once
(`strongest`) it asks for all their scopes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scopegate.rules import ScopeMode
from scopegate.tools.openapi_document import Scheme, SecurityRequirement


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """What a route asks of the token, and the comments that say where that differs from the document."""

    public: bool = False
    mode: ScopeMode = ScopeMode.ALL
    scopes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    left_out: str = ""  # non-empty: no route can require what the operation does, so none is generated


NO_SECURITY = (
    "the document declares no security for this operation: the route requires a token for the resource anyway;"
    " make it `public: true` if anonymous calls are meant to pass"
)
ANONYMOUS_TOO = (
    "the document also allows anonymous calls (an empty requirement {}): scopegate requires a token here;"
    " make the route `public: true` if anonymous calls must pass"
)


@dataclass(frozen=True, slots=True)
class _Alternative:
    """One security requirement object, split into what scopegate checks and what it cannot."""

    text: str  # for comments: `OAuth2 [a, b] + api_key (apiKey)`
    enforced: bool  # at least one of its schemes is a bearer token scheme
    scopes: tuple[str, ...]  # of its bearer token schemes, all needed
    unchecked: tuple[str, ...]  # its other schemes, as `name (kind)`
    impossible: tuple[str, ...]  # scopes no token can hold (RFC 6749 scope tokens have no spaces, quotes or `\`)

    @property
    def usable(self) -> bool:
        return self.enforced and not self.impossible


def requirement(security: tuple[SecurityRequirement, ...] | None, schemes: Mapping[str, Scheme]) -> Requirement:
    """What the route requires for an operation's security alternatives (OR of ANDs).

    Every alternative a single scope: any of them. Otherwise all scopes of the first alternative scopegate can
    check, the others named in a comment: the route may refuse a token the document admits, never the reverse.
    """
    if security is None:
        return Requirement(notes=(NO_SECURITY,))
    alternatives = [_alternative(each, schemes) for each in security if each]
    if not alternatives:
        return Requirement(public=True)
    notes = [ANONYMOUS_TOO] if len(alternatives) < len(security) else []
    usable = [each for each in alternatives if each.usable]
    if not usable:
        return _nothing_usable(alternatives, notes)
    single = len(usable) > 1 and all(len(each.scopes) == 1 for each in usable)
    chosen = usable if single else usable[:1]
    unchecked = _unique(name for each in chosen for name in each.unchecked)
    if unchecked:
        notes.append(f"scopegate cannot check {', '.join(unchecked)}, required beside the token: the upstream must")
    left = [each.text for each in alternatives if each not in chosen]
    if left:
        required = "any of the single-scope alternatives" if single else f"{chosen[0].text}, the first alternative"
        notes.append(
            f"requires {required} scopegate can check; not required here, so a call meeting only these is refused:"
            f" {'; '.join(left)}"
        )
    scopes = _unique(each.scopes[0] for each in chosen) if single else chosen[0].scopes
    mode = ScopeMode.ANY if len(scopes) > 1 and single else ScopeMode.ALL
    return Requirement(mode=mode, scopes=scopes, notes=tuple(notes))


def _alternative(pairs: SecurityRequirement, schemes: Mapping[str, Scheme]) -> _Alternative:
    scopes: list[str] = []
    unchecked: list[str] = []
    parts: list[str] = []
    enforced = False
    for name, listed in pairs:
        scheme = schemes.get(name, Scheme(name=name, kind="undefined"))
        if scheme.enforceable:
            enforced = True
            scopes.extend(listed)
            parts.append(f"{name} [{', '.join(listed)}]")
        else:
            unchecked.append(f"{name} ({scheme.kind})")
            parts.append(unchecked[-1])
    impossible = tuple(scope for scope in scopes if not scope or any(c.isspace() or c in '"\\' for c in scope))
    return _Alternative(" + ".join(parts), enforced, _unique(scopes), tuple(unchecked), impossible)


def _nothing_usable(alternatives: Sequence[_Alternative], notes: list[str]) -> Requirement:
    impossible = _unique(scope for each in alternatives for scope in each.impossible)
    if impossible:
        quoted = ", ".join(repr(scope) for scope in impossible)
        return Requirement(left_out=f"no token can hold the scope(s) {quoted} (no spaces, quotes or backslashes)")
    unchecked = ", ".join(_unique(name for each in alternatives for name in each.unchecked))
    notes.append(
        f"scopegate cannot check {unchecked} (it verifies bearer tokens): the route requires a token for the resource"
        " instead, so a call with only that is refused"
    )
    return Requirement(notes=tuple(notes))


def strongest(needs: Sequence[Requirement]) -> Requirement:
    """One requirement no weaker than any of `needs`: protected over public, all their scopes when they differ."""
    protected = [need for need in needs if not need.public]
    notes = _unique(note for need in needs for note in need.notes)
    if not protected:
        return replace(needs[0], notes=notes)
    if len(protected) < len(needs):
        notes += ("the document makes some of these operations public: this route requires a token for all",)
    scoped = [need for need in protected if need.scopes]  # a requirement without scopes is met by every token
    if not scoped or all((need.mode, need.scopes) == (scoped[0].mode, scoped[0].scopes) for need in scoped):
        chosen = scoped[0] if scoped else protected[0]
        return Requirement(mode=chosen.mode, scopes=chosen.scopes, notes=notes)
    narrowed = [need.scopes for need in scoped if need.mode is ScopeMode.ANY and len(need.scopes) > 1]
    notes += tuple(f"`any: [{', '.join(scopes)}]` counts here as its first scope" for scopes in narrowed)
    scopes = _unique(
        scope for need in scoped for scope in (need.scopes if need.mode is ScopeMode.ALL else need.scopes[:1])
    )
    return Requirement(scopes=scopes, notes=notes)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
