"""What the request itself claims: its bearer token, the organization it names, and headers it may not carry.

The token comes from the places the route lists (`token_from`): the `Authorization: Bearer` header (RFC 6750 section
2.1, the default), a cookie, or a query parameter (section 2.3). A token in two of them, several Authorization
headers, two cookies or parameters of the name, or an organization id given twice, are refused: scopegate and the
upstream could each pick a different one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from scopegate.errors import BadRequest, InvalidToken, MissingOrganization, MissingToken
from scopegate.request import Headers, query_values
from scopegate.rules import BEARER_HEADER, OrganizationFrom, OrganizationSource, TokenFrom, TokenSource

# Identity headers are scopegate's to set; any the client sends are removed on every route, public ones included.
IDENTITY_HEADER_PREFIX = "x-auth-"

# RFC 6750 section 2.1 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Organization ids end up in an audience URN and an upstream header: visible ASCII only, bounded.
_ORGANIZATION_ID = re.compile(r"[!-~]{1,256}")


def bearer_token(headers: Headers) -> str:
    """The token of the single `Authorization: Bearer` header; raises MissingToken, BadRequest or InvalidToken."""
    return check_format(bearer_credentials(headers))


def bearer_credentials(headers: Headers) -> str:
    """What the single `Authorization: Bearer` header carries, its format not checked yet (`check_format`)."""
    values = headers.getall("Authorization")
    if not values:
        raise MissingToken("no_authorization_header")
    if len(values) > 1:
        raise BadRequest("several_authorization_headers", "send exactly one Authorization header")
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("not_bearer_scheme", "use the Bearer authentication scheme")
    return credentials.strip(" ")


def find_token(sources: tuple[TokenSource, ...], headers: Headers, query: str) -> tuple[str, TokenSource]:
    """The token the request carries in one of `sources`, and where; its format not checked yet (`check_format`).

    Raises MissingToken when there is none, BadRequest when it is in two places (RFC 6750 section 2: one method per
    request) or given twice in one.
    """
    if sources == BEARER_HEADER:  # the common case, with today's finer causes
        return bearer_credentials(headers), sources[0]
    found: list[tuple[str, TokenSource]] = []
    for source in sources:
        token = _token_in(source, headers, query)
        if token is not None:
            found.append((token, source))
    if not found:
        raise MissingToken("no_token", "a bearer access token is required")
    if len(found) > 1:
        places = " and ".join(_where(source) for _, source in found)
        raise BadRequest("several_tokens", f"send the token in one place only (found in the {places})")
    return found[0]


def _token_in(source: TokenSource, headers: Headers, query: str) -> str | None:
    if source.kind is TokenFrom.HEADER:
        if not headers.getall("Authorization"):
            return None
        try:
            return bearer_credentials(headers)
        except MissingToken:  # another scheme (Basic ...) carries no bearer token: look elsewhere
            return None
    if source.kind is TokenFrom.COOKIE:
        values = cookie_values(headers, source.name)
    else:
        values = query_values(query, source.name)
    if len(values) > 1:
        raise BadRequest("several_tokens", f"send the token in one place only (the {_where(source)} is given twice)")
    return values[0] if values else None


def _where(source: TokenSource) -> str:
    return "Authorization header" if source.kind is TokenFrom.HEADER else f"{source.kind.value} {source.name!r}"


def cookie_values(headers: Headers, name: str) -> list[str]:
    """Every value of cookie `name` in the request's Cookie headers (RFC 6265 section 5.4), quotes removed."""
    values = []
    for header in headers.getall("Cookie"):
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                values.append(value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value)
    return values


def check_format(token: str) -> str:
    """`token` when it is an RFC 6750 b64token, else InvalidToken."""
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("malformed", "the Authorization header does not carry a well-formed bearer token")
    return token


def is_identity_header(name: str) -> bool:
    """`X-Auth-*` in any case, and with `_` for `-`: CGI-style servers (WSGI, PHP) read `X_Auth_Sub` as `X-Auth-Sub`."""
    return name.lower().replace("_", "-").startswith(IDENTITY_HEADER_PREFIX)


def organization_id(
    source: OrganizationSource,
    params: Mapping[str, str],
    headers: Headers,
    query: str,
) -> str:
    """The organization id the request names (`query`: the raw query string); raises MissingOrganization."""
    if source.source is OrganizationFrom.PATH:
        values = [params[source.name]] if source.name in params else []
    elif source.source is OrganizationFrom.HEADER:
        # `X_Org` beside `X-Org` is "several": the app may read either one as the organization header.
        values = headers.getall_twins(source.name)
    else:
        values = query_values(query, source.name)
    where = f"{source.source.value} {source.name!r}"
    if not values:
        raise MissingOrganization("absent", f"the request carries no organization id ({where})")
    if len(values) > 1:
        raise MissingOrganization("several", f"the request carries several organization ids ({where})")
    # Not stripped: the id checked must be the very id the upstream reads from the same place.
    value = values[0]
    if not _ORGANIZATION_ID.fullmatch(value):
        raise MissingOrganization("invalid", f"the organization id is empty or not visible ASCII ({where})")
    return value
