"""Which route a request is for: one canonical path, matched against templates compiled once at load.

The normalized path is both what the routes are matched against and what is forwarded upstream, so the
upstream sees exactly the path that was authorized. Normalization follows RFC 3986 section 6.2.2 (case of
percent-escapes, decoding of unreserved characters, dot segments) and refuses, rather than guesses at,
anything that different upstream parsers could read differently: an encoded `/` or `\\`, a raw `\\`, control
characters, a `..` above the root and path parameters (`;x`, which Tomcat, Jetty and Spring cut off before
routing; with parameters allowed, still the `..;` segments). Path smuggling lives in exactly those gaps
between what a proxy checks and what a backend serves.

Templates (`/api/reports/{id}`, `/static/**`) compile to one anchored regex each when the config is loaded, so
a bad template fails `scopegate check` with its line, and matching a request is a few `fullmatch` calls.

Nothing here does I/O or imports aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

from scopegate.errors import BadPath

MAX_PATH_LENGTH = 4096

# RFC 3986 section 2.3 and 3.3. `%` is not listed: escapes are handled separately.
_UNRESERVED = "A-Za-z0-9\\-._~"
_PCHAR = _UNRESERVED + "!$&'()*+,;=:@"
_UNRESERVED_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# The common case: allowed characters only, no `%`, no `//`, and no segment starting with `.` (so no dot
# segment and no `..;`). Such a path is already normalized and is returned as is.
_PLAIN = re.compile(f"(?:/[{_PCHAR.replace('.', '')}][{_PCHAR}]*)+/?|/")

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")
# Only ever applied after _BAD_PERCENT found nothing, so every `%` starts a complete escape.
_ENCODED_SLASH = re.compile("%2[Ff]")
_ENCODED_BACKSLASH = re.compile("%5[Cc]")
_ENCODED_CONTROL = re.compile("%[01][0-9A-Fa-f]|%7[Ff]")
_ESCAPE_OR_UNSAFE = re.compile(f"%[0-9A-Fa-f]{{2}}|[^{_PCHAR}/%]")
# `%3B` counts as a parameter separator too: a server that decodes before splitting off parameters reads
# `..%3B` as `..;`.
_PARAMETERS = re.compile("(?:;|%3B)")


def normalize_path(raw: str, *, allow_parameters: bool = False) -> str:
    """The canonical form of a request path (the caller has cut it at `?`), or `BadPath` if it is ambiguous.

    The result is idempotent (`normalize_path(out) == out`), ASCII, starts with `/`, has no empty or dot
    segments and keeps a trailing `/`, so the upstream gets what the routes were matched against. Path parameters
    (`;` or `%3B` anywhere in the path) are refused unless `allow_parameters`.
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise _too_long()
    if _PLAIN.fullmatch(raw):
        if not allow_parameters and ";" in raw:
            raise _parameters()
        return raw
    if not raw.startswith("/"):
        raise BadPath("not_absolute", "the request path must start with '/'")
    _refuse_ambiguous_characters(raw)
    if not allow_parameters and _PARAMETERS.search(raw.upper()):
        raise _parameters()
    path = _remove_dot_segments(_ESCAPE_OR_UNSAFE.sub(_normalize_escape, raw))
    if len(path) > MAX_PATH_LENGTH:
        raise _too_long()
    return path


def _too_long() -> BadPath:
    return BadPath("too_long", f"the request path is longer than {MAX_PATH_LENGTH} characters", status=414)


def _parameters() -> BadPath:
    return BadPath(
        "path_parameters",
        "the request path contains a path parameter (';' or %3B), which servers route differently",
    )


def _refuse_ambiguous_characters(raw: str) -> None:
    """Refuse what upstreams decode differently; the order only picks the detail of a path bad twice over."""
    if _CONTROL.search(raw):
        raise BadPath("control_character", "the request path contains a control character")
    if "\\" in raw:
        raise BadPath("backslash", "the request path contains a backslash")
    if _BAD_PERCENT.search(raw):
        raise BadPath("bad_percent_encoding", "the request path has a '%' not followed by two hex digits")
    if _ENCODED_SLASH.search(raw):
        raise BadPath("encoded_slash", "the request path contains an encoded '/' (%2F)")
    if _ENCODED_BACKSLASH.search(raw):
        raise BadPath("encoded_backslash", "the request path contains an encoded backslash (%5C)")
    if _ENCODED_CONTROL.search(raw):
        raise BadPath("encoded_control", "the request path contains an encoded control character")


def _normalize_escape(found: re.Match[str]) -> str:
    """Decode an escaped unreserved character, upper-case other escapes, percent-encode unsafe characters."""
    text = found.group()
    if text[0] == "%":
        byte = int(text[1:], 16)
        return chr(byte) if byte in _UNRESERVED_BYTES else text.upper()
    try:
        # surrogateescape gives back the original byte of invalid UTF-8 the HTTP parser decoded with it.
        encoded = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadPath("invalid_character", "the request path contains an invalid character") from None
    return "".join(f"%{byte:02X}" for byte in encoded)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 with `//` collapsed; a `..` above the root is refused, not clamped."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not kept:
                raise BadPath("dot_dot_above_root", "the request path climbs above the root with '..'")
            kept.pop()
            continue
        if _PARAMETERS.split(segment, maxsplit=1)[0] in (".", ".."):
            raise BadPath("dot_segment_with_parameters", "the request path has a '.' or '..' segment with parameters")
        kept.append(segment)
    # A path ending in a dot segment names a directory, so it gets a trailing slash, as in RFC 3986.
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


class TemplateError(ValueError):
    """A path template is invalid; the message is a full sentence naming what is wrong and what is allowed."""


_PARAM = re.compile("{([^{}]*)}")
_PARAM_NAME = re.compile("[A-Za-z_][A-Za-z0-9_]*")
# `*` is a legal path character but is reserved for `**` in templates.
_LITERAL_CHARS = _PCHAR.replace("*", "")
_BAD_LITERAL_CHAR = re.compile(f"[^{_LITERAL_CHARS}]")
_ALLOWED_LITERAL = "letters, digits and - . _ ~ ! $ & ' ( ) + , ; = : @"


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A compiled path template; `match` takes a path already passed through `normalize_path`."""

    source: str  # as written in the config
    param_names: tuple[str, ...]
    regex: re.Pattern[str] = field(repr=False, compare=False)

    def match(self, path: str) -> dict[str, str] | None:
        """The percent-decoded parameters if `path` matches, else None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        params = found.groupdict()
        if "%" in path:
            return {name: unquote(value, errors="replace") for name, value in params.items()}
        return params


def compile_template(template: str) -> PathTemplate:
    """Compile `/literal/{param}/**` to one anchored regex, or raise `TemplateError` saying what to fix."""
    if not template.startswith("/"):
        raise TemplateError(f"a path template must start with '/'; got {template!r}")
    if template == "/":
        return PathTemplate(template, (), re.compile("/"))
    if "//" in template:
        raise TemplateError(f"empty segment ('//') in {template!r}; every segment between '/' must be non-empty")
    if template.endswith("/"):
        raise TemplateError(
            f"a path template must not end with '/' (a trailing '/' on the request is ignored when matching);"
            f" write {template.rstrip('/')!r}"
        )
    segments = template[1:].split("/")
    rest = segments[-1] == "**"
    if rest:
        segments.pop()
    parts = [_compile_segment(segment) for segment in segments]
    names = tuple(name for _, name in parts if name is not None)
    _refuse_duplicates(names)
    # A trailing `/` on the request is ignored; with `**` the rest (even nothing) is optional.
    tail = "(?:/.*)?" if rest else "/?"
    return PathTemplate(template, names, re.compile("".join(regex for regex, _ in parts) + tail, re.DOTALL))


def _compile_segment(segment: str) -> tuple[str, str | None]:
    """The regex for one segment and its parameter name (None for a literal)."""
    if "*" in segment:
        raise TemplateError(
            f"'*' may only appear as a whole last segment '**' (as in '/prefix/**'); got segment {segment!r}"
        )
    param = _PARAM.fullmatch(segment)
    if param is not None:
        return "/(?P<" + _param_name(param.group(1)) + ">[^/]+)", param.group(1)
    if "{" in segment or "}" in segment:
        raise TemplateError(
            f"segment {segment!r} mixes a parameter with other text; a segment is either entirely literal"
            " or entirely one '{name}'"
        )
    _check_literal(segment)
    return "/" + re.escape(segment), None


def _param_name(name: str) -> str:
    if not _PARAM_NAME.fullmatch(name):
        raise TemplateError(
            f"invalid parameter name {name!r}; a name is a letter or '_' followed by letters, digits or '_'"
        )
    return name


def _check_literal(segment: str) -> None:
    """Refuse literals no normalized path can contain, so a template can never silently match nothing."""
    if _PARAMETERS.split(segment, maxsplit=1)[0] in (".", ".."):
        raise TemplateError(
            f"segment {segment!r} is a dot segment, which normalized request paths never contain;"
            " write the path without it"
        )
    bad = _BAD_LITERAL_CHAR.search(segment)
    if bad is None:
        return
    char = bad.group()
    why = "percent-escapes are not allowed" if char == "%" else f"{char!r} is not allowed"
    raise TemplateError(
        f"literal segment {segment!r}: {why}; literal segments may use only {_ALLOWED_LITERAL}"
        " (use a '{name}' parameter to match anything else)"
    )


def _refuse_duplicates(names: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TemplateError(
                f"parameter '{{{name}}}' appears twice; parameter names must be unique within a template"
            )
        seen.add(name)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    """The route a request matched and the template's percent-decoded parameters."""

    target: T
    params: Mapping[str, str]


class Router(Generic[T]):
    """Routes in config order; the first whose method set and template both match wins."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Sequence[tuple[PathTemplate, frozenset[str] | None, T]]) -> None:
        """`entries` are (template, methods or None for any method, target), in priority order."""
        self._entries = tuple(entries)

    def match(self, method: str, path: str) -> RouteMatch[T] | None:
        """The first matching route for an upper-case `method` and a normalized `path`, or None."""
        for template, methods, target in self._entries:
            # The set lookup is cheaper than the regex, so it goes first.
            if methods is not None and method not in methods:
                continue
            params = template.match(path)
            if params is not None:
                return RouteMatch(target, params)
        return None
