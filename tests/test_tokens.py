"""Token verification accepts exactly the tokens Logto issues and refuses every hostile variant with its own detail.

Keys are real (tests/keys), the key source is the real JWKS cache over an in-memory JWKS, and time is injected.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scopegate.config import ASYMMETRIC_ALGORITHMS
from scopegate.errors import InvalidToken, JwksFetchError, JwksUnavailable
from scopegate.jwks import JwksCache
from scopegate.tokens import Claims, TokenVerifier, claims_from_payload

from tokenlib import (
    API,
    EC_A,
    EC_B,
    EC_P256,
    ED,
    ISSUER,
    NOW,
    RSA,
    Json,
    TestKey,
    as_bytes,
    b64,
    flip_signature_byte,
    hmac_token,
    jwks,
    logto_claims,
    parts,
    raw_token,
    tamper_payload,
    with_signature,
)

LEEWAY = 60.0
# The published keys: Logto's ES384 key, an RSA key without `alg` (as Logto publishes them), EdDSA, ES256.
PUBLISHED = (EC_A.jwk(), RSA.jwk(with_alg=False), ED.jwk(), EC_P256.jwk())

# Every detail verification may raise; the log's `detail` field is drawn from this closed set.
DETAILS = frozenset(
    {
        "oversized",
        "not_a_jwt",
        "malformed",
        "duplicate_member",
        "alg_not_allowed",
        "bad_typ",
        "unsupported_crit",
        "unknown_kid",
        "alg_key_mismatch",
        "bad_signature",
        "wrong_issuer",
        "missing_exp",
        "bad_claim_type",
        "expired",
        "not_yet_valid",
    }
)


def make_verifier(
    published: Sequence[Json] = PUBLISHED,
    *,
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
    now: float = NOW,
    max_token_bytes: int = 16384,
) -> TokenVerifier:
    async def fetch() -> Mapping[str, Any]:
        return jwks(*published)

    keys = JwksCache(
        fetch=fetch,
        algorithms=algorithms,
        refresh_seconds=300,
        refetch_cooldown_seconds=5,
        clock=lambda: now,
    )
    return TokenVerifier(
        issuer=ISSUER,
        algorithms=algorithms,
        leeway_seconds=LEEWAY,
        keys=keys,
        clock=lambda: now,
        max_token_bytes=max_token_bytes,
    )


async def verify(token: str, **options: Any) -> Claims:
    return await make_verifier(**options).verify(token)


async def rejection(token: str, **options: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        await verify(token, **options)
    return caught.value


def header(key: TestKey = EC_A, **overrides: Any) -> dict[str, Any]:
    """The protected header pyjwt would write for `key`; `None` in overrides removes a member."""
    members = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **overrides}
    return {name: value for name, value in members.items() if value is not None}


def payload_text(**members: str) -> bytes:
    """A payload whose JSON text is written by hand: members given as raw JSON values."""
    claims = {**{name: json.dumps(value) for name, value in logto_claims().items()}, **members}
    return ("{" + ",".join(f'"{name}":{value}' for name, value in claims.items()) + "}").encode()


VALID = EC_A.token(logto_claims())


def non_canonical(token: str) -> str:
    """A part whose last character has a non-zero spare bit: it decodes to the same bytes, a second spelling."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    pieces = token.split(".")
    index = next(i for i, piece in enumerate(pieces) if len(piece) % 4 in (2, 3))  # such a part has spare bits
    last = alphabet.index(pieces[index][-1])
    assert last & 1 == 0  # canonical: the spare bits are zero
    pieces[index] = pieces[index][:-1] + alphabet[last | 1]
    assert parts(".".join(pieces)) == parts(token)
    return ".".join(pieces)


# --- valid tokens ---------------------------------------------------------------------------------------------


async def test_logto_es384_token_yields_its_claims() -> None:
    claims = await verify(VALID)
    assert claims.subject == "user-123"
    assert claims.client_id == "app-456"
    assert claims.audiences == (API,)
    assert claims.scope == "read:items write:items"
    assert claims.scopes == frozenset({"read:items", "write:items"})
    assert claims.organization_id is None
    assert claims.expires_at == NOW + 3600
    assert claims.raw["jti"] == "jti-0123456789"


async def test_raw_claims_are_read_only() -> None:
    claims = await verify(VALID)
    with pytest.raises(TypeError):
        claims.raw["scope"] = "admin"  # type: ignore[index]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(VALID, id="es384-logto-default"),
        pytest.param(RSA.token(logto_claims()), id="rs256-with-no-alg-rsa-jwk"),
        pytest.param(RSA.token(logto_claims(), alg="PS256"), id="ps256-with-no-alg-rsa-jwk"),
        pytest.param(ED.token(logto_claims()), id="eddsa"),
        pytest.param(EC_P256.token(logto_claims()), id="es256"),
        pytest.param(EC_A.token(logto_claims(), typ="JWT"), id="typ-JWT"),
        pytest.param(EC_A.token(logto_claims(), typ="application/at+jwt"), id="typ-application-at+jwt"),
        pytest.param(EC_A.token(logto_claims(), typ="AT+JWT"), id="typ-case-insensitive"),
        pytest.param(EC_A.sign_raw(header(typ=None), logto_claims()), id="typ-absent"),
        pytest.param(EC_A.token(logto_claims(exp=NOW - LEEWAY + 1)), id="expired-within-leeway"),
        pytest.param(EC_A.token(logto_claims(nbf=NOW + LEEWAY - 1)), id="nbf-within-leeway"),
        pytest.param(EC_A.token(logto_claims(iat=NOW + LEEWAY - 1)), id="iat-within-leeway"),
        pytest.param(EC_A.token(logto_claims(exp=NOW + 0.5)), id="exp-as-float"),
    ],
)
async def test_valid_tokens_are_accepted(token: str) -> None:
    claims = await verify(token)
    assert claims.subject == "user-123"


@pytest.mark.parametrize(
    ("aud", "audiences"),
    [
        pytest.param(API, (API,), id="string"),
        pytest.param([API, "urn:logto:organization:org-1"], (API, "urn:logto:organization:org-1"), id="list"),
        pytest.param([], (), id="empty-list"),
        pytest.param(None, (), id="absent"),
    ],
)
async def test_audience_is_a_string_or_a_list(aud: Any, audiences: tuple[str, ...]) -> None:
    claims = await verify(EC_A.token(logto_claims(aud=aud)))
    assert claims.audiences == audiences


@pytest.mark.parametrize(
    ("scope", "scopes"),
    [
        pytest.param(None, frozenset(), id="absent"),
        pytest.param("", frozenset(), id="empty"),
        pytest.param("read:items", frozenset({"read:items"}), id="one"),
        pytest.param(" read:items  write:items ", frozenset({"read:items", "write:items"}), id="extra-spaces"),
    ],
)
async def test_scope_string_is_split_on_spaces(scope: str | None, scopes: frozenset[str]) -> None:
    claims = await verify(EC_A.token(logto_claims(scope=scope)))
    assert claims.scopes == scopes
    assert claims.scope == (scope or "")


async def test_organization_token_carries_its_organization_id() -> None:
    claims = await verify(EC_A.token(logto_claims(organization_id="org-1")))
    assert claims.organization_id == "org-1"


async def test_token_without_kid_uses_the_only_key_for_its_alg() -> None:
    claims = await verify(EC_A.sign_raw(header(kid=None), logto_claims()))
    assert claims.subject == "user-123"


# --- hostile tokens -------------------------------------------------------------------------------------------

CLAIMS = logto_claims()


def standard_alphabet(token: str) -> str:
    """The token in the standard base64 alphabet (`+`, `/` for `-`, `_`), with at least one of those in it: a signature
    without `-` or `_` (about one in sixty) would otherwise leave the token unchanged, and valid."""
    translated = token.translate(str.maketrans("-_", "+/"))
    return translated if translated != token else translated[:-1] + "+"


ATTACKS = [
    # algorithm confusion
    pytest.param(raw_token(header(alg="none"), CLAIMS), "alg_not_allowed", id="alg-none"),
    pytest.param(raw_token(header(alg="None"), CLAIMS), "alg_not_allowed", id="alg-None-capitalized"),
    pytest.param(raw_token(header(alg=None), CLAIMS), "alg_not_allowed", id="alg-missing"),
    pytest.param(raw_token(header(alg=["ES384"]), CLAIMS), "alg_not_allowed", id="alg-not-a-string"),
    pytest.param(
        hmac_token(EC_A.public_pem(), header(alg="HS256"), CLAIMS), "alg_not_allowed", id="hs256-keyed-with-public-pem"
    ),
    pytest.param(
        hmac_token(json.dumps(EC_A.jwk()).encode(), header(alg="HS256"), CLAIMS),
        "alg_not_allowed",
        id="hs256-keyed-with-jwk-json",
    ),
    pytest.param(
        hmac_token(RSA.public_pem(), header(RSA, alg="HS256"), CLAIMS), "alg_not_allowed", id="hs256-keyed-with-rsa-pem"
    ),
    pytest.param(
        EC_P256.sign_raw(header(EC_A, alg="ES256"), CLAIMS), "alg_key_mismatch", id="es256-header-on-p384-key"
    ),
    pytest.param(RSA.sign_raw(header(EC_A, alg="RS256"), CLAIMS), "alg_key_mismatch", id="rs256-header-with-ec-key"),
    pytest.param(ED.sign_raw(header(RSA, alg="EdDSA"), CLAIMS), "alg_key_mismatch", id="eddsa-header-with-rsa-key"),
    # signature
    pytest.param(flip_signature_byte(VALID), "bad_signature", id="flipped-signature-byte"),
    pytest.param(tamper_payload(VALID), "bad_signature", id="tampered-payload"),
    pytest.param(EC_B.sign_raw(header(EC_A), CLAIMS), "bad_signature", id="signed-by-unpublished-key-under-known-kid"),
    pytest.param(with_signature(VALID, b""), "bad_signature", id="empty-signature"),
    pytest.param(with_signature(VALID, b"\x00" * 96), "bad_signature", id="zero-signature"),
    pytest.param(
        EC_A.sign_raw(header(), logto_claims(exp=NOW - 3600)).rsplit(".", 1)[0] + "." + b64(b"x" * 96),
        "bad_signature",
        id="bad-signature-is-reported-before-expiry",
    ),
    pytest.param(EC_A.token(CLAIMS, kid="no-such-kid"), "unknown_kid", id="unknown-kid"),
    pytest.param(EC_A.token(CLAIMS, kid=""), "unknown_kid", id="empty-kid"),
    # header
    pytest.param(EC_A.token(CLAIMS, typ="dpop+jwt"), "bad_typ", id="typ-dpop"),
    pytest.param(EC_A.token(CLAIMS, typ="JWS"), "bad_typ", id="typ-JWS"),
    pytest.param(EC_A.sign_raw(header(typ=7), CLAIMS), "bad_typ", id="typ-not-a-string"),
    pytest.param(EC_A.sign_raw(header(crit=["exp"], exp=1), CLAIMS), "unsupported_crit", id="crit-unknown-extension"),
    pytest.param(EC_A.sign_raw(header(crit=[]), CLAIMS), "unsupported_crit", id="crit-empty"),
    pytest.param(EC_A.sign_raw(header(kid=7), CLAIMS), "malformed", id="kid-not-a-string"),
    pytest.param(EC_A.sign_raw(header() | {"kid": None}, CLAIMS), "malformed", id="kid-null"),
    pytest.param(EC_A.sign_raw(header() | {"typ": None}, CLAIMS), "bad_typ", id="typ-null"),
    # issuer and time
    pytest.param(EC_A.sign_raw(header(), logto_claims(iss=ISSUER + "/")), "wrong_issuer", id="issuer-trailing-slash"),
    pytest.param(
        EC_A.sign_raw(header(), logto_claims(iss="https://evil.example/oidc")), "wrong_issuer", id="issuer-other"
    ),
    pytest.param(EC_A.sign_raw(header(), logto_claims(iss=None)), "wrong_issuer", id="issuer-missing"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(iss=[ISSUER])), "wrong_issuer", id="issuer-as-list"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(exp=NOW - LEEWAY - 1)), "expired", id="expired-beyond-leeway"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(nbf=NOW + LEEWAY + 1)), "not_yet_valid", id="nbf-in-the-future"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(iat=NOW + LEEWAY + 1)), "not_yet_valid", id="iat-in-the-future"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(exp=None)), "missing_exp", id="missing-exp"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(exp=str(int(NOW) + 3600))), "bad_claim_type", id="exp-as-string"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(exp=True)), "bad_claim_type", id="exp-as-bool"),
    pytest.param(EC_A.sign_raw(header(), payload_text(exp="null")), "bad_claim_type", id="exp-null"),
    pytest.param(EC_A.sign_raw(header(), payload_text(exp="1e400")), "bad_claim_type", id="exp-overflows-to-infinity"),
    pytest.param(EC_A.sign_raw(header(), payload_text(exp="1" + "0" * 400)), "bad_claim_type", id="exp-huge-integer"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(nbf="soon")), "bad_claim_type", id="nbf-as-string"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(iat=False)), "bad_claim_type", id="iat-as-bool"),
    # claim types
    pytest.param(EC_A.sign_raw(header(), logto_claims(scope=["read:items"])), "bad_claim_type", id="scope-as-array"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(aud=42)), "bad_claim_type", id="aud-as-number"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(aud=[API, 42])), "bad_claim_type", id="aud-list-with-number"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(sub=123)), "bad_claim_type", id="sub-as-number"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(client_id=["a"])), "bad_claim_type", id="client-id-as-list"),
    pytest.param(
        EC_A.sign_raw(header(), payload_text(organization_id="null")), "bad_claim_type", id="organization-id-null"
    ),
    # syntax
    pytest.param("garbage", "not_a_jwt", id="garbage-no-dots"),
    pytest.param("garbage.garbage.garbage", "malformed", id="garbage-three-parts"),
    pytest.param("!!!.???.###", "malformed", id="not-base64url"),
    pytest.param(".".join(VALID.split(".")[:2]), "malformed", id="two-parts"),
    pytest.param(VALID + ".", "malformed", id="four-parts-empty-last"),
    pytest.param(VALID + "." + b64(b"x"), "malformed", id="four-parts"),
    pytest.param("a.b.c.d.e", "malformed", id="five-parts-jwe-shaped"),
    pytest.param("..", "malformed", id="three-empty-parts"),
    pytest.param(VALID.replace(".", "=.", 1), "malformed", id="padding-on-header"),
    pytest.param(VALID + "==", "malformed", id="padding-on-signature"),
    pytest.param(standard_alphabet(VALID), "malformed", id="standard-base64-alphabet"),
    pytest.param(non_canonical(VALID), "malformed", id="non-canonical-base64"),
    pytest.param(VALID + "A", "malformed", id="length-1-mod-4"),
    pytest.param(EC_A.sign_raw(header(), logto_claims(padding="x" * 20000)), "oversized", id="oversized"),
    pytest.param(raw_token(b"[1,2]", CLAIMS), "malformed", id="header-json-array"),
    pytest.param(EC_A.sign_raw(header(), b'"claims"'), "malformed", id="payload-json-string"),
    pytest.param(raw_token(b"\xef\xbb\xbf" + as_bytes(header()), CLAIMS), "malformed", id="header-with-bom"),
    pytest.param(EC_A.sign_raw(header(), b"\xff\xfe{}"), "malformed", id="payload-not-utf8"),
    pytest.param(EC_A.sign_raw(header(), payload_text(exp="NaN")), "malformed", id="payload-nan"),
    pytest.param(EC_A.sign_raw(header(), payload_text(nbf="-Infinity")), "malformed", id="payload-infinity"),
    pytest.param(EC_A.sign_raw(header(), payload_text(sub='"\\ud800"')), "malformed", id="lone-surrogate"),
    pytest.param(EC_A.sign_raw(header(), b'{"a":' * 1500 + b"1" + b"}" * 1500), "malformed", id="deeply-nested"),
    pytest.param(
        EC_A.sign_raw(b'{"alg":"ES384","kid":"logto-ec-a","alg":"ES384"}', CLAIMS),
        "duplicate_member",
        id="duplicate-member-in-header",
    ),
    pytest.param(
        EC_A.sign_raw(header(), payload_text(scope='"read:items","scope":"admin"')),
        "duplicate_member",
        id="duplicate-member-in-payload",
    ),
    pytest.param(
        EC_A.sign_raw(header(), payload_text(ext='{"role":"user","role":"admin"}')),
        "duplicate_member",
        id="duplicate-member-nested",
    ),
]


@pytest.mark.parametrize(("token", "detail"), ATTACKS)
async def test_hostile_tokens_are_refused_with_their_detail(token: str, detail: str) -> None:
    """Each refusal has its own detail, and a description safe to quote that echoes nothing from the token."""
    refused = await rejection(token)
    assert refused.detail == detail
    assert refused.status == 401
    description = refused.description
    assert '"' not in description
    assert "\\" not in description
    assert all(part not in description for part in token.split(".") if len(part) > 3)
    assert "evil" not in description


def test_every_detail_in_the_table_is_in_the_closed_set() -> None:
    assert {param.values[1] for param in ATTACKS} == DETAILS


async def test_opaque_token_description_points_to_rfc_8707() -> None:
    refused = await rejection("Zm9vYmFyYmF6cXV4cXV1eA")
    assert refused.detail == "not_a_jwt"
    assert "JWT" in refused.description
    assert "resource" in refused.description
    assert "RFC 8707" in refused.description


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(RSA.token(logto_claims()), id="rs256"),
        pytest.param(ED.token(logto_claims()), id="eddsa"),
        pytest.param(EC_P256.token(logto_claims()), id="es256"),
    ],
)
async def test_alg_outside_the_allow_list_is_refused(token: str) -> None:
    refused = await rejection(token, algorithms=frozenset({"ES384"}))
    assert refused.detail == "alg_not_allowed"


async def test_several_keys_for_the_alg_and_no_kid_is_ambiguous() -> None:
    refused = await rejection(EC_A.sign_raw(header(kid=None), CLAIMS), published=(EC_A.jwk(), EC_B.jwk()))
    assert refused.detail == "unknown_kid"


async def test_verification_fails_closed_without_signing_keys() -> None:
    async def down() -> Mapping[str, Any]:
        raise JwksFetchError("GET https://tenant.logto.app/oidc/jwks: HTTP 503")

    keys = JwksCache(fetch=down, algorithms=ASYMMETRIC_ALGORITHMS, refresh_seconds=300, refetch_cooldown_seconds=5)
    verifier = TokenVerifier(issuer=ISSUER, algorithms=ASYMMETRIC_ALGORITHMS, leeway_seconds=LEEWAY, keys=keys)
    with pytest.raises(JwksUnavailable) as caught:
        await verifier.verify(VALID)
    assert caught.value.detail == "no_signing_keys"
    assert caught.value.status == 503


async def test_syntax_is_refused_before_any_key_lookup() -> None:
    class NoKeys:
        lookups = 0

        async def key_for(self, kid: str | None, alg: str) -> Any:
            self.lookups += 1
            raise AssertionError("no key lookup expected")

    keys = NoKeys()
    verifier = TokenVerifier(issuer=ISSUER, algorithms=ASYMMETRIC_ALGORITHMS, leeway_seconds=LEEWAY, keys=keys)
    for token in ("opaque", raw_token(header(alg="none"), CLAIMS), EC_A.sign_raw(header(crit=["b64"]), CLAIMS)):
        with pytest.raises(InvalidToken):
            await verifier.verify(token)
    assert keys.lookups == 0


@pytest.mark.parametrize("algorithms", [frozenset({"HS256"}), frozenset({"ES384", "none"})])
def test_symmetric_or_none_algorithms_cannot_be_configured(algorithms: frozenset[str]) -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        make_verifier(algorithms=algorithms)


async def test_max_token_bytes_is_configurable() -> None:
    assert (await verify(VALID, max_token_bytes=len(VALID))).subject == "user-123"
    assert (await rejection(VALID, max_token_bytes=len(VALID) - 1)).detail == "oversized"


# --- claims_from_payload --------------------------------------------------------------------------------------


def test_claims_from_payload_reads_types_only() -> None:
    claims = claims_from_payload(logto_claims(iss="https://anyone.example", exp=1, organization_id="org-1"))
    assert claims.expires_at == 1
    assert claims.organization_id == "org-1"
    assert claims.scopes == frozenset({"read:items", "write:items"})
    assert claims.raw["iss"] == "https://anyone.example"


def test_claims_from_payload_without_exp_never_expires() -> None:
    assert claims_from_payload({"aud": API}).expires_at == math.inf


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"scope": ["read"]}, id="scope-array"),
        pytest.param({"aud": 1}, id="aud-number"),
        pytest.param({"sub": None}, id="sub-null"),
        pytest.param({"exp": "1"}, id="exp-string"),
        pytest.param({"nbf": True}, id="nbf-bool"),
        pytest.param({"organization_id": 5}, id="organization-id-number"),
    ],
)
def test_claims_from_payload_refuses_bad_types(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken) as caught:
        claims_from_payload(payload)
    assert caught.value.detail == "bad_claim_type"


# --- hostile input at large -----------------------------------------------------------------------------------

_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"


def test_mutated_tokens_only_ever_fail_with_invalid_token() -> None:
    """Any string at all: the original verifies, everything else is an InvalidToken from the closed set."""
    loop = asyncio.new_event_loop()
    verifier = make_verifier()
    mutated = st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from(_TOKEN_CHARS)).map(
        lambda edit: VALID[: edit[0]] + edit[1] + VALID[edit[0] + 1 :]
    )
    spliced = st.lists(st.sampled_from([*VALID.split("."), "", "e30", "bnVsbA"]), max_size=5).map(".".join)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(mutated, spliced, st.text(_TOKEN_CHARS, max_size=200)))
    def check(token: str) -> None:
        if token == VALID:
            assert loop.run_until_complete(verifier.verify(token)).subject == "user-123"
            return
        with pytest.raises(InvalidToken) as caught:
            loop.run_until_complete(verifier.verify(token))
        assert caught.value.detail in DETAILS

    try:
        check()
    finally:
        loop.close()
