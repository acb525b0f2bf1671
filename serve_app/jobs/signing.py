"""Signing of job callbacks: an HMAC-SHA256 over a timestamp and the body.

memeserve POSTs a job's callback with the header ``x-memeserve-signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. The timestamp is signed
with the body, so a receiver that refuses old timestamps also refuses replays of old
callbacks. A receiver checks it like this (any web framework; the body must be the raw
bytes received, before any JSON parsing)::

    import json
    import time
    from serve_app.jobs.signing import SIGNATURE_HEADER, verify

    def on_callback(headers, raw_body: bytes) -> int:
        if not verify(headers.get(SIGNATURE_HEADER), raw_body, [SECRET], time.time()):
            return 401  # not from memeserve, altered, or too old
        job = json.loads(raw_body)
        ...  # may arrive more than once: act on each job id once
        return 204

During a secret rotation the receiver passes both secrets (``[NEW, OLD]``) until memeserve
signs with the new one only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Sequence
from typing import Final

logger = logging.getLogger(__name__)

SIGNATURE_HEADER: Final[str] = "x-memeserve-signature"
"""The header carrying the signature (HTTP header names are case-insensitive)."""
SCHEME: Final[str] = "v1"
MAX_HEADER_CHARS: Final[int] = 2048
"""Longer headers are refused unread."""


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds).

    Returns ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)>``.
    Raises ``ValueError`` for an empty secret or a negative or non-integer timestamp.
    """
    if not isinstance(secret, str) or not secret:
        raise ValueError("the signing secret must be a non-empty str")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be an int >= 0 (unix seconds)")
    return f"t={timestamp},{SCHEME}={_mac(secret, bytes(body), timestamp)}"


def _parse(header: str) -> tuple[int, list[str]] | None:
    """The timestamp and ``v1`` signatures of a header, or ``None`` when malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return None
            timestamp = int(value)
        elif key == SCHEME:
            if len(value) != 64 or not value.isascii():
                return None
            signatures.append(value.lower())
        # Other keys (a later scheme) are ignored, so senders can add one.
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance_s: float = 300,
) -> bool:
    """Whether ``header`` is a valid signature of ``body`` by one of ``secrets``.

    ``False`` for a missing or malformed header, a timestamp more than ``tolerance_s``
    seconds away from ``now`` (either way: replays and skewed clocks), or no ``v1``
    signature matching any non-empty secret. Several ``v1`` entries are allowed. The
    signatures are compared in constant time.
    """
    if not header or len(header) > MAX_HEADER_CHARS:
        return False
    parsed = _parse(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if not math.isfinite(now) or abs(now - timestamp) > tolerance_s:
        return False
    matched = False
    for secret in secrets:
        if not secret:
            continue
        expected = _mac(secret, bytes(body), timestamp)
        for signature in signatures:
            # No early exit: the time taken does not tell which pair matched.
            matched |= hmac.compare_digest(expected, signature)
    return matched
