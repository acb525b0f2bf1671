"""Callback signatures: what verify accepts and what it refuses."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from serve_app.jobs.signing import SIGNATURE_HEADER, sign, verify

SECRET = "s3cret-一"
BODY = b'{"job":"abc","state":"done","items":[{"id":"m0","status":200}]}'
NOW = 1_700_000_000


def test_header_name() -> None:
    assert SIGNATURE_HEADER == "x-memeserve-signature"


def test_sign_is_the_documented_hmac() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


def test_valid_signature_verifies() -> None:
    header = sign(SECRET, BODY, NOW)
    assert verify(header, BODY, [SECRET], NOW)
    assert verify(header, BODY, (SECRET,), NOW + 299.5)
    assert verify(header.upper().replace("T=", "t=").replace("V1=", "v1="), BODY, [SECRET], NOW)
    assert verify(" " + header.replace(",", " , "), BODY, [SECRET], NOW)


def test_tampered_body_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(header, BODY.replace(b"done", b"dona"), [SECRET], NOW)
    assert not verify(header, BODY + b" ", [SECRET], NOW)
    assert not verify(header, b"", [SECRET], NOW)


def test_wrong_secret_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(header, BODY, ["other"], NOW)
    assert not verify(header, BODY, [], NOW)
    assert not verify(header, BODY, [""], NOW)


def test_tampered_timestamp_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(header.replace(f"t={NOW}", f"t={NOW + 1}"), BODY, [SECRET], NOW)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=1700000000",
        "v1=" + "0" * 64,
        "t=abc,v1=" + "0" * 64,
        "t=-5,v1=" + "0" * 64,
        "t=1700000000,v1=short",
        "t=1700000000,v1=" + "é" * 64,
        "t=1700000000,t=1700000000,v1=" + "0" * 64,
        "t=1700000000,v1",
        "t=1700000000;v1=" + "0" * 64,
        "t=1700000000,v1=" + "0" * 64 + "," * 3000,
    ],
)
def test_missing_or_malformed_headers_are_refused(header: str | None) -> None:
    assert not verify(header, BODY, [SECRET], NOW)


def test_malformed_variant_of_a_valid_header_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(header + ",junk", BODY, [SECRET], NOW)
    assert not verify(header.replace("t=", "t=\u0661"), BODY, [SECRET], NOW)  # Arabic-Indic 1


def test_replay_outside_the_window_is_refused() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(header, BODY, [SECRET], NOW + 301)
    assert not verify(header, BODY, [SECRET], NOW - 301)  # from the future
    assert verify(header, BODY, [SECRET], NOW + 301, tolerance_s=600)
    assert not verify(header, BODY, [SECRET], NOW + 5, tolerance_s=1)
    assert not verify(header, BODY, [SECRET], float("nan"))


def test_rotation_accepts_any_listed_secret() -> None:
    old, new = "old-secret", "new-secret"
    assert verify(sign(old, BODY, NOW), BODY, [new, old], NOW)
    assert verify(sign(new, BODY, NOW), BODY, [new, old], NOW)
    assert not verify(sign(old, BODY, NOW), BODY, [new], NOW)
    # A sender may carry both signatures while receivers move over.
    both = sign(new, BODY, NOW) + "," + sign(old, BODY, NOW).split(",")[1]
    assert verify(both, BODY, [old], NOW)
    assert verify(both, BODY, [new], NOW)
    assert verify(both + ",v2=future-scheme", BODY, [new], NOW)


@pytest.mark.parametrize(("secret", "timestamp"), [("", NOW), (SECRET, -1), (SECRET, True)])
def test_sign_refuses_bad_arguments(secret: str, timestamp: int) -> None:
    with pytest.raises(ValueError):
        sign(secret, BODY, timestamp)
