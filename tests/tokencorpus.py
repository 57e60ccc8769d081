"""A corpus of access tokens for a differential check: Logto-shaped tokens that must be accepted and hostile variants
that must be refused, built against the wall clock (a peer verifier such as Envoy cannot be given a fake one).

Each case says what scopegate must answer. Which cases a peer answers differently, and why, is the differential
test's business, not the corpus's. The published keys are `PUBLISHED`: serve exactly that JWKS to every verifier.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt

from scopegate.tokens import DEFAULT_MAX_TOKEN_BYTES

from tokenlib import (
    API,
    EC_A,
    EC_B,
    EC_P256,
    ED,
    ISSUER,
    RSA,
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

# Logto's ES384 key, an RSA key without `alg` (as Logto publishes them), EdDSA and ES256. EC_B is not published.
PUBLISHED = jwks(EC_A.jwk(), RSA.jwk(with_alg=False), ED.jwk(), EC_P256.jwk())
LEEWAY = 60  # seconds of clock skew both verifiers allow for exp and nbf
MARGIN = 30  # distance from every time boundary, so a slow machine cannot move a case across one


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    token: str
    valid: bool  # scopegate must allow it (True) or refuse it (False)


def header(key: TestKey = EC_A, **overrides: Any) -> dict[str, Any]:
    """The protected header pyjwt would write for `key`; `None` in overrides removes a member."""
    members = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **overrides}
    return {name: value for name, value in members.items() if value is not None}


def payload_text(now: float, **members: str) -> bytes:
    """A payload whose JSON text is written by hand: members given as raw JSON values (duplicates, NaN ...)."""
    claims = {**{name: json.dumps(value) for name, value in logto_claims(now).items()}, **members}
    return ("{" + ",".join(f'"{name}":{value}' for name, value in claims.items()) + "}").encode()


def non_canonical(token: str) -> str:
    """The signature's last character with a non-zero spare bit: it decodes to the same bytes, a second spelling.
    Only the signature is touched, so the signing input is unchanged; its length must leave spare bits (ES256)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    head, body, signature = token.split(".")
    assert len(signature) % 4 in (2, 3)
    last = alphabet.index(signature[-1])
    return f"{head}.{body}.{signature[:-1]}{alphabet[last | 1]}"


def standard_alphabet(token: str) -> str:
    """The signature in the standard base64 alphabet (`+`, `/` for `-`, `_`), with at least one of those in it."""
    head, body, signature = token.split(".")
    translated = signature.translate(str.maketrans("-_", "+/"))
    translated = translated if translated != signature else translated[:-1] + "+"
    return f"{head}.{body}.{translated}"


def padded_signature(token: str) -> str:
    """The signature with the `=` padding plain base64 would add; its length must need some (ES256, RS256)."""
    signature = token.rsplit(".", 1)[1]
    assert len(signature) % 4, "this signature needs no padding"
    return token + "=" * (-len(signature) % 4)


def signed_padded(key: TestKey, head: bytes, payload: bytes, index: int) -> str:
    """A token whose header (`index` 0) or payload (1) carries `=` padding, signed over exactly that text: a verifier
    that decodes padded base64url and checks the signature over the text it received would accept it. Trailing JSON
    whitespace makes the part need padding."""
    while True:
        texts = [b64(head), b64(payload)]
        if len(texts[index]) % 4:
            break
        head, payload = (head + b" ", payload) if index == 0 else (head, payload + b" ")
    texts[index] += "=" * (-len(texts[index]) % 4)
    signing_input = ".".join(texts)
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64(signature)}"


def corpus(now: float) -> list[Case]:
    """Every case, valid ones first; token ids are unique."""
    cases = [*_valid(now), *_refused(now)]
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case id"
    return cases


def _valid(now: float) -> Iterator[Case]:
    claims = logto_claims(now)
    for name, token in {
        "es384-logto-default": EC_A.token(claims),
        "rs256-rsa-jwk-without-alg": RSA.token(claims),
        "rs512-rsa-jwk-without-alg": RSA.token(claims, alg="RS512"),
        "ps256-rsa-jwk-without-alg": RSA.token(claims, alg="PS256"),
        "es256": EC_P256.token(claims),
        "eddsa": ED.token(claims),
        "typ-JWT": EC_A.token(claims, typ="JWT"),
        "typ-application-at+jwt": EC_A.token(claims, typ="application/at+jwt"),
        "typ-absent": EC_A.sign_raw(header(typ=None), claims),
        "kid-absent": EC_A.sign_raw(header(kid=None), claims),
        "aud-list-with-the-api": EC_A.token(logto_claims(now, aud=["https://other.example.com", API])),
        "exp-within-leeway": EC_A.token(logto_claims(now, exp=int(now) - LEEWAY + MARGIN)),
        "nbf-within-leeway": EC_A.token(logto_claims(now, nbf=int(now) + LEEWAY - MARGIN)),
        "nbf-in-the-past": EC_A.token(logto_claims(now, nbf=int(now) - 3600)),
        "exp-as-float": EC_A.token(logto_claims(now, exp=now + 3600.5)),
        "no-scope": EC_A.token(logto_claims(now, scope=None)),
        # RFC 9068 section 2.2 makes these REQUIRED; scopegate requires `exp` only (README: Decisions) and reads `sub`
        # and `client_id` only to pass them on.
        "missing-sub": EC_A.token(logto_claims(now, sub=None)),
        "missing-client-id": EC_A.token(logto_claims(now, client_id=None)),
        "missing-iat": EC_A.token(logto_claims(now, iat=None)),
        "missing-jti": EC_A.token(logto_claims(now, jti=None)),
    }.items():
        yield Case(name, token, valid=True)


def _refused(now: float) -> Iterator[Case]:
    tables = (_time_and_issuer, _audience, _signature_and_keys, _algorithm, _header, _claim_types, _syntax, _json)
    for table in tables:
        for name, token in table(now).items():
            yield Case(name, token, valid=False)


def _time_and_issuer(now: float) -> dict[str, str]:
    def signed(**overrides: Any) -> str:
        return EC_A.sign_raw(header(), logto_claims(now, **overrides))

    return {
        "expired-an-hour-ago": signed(exp=int(now) - 3600),
        "expired-beyond-leeway": signed(exp=int(now) - LEEWAY - MARGIN),
        "nbf-beyond-leeway": signed(nbf=int(now) + LEEWAY + MARGIN),
        "nbf-in-an-hour": signed(nbf=int(now) + 3600),
        "iat-beyond-leeway": signed(iat=int(now) + LEEWAY + MARGIN),
        "missing-exp": signed(exp=None),
        "exp-negative": signed(exp=-1),
        "issuer-other": signed(iss="https://evil.example/oidc"),
        "issuer-trailing-slash": signed(iss=ISSUER + "/"),
        "issuer-missing": signed(iss=None),
        "issuer-as-list": signed(iss=[ISSUER]),
    }


def _audience(now: float) -> dict[str, str]:
    def signed(aud: Any) -> str:
        return EC_A.sign_raw(header(), logto_claims(now, aud=aud))

    return {
        "aud-other": signed("https://other.example.com"),
        "aud-missing": signed(None),
        "aud-empty-list": signed([]),
        "aud-list-without-the-api": signed(["https://other.example.com", "urn:logto:organization:org-1"]),
        "aud-trailing-slash": signed(API + "/"),
        "aud-without-scheme": signed(API.removeprefix("https://")),
        "aud-http-scheme": signed(API.replace("https://", "http://")),
        "aud-upper-case": signed(API.upper()),
        "aud-as-number": signed(42),
    }


def _signature_and_keys(now: float) -> dict[str, str]:
    claims = logto_claims(now)
    valid = EC_A.token(claims)
    return {
        "flipped-signature-byte": flip_signature_byte(valid),
        "tampered-payload": tamper_payload(valid),
        "unpublished-key-under-known-kid": EC_B.sign_raw(header(EC_A), claims),
        "unpublished-key-without-kid": EC_B.sign_raw(header(EC_A, kid=None), claims),
        "embedded-jwk-header": EC_B.sign_raw(header(EC_B, jwk=EC_B.jwk()), claims),
        "empty-signature": with_signature(valid, b""),
        "zero-signature": with_signature(valid, b"\x00" * 96),
        "rsa-signature-truncated": with_signature(RSA.token(claims), parts(RSA.token(claims))[2][:-1]),
        "unknown-kid": EC_A.token(claims, kid="no-such-kid"),
        "empty-kid": EC_A.token(claims, kid=""),
        "kid-not-a-string": EC_A.sign_raw(header(kid=7), claims),
        "expired-and-bad-signature": flip_signature_byte(EC_A.token(logto_claims(now, exp=int(now) - 3600))),
    }


def _algorithm(now: float) -> dict[str, str]:
    claims = logto_claims(now)
    return {
        "alg-none": raw_token(header(alg="none", kid=None), claims),
        "alg-none-with-kid": raw_token(header(alg="none"), claims),
        "alg-None-capitalized": raw_token(header(alg="None"), claims),
        "alg-missing": EC_A.sign_raw(header(alg=None), claims),
        "alg-unknown": EC_A.sign_raw(header(alg="ES384K"), claims),
        "alg-not-a-string": EC_A.sign_raw(header(alg=["ES384"]), claims),
        "hs256-keyed-with-ec-public-pem": hmac_token(EC_A.public_pem(), header(alg="HS256"), claims),
        "hs256-keyed-with-rsa-public-pem": hmac_token(RSA.public_pem(), header(RSA, alg="HS256"), claims),
        "hs256-keyed-with-jwk-json": hmac_token(json.dumps(EC_A.jwk()).encode(), header(alg="HS256"), claims),
        "hs256-without-kid": hmac_token(RSA.public_pem(), header(alg="HS256", kid=None), claims),
        "rs256-header-with-ec-kid": RSA.sign_raw(header(EC_A, alg="RS256"), claims),
        "es384-header-with-rsa-kid": EC_A.sign_raw(header(RSA, alg="ES384"), claims),
        "es256-header-on-p384-key": EC_P256.sign_raw(header(EC_A, alg="ES256"), claims),
        "es384-header-on-p256-key": EC_A.sign_raw(header(EC_P256, alg="ES384"), claims),
        "eddsa-header-with-rsa-kid": ED.sign_raw(header(RSA, alg="EdDSA"), claims),
        "es512-header-with-ec-kid": EC_A.sign_raw(header(alg="ES512"), claims, alg="ES384"),
    }


def _header(now: float) -> dict[str, str]:
    claims = logto_claims(now)
    return {
        "typ-dpop+jwt": EC_A.token(claims, typ="dpop+jwt"),
        "typ-JWS": EC_A.token(claims, typ="JWS"),
        "typ-application-jwt": EC_A.token(claims, typ="application/jwt"),
        "typ-not-a-string": EC_A.sign_raw(header(typ=7), claims),
        "typ-null": EC_A.sign_raw(header() | {"typ": None}, claims),
        "crit-unknown-extension": EC_A.sign_raw(header(crit=["exp"], exp=1), claims),
        "crit-empty": EC_A.sign_raw(header(crit=[]), claims),
        "crit-b64-false": EC_A.sign_raw(header(crit=["b64"], b64=False), claims),
    }


def _claim_types(now: float) -> dict[str, str]:
    def signed(payload: bytes | dict[str, Any]) -> str:
        return EC_A.sign_raw(header(), payload)

    return {
        "exp-as-string": signed(logto_claims(now, exp=str(int(now) + 3600))),
        "exp-as-bool": signed(logto_claims(now, exp=True)),
        "exp-null": signed(payload_text(now, exp="null")),
        "exp-overflows-to-infinity": signed(payload_text(now, exp="1e400")),
        "exp-huge-integer": signed(payload_text(now, exp="1" + "0" * 400)),
        "nbf-as-string": signed(logto_claims(now, nbf="soon")),
        "iat-as-string": signed(logto_claims(now, iat=str(int(now)))),
        "scope-as-array": signed(logto_claims(now, scope=["read:items"])),
        "sub-as-number": signed(logto_claims(now, sub=123)),
        "client-id-as-list": signed(logto_claims(now, client_id=["a"])),
        "jti-as-number": signed(logto_claims(now, jti=7)),
        "aud-list-with-number": signed(logto_claims(now, aud=[API, 42])),
    }


def _syntax(now: float) -> dict[str, str]:
    claims = logto_claims(now)
    valid = EC_A.token(claims)
    head, body, signature = valid.split(".")
    return {
        "empty-token": "",
        "garbage-no-dots": "garbage",
        "garbage-three-parts": "garbage.garbage.garbage",
        "not-base64url": "!!!.???.###",
        "three-empty-parts": "..",
        "two-parts": f"{head}.{body}",
        "four-parts-empty-last": valid + ".",
        "four-parts": valid + "." + b64(b"x"),
        "leading-dot": "." + valid,
        "empty-part-inside": f"{head}..{body}.{signature}",
        "five-parts-jwe-shaped": f"{head}.{b64(b'k')}.{b64(b'iv')}.{body}.{signature}",
        "padding-on-signature": padded_signature(EC_P256.token(claims)),
        "padding-on-rsa-signature": padded_signature(RSA.token(claims)),
        "padding-on-header": signed_padded(EC_A, as_bytes(header()), as_bytes(claims), 0),
        "padding-on-payload": signed_padded(EC_A, as_bytes(header()), as_bytes(claims), 1),
        "standard-base64-alphabet-signature": standard_alphabet(RSA.token(claims)),
        "non-canonical-base64-signature": non_canonical(EC_P256.token(claims)),
        "length-1-mod-4": valid + "A",
        "space-inside": f"{head}.{body} .{signature}",
        "trailing-word": valid + " x",
        "trailing-comma": valid + ",",
        "two-tokens": f"{valid} {valid}",
        "oversized": EC_A.sign_raw(header(), logto_claims(now, padding="x" * DEFAULT_MAX_TOKEN_BYTES)),
    }


def _json(now: float) -> dict[str, str]:
    def signed(head: bytes | dict[str, Any], payload: bytes | dict[str, Any]) -> str:
        return EC_A.sign_raw(head, payload)

    claims = logto_claims(now)
    return {
        "header-not-json": signed(b"{alg:ES384}", claims),
        "header-json-array": signed(b'["ES384"]', claims),
        "header-with-bom": signed(b"\xef\xbb\xbf" + as_bytes(header()), claims),
        "header-trailing-garbage": signed(as_bytes(header()) + b"x", claims),
        "payload-not-json": signed(header(), b"claims"),
        "payload-json-string": signed(header(), b'"claims"'),
        "payload-not-utf8": signed(header(), b"\xff\xfe{}"),
        "payload-truncated": signed(header(), as_bytes(claims)[:-1]),
        "payload-nan": signed(header(), payload_text(now, exp="NaN")),
        "payload-infinity": signed(header(), payload_text(now, nbf="-Infinity")),
        "payload-lone-surrogate": signed(header(), payload_text(now, sub='"\\ud800"')),
        "payload-deeply-nested": signed(header(), payload_text(now, ext='{"a":' * 1500 + "1" + "}" * 1500)),
        "duplicate-alg-in-header": signed(f'{{"alg":"ES384","kid":"{EC_A.kid}","alg":"ES384"}}'.encode(), claims),
        "duplicate-kid-in-header": signed(f'{{"alg":"ES384","kid":"nope","kid":"{EC_A.kid}"}}'.encode(), claims),
        "duplicate-scope-in-payload": signed(header(), payload_text(now, scope='"read:items","scope":"admin"')),
        "duplicate-iss-in-payload": signed(header(), payload_text(now, iss=f'"https://evil.example","iss":"{ISSUER}"')),
        "duplicate-member-nested": signed(header(), payload_text(now, ext='{"role":"user","role":"admin"}')),
    }
