"""What a request says, whatever brought it: the neutral shape every front door hands to the decision.

The proxy port parses HTTP/1.1 into this; `explain` and policy tests build it from the command line or a test file;
an HTTP/2 front would build the same. The decision (`gate.py`) reads only this, so it never depends on how the
request arrived.

Header fields keep their bytes exactly as received (names in their original case), because what was authorized is
forwarded byte for byte; the decision reads them as latin-1 text, which maps every byte to one character and back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus


class Headers:
    """Header fields in arrival order; lookups are case-insensitive and return every value of a repeated field.

    `fields` holds (lower-cased name, name as sent, value) triples, as the framing layer filled them.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[bytes, bytes, bytes]] | None = None) -> None:
        self.fields = fields if fields is not None else []

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Headers from text pairs (command line, test files), encoded as UTF-8 the way a client would send them."""
        fields = []
        for name, value in pairs:
            raw = name.encode("utf-8", "surrogateescape")
            fields.append((raw.lower(), raw, value.encode("utf-8", "surrogateescape")))
        return cls(fields)

    def getall(self, name: str) -> list[str]:
        """Every value of the field `name` (any case), in arrival order; [] when absent."""
        key = _key(name)
        return [value.decode("latin-1") for lower, _, value in self.fields if lower == key]

    def getall_twins(self, name: str) -> list[str]:
        """`getall`, counting `_` and `-` as the same: CGI/WSGI-style servers read `X_Org` and `X-Org` as one field."""
        key = _key(name).replace(b"_", b"-")
        return [value.decode("latin-1") for lower, _, value in self.fields if lower.replace(b"_", b"-") == key]

    def get(self, name: str) -> str | None:
        """The first value of `name`, or None."""
        key = _key(name)
        for lower, _, value in self.fields:
            if lower == key:
                return value.decode("latin-1")
        return None


_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    """The lower-cased bytes a field name is compared as: the names asked for are few (config, code), so kept."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower().encode("latin-1")
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


@dataclass(slots=True)
class RequestFacts:
    """A request as the decision sees it. `target` is the raw request-target (origin- or absolute-form)."""

    method: str
    target: str
    headers: Headers


def query_values(query: str, name: str) -> list[str]:
    """Every value of the query parameter `name` in a raw query string, percent- and `+`-decoded."""
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]


def query_without(query: str, name: str) -> str:
    """The raw query with every `name` parameter removed, the other parameters byte for byte as they came."""
    kept = [pair for pair in query.split("&") if unquote_plus(pair.partition("=")[0]) != name]
    return "&".join(kept)
