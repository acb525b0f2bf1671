"""API keys and per-key rate limits for the web tiers (framework-free).

Keys are configured as SHA-256 hex digests (``security.api_keys``) so that no plaintext
secret sits in a config file, and/or as comma-separated plaintext keys in an environment
variable (``security.api_keys_env``) that are hashed as they are loaded. A presented key
is hashed and compared with *every* configured digest via :func:`hmac.compare_digest`,
without stopping at the first match, so the time taken does not reveal which key (or how
much of one) matched. Each key has its own token bucket; a refusal says how many seconds
until the next token, for ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from serve_app.config.models import SecurityArgs

Clock = Callable[[], float]


def hash_key(plaintext: str) -> str:
    """The lowercase SHA-256 hex digest of an API key, as configured in ``api_keys``."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its name (for logs), digest and rate limit."""

    name: str
    sha256: str
    rate_per_s: float | None = None
    burst: int = 10
    scopes: frozenset[str] = frozenset({"analyze"})


class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; each request takes one token."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> float:
        """Take a token: 0.0 when granted, else the seconds until the next token."""
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


@dataclass
class RateLimiter:
    """A token bucket per key name; keys without a rate are never limited."""

    clock: Clock = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, key: ApiKey) -> float:
        """0.0 when ``key`` may make a request now, else the seconds to wait."""
        if key.rate_per_s is None:
            return 0.0
        bucket = self._buckets.get(key.name)
        if bucket is None:
            bucket = self._buckets[key.name] = TokenBucket(key.rate_per_s, key.burst, self.clock)
        return bucket.take()


class KeyRing:
    """The accepted keys; :meth:`lookup` compares a presented key with all of them."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def lookup(self, presented: str) -> ApiKey | None:
        """The key whose digest matches ``presented``, or None.

        Every configured digest is compared (constant time per comparison); the loop does
        not stop at a match, so timing does not depend on which key matched.
        """
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.sha256.encode("ascii")) and found is None:
                found = key
        return found


def load_keys(args: SecurityArgs, environ: Mapping[str, str] | None = None) -> KeyRing:
    """The configured keys plus those in ``args.api_keys_env`` (named ``env-1``, …).

    Raises ``ValueError`` when ``require_api_key`` is set and no key could be loaded (the
    environment variable is unset or empty), so a replica never starts open by accident.
    """
    environ = os.environ if environ is None else environ
    keys = [
        ApiKey(k.name, k.sha256, k.rate_per_s, k.burst, frozenset(k.scopes)) for k in args.api_keys
    ]
    if args.api_keys_env:
        raw = environ.get(args.api_keys_env, "")
        plain = [part.strip() for part in raw.split(",") if part.strip()]
        keys.extend(
            ApiKey(f"env-{index}", hash_key(text), args.env_rate_per_s, args.env_burst)
            for index, text in enumerate(plain, start=1)
        )
    if args.admin_keys_env:
        raw = environ.get(args.admin_keys_env, "")
        plain = [part.strip() for part in raw.split(",") if part.strip()]
        keys.extend(
            ApiKey(f"admin-{index}", hash_key(text), scopes=frozenset({"analyze", "admin"}))
            for index, text in enumerate(plain, start=1)
        )
    if args.require_api_key and not keys:
        raise ValueError(
            "security.require_api_key is true but no API key was loaded "
            f"(api_keys is empty and ${args.api_keys_env or '<api_keys_env unset>'} is empty)"
        )
    return KeyRing(keys)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class Verdict:
    """Outcomes of :meth:`Guard.check` other than "allowed"."""

    MISSING = "missing"
    UNKNOWN = "unknown"
    LIMITED = "limited"
    NOT_ADMIN = "not_admin"


ADMIN_PREFIXES = ("/v1/lists", "/v1/reviews", "/v1/decisions")
"""Paths (and everything under them) that need a key with the admin scope."""


def needs_admin(path: str) -> bool:
    """Whether ``path`` is one of the admin routes (lists, reviews, decisions)."""
    return any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES)


@dataclass
class Guard:
    """What the ingress asks per request: is this path public, is this key good and in rate."""

    keys: KeyRing
    public_paths: frozenset[str]
    limiter: RateLimiter = field(default_factory=RateLimiter)

    @classmethod
    def from_args(
        cls,
        args: SecurityArgs,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> Guard:
        """A guard configured from ``AppArgs.security``."""
        limiter = RateLimiter(clock) if clock is not None else RateLimiter()
        return cls(load_keys(args, environ), frozenset(args.public_paths), limiter)

    def check(self, path: str, authorization: str | None) -> tuple[str | None, float]:
        """``(None, 0)`` when allowed, else ``(verdict, retry_after_s)``."""
        verdict, wait, _ = self.authorize(path, authorization)
        return verdict, wait

    def authorize(
        self, path: str, authorization: str | None
    ) -> tuple[str | None, float, ApiKey | None]:
        """:meth:`check` plus the key that was accepted (None when no key was needed).

        With no keys configured the API is open, admin routes included (development);
        with keys, the admin routes need a key with the ``admin`` scope (else 403).
        """
        if not self.keys or path in self.public_paths:
            return None, 0.0, None
        token = bearer_token(authorization)
        if token is None:
            return Verdict.MISSING, 0.0, None
        key = self.keys.lookup(token)
        if key is None:
            return Verdict.UNKNOWN, 0.0, None
        if needs_admin(path) and "admin" not in key.scopes:
            return Verdict.NOT_ADMIN, 0.0, key
        wait = self.limiter.take(key)
        if wait > 0:
            return Verdict.LIMITED, wait, key
        return None, 0.0, key
