"""API keys, the token bucket and the security config (no HTTP)."""

from __future__ import annotations

import hashlib
import pickle

import pytest
from pydantic import ValidationError

from serve_app.config.models import AppArgs, SecurityArgs
from serve_app.errors import Forbidden, TooManyRequests, Unauthorized
from serve_app.http.auth import (
    ApiKey,
    Guard,
    KeyRing,
    RateLimiter,
    TokenBucket,
    Verdict,
    bearer_token,
    hash_key,
    load_keys,
)
from serve_app.http.errors import error_parts


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key_args(name: str, plaintext: str, **extra: object) -> dict[str, object]:
    return {"name": name, "sha256": hash_key(plaintext), **extra}


def test_hash_key_is_the_sha256_hex_digest() -> None:
    assert hash_key("secret") == hashlib.sha256(b"secret").hexdigest()
    assert len(hash_key("笑死我了")) == 64


def test_lookup_finds_the_matching_key_among_all() -> None:
    ring = KeyRing([ApiKey("a", hash_key("alpha")), ApiKey("b", hash_key("beta"))])
    found = ring.lookup("beta")
    assert found is not None and found.name == "b"
    assert ring.lookup("gamma") is None
    assert ring.lookup("") is None
    assert ring.lookup(hash_key("alpha")) is None  # the digest itself is not a key


def test_lookup_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import serve_app.http.auth as security

    calls: list[bytes] = []
    real = security.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    ring = KeyRing([ApiKey(str(i), hash_key(f"k{i}")) for i in range(5)])
    assert ring.lookup("k0") is not None
    assert len(calls) == 5  # no early exit on the first key


def test_env_keys_are_hashed_and_named_in_order() -> None:
    args = SecurityArgs(
        api_keys=(key_args("ops", "o"),), api_keys_env="MEME_KEYS", env_rate_per_s=2.0
    )
    ring = load_keys(args, {"MEME_KEYS": " one, two ,,"})
    assert [k.name for k in ring.keys] == ["ops", "env-1", "env-2"]
    env_two = ring.lookup("two")
    assert env_two is not None and env_two.name == "env-2" and env_two.rate_per_s == 2.0
    assert all(k.sha256 != "two" for k in ring.keys)


def test_required_keys_missing_from_the_environment_fail_at_load() -> None:
    args = SecurityArgs(require_api_key=True, api_keys_env="MEME_KEYS")
    with pytest.raises(ValueError, match="require_api_key"):
        load_keys(args, {})
    assert not load_keys(SecurityArgs(api_keys_env="MEME_KEYS"), {})


def test_token_bucket_refills_with_the_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 100
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)  # capped at burst


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_rate_limiter_is_per_key_and_unlimited_without_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    slow = ApiKey("slow", hash_key("s"), rate_per_s=0.1, burst=1)
    free = ApiKey("free", hash_key("f"))
    assert limiter.take(slow) == 0.0
    assert limiter.take(slow) == pytest.approx(10.0)
    assert all(limiter.take(free) == 0.0 for _ in range(100))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_guard_verdicts() -> None:
    clock = FakeClock()
    args = SecurityArgs(api_keys=(key_args("k", "good", rate_per_s=1.0, burst=1),))
    guard = Guard.from_args(args, {}, clock)
    assert guard.check("/healthz", None) == (None, 0.0)
    assert guard.check("/v1/status", None) == (Verdict.MISSING, 0.0)
    assert guard.check("/v1/status", "Token good") == (Verdict.MISSING, 0.0)
    assert guard.check("/v1/status", "Bearer bad") == (Verdict.UNKNOWN, 0.0)
    assert guard.check("/v1/status", "Bearer good") == (None, 0.0)
    verdict, wait = guard.check("/v1/status", "Bearer good")
    assert verdict == Verdict.LIMITED and wait == pytest.approx(1.0)


def test_admin_routes_need_the_admin_scope() -> None:
    args = SecurityArgs.model_validate(
        {
            "api_keys": [
                key_args("mod", "admin-plain", scopes=["analyze", "admin"]),
                key_args("web", "read-plain"),
            ],
            "admin_keys_env": "ADMIN_KEYS",
        }
    )
    guard = Guard.from_args(args, {"ADMIN_KEYS": "env-admin-plain"})
    for path in ("/v1/lists", "/v1/lists/banned/terms", "/v1/reviews", "/v1/decisions/x/accept"):
        assert guard.authorize(path, "Bearer read-plain")[0] == Verdict.NOT_ADMIN, path
        verdict, _, key = guard.authorize(path, "Bearer admin-plain")
        assert verdict is None and key is not None and key.name == "mod"
        verdict, _, key = guard.authorize(path, "Bearer env-admin-plain")
        assert verdict is None and key is not None and key.name == "admin-1"
        assert guard.authorize(path, None)[0] == Verdict.MISSING
    # Not admin routes: any key; a look-alike prefix is not an admin route.
    for path in ("/v1/memes/analyze", "/v1/listsx", "/v1/policies"):
        assert guard.authorize(path, "Bearer read-plain")[0] is None, path
    with pytest.raises(ValidationError):
        SecurityArgs.model_validate({"api_keys": [key_args("x", "p", scopes=["root"])]})
    with pytest.raises(ValidationError, match="admin-"):
        SecurityArgs.model_validate(
            {"api_keys": [key_args("admin-1", "p")], "admin_keys_env": "ADMIN_KEYS"}
        )


def test_guard_without_keys_is_open() -> None:
    guard = Guard.from_args(SecurityArgs(), {})
    assert guard.check("/v1/memes/analyze", None) == (None, 0.0)


def test_security_defaults_keep_the_api_open() -> None:
    security = AppArgs().security
    assert not security.require_api_key and security.api_keys == ()
    assert security.api_keys_env is None and security.cors_allow_origins == ()
    assert set(security.public_paths) == {
        "/",
        "/review",  # the page; its API calls need an admin key
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/favicon.png",
        "/openapi.json",
    }


@pytest.mark.parametrize(
    "security",
    [
        {"require_api_key": True},
        {"api_keys": [{"name": "a", "sha256": "abc"}]},
        {"api_keys": [{"name": "a", "sha256": "g" * 64}]},
        {"api_keys": [{"name": "a", "sha256": "a" * 64, "rate_per_s": 0}]},
        {"api_keys": [{"name": "a", "sha256": "a" * 64}, {"name": "a", "sha256": "b" * 64}]},
        {"api_keys": [{"name": "a", "sha256": "a" * 64, "plaintext": "x"}]},
        {"unknown": 1},
    ],
)
def test_invalid_security_config_is_an_error(security: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"security": security})


def test_valid_security_config_normalises_digests() -> None:
    args = AppArgs.model_validate(
        {
            "security": {
                "require_api_key": True,
                "api_keys": [{"name": "a", "sha256": "AB" * 32, "rate_per_s": 5, "burst": 2}],
            }
        }
    )
    assert args.security.api_keys[0].sha256 == "ab" * 32
    assert (
        AppArgs.model_validate(
            {"security": {"require_api_key": True, "api_keys_env": "K"}}
        ).security.api_keys_env
        == "K"
    )


def test_auth_errors_become_standard_bodies_and_headers() -> None:
    status, body, headers = error_parts(Unauthorized("no key"), "rid")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert headers == {"WWW-Authenticate": "Bearer"}
    status, body, headers = error_parts(Forbidden("bad key"), "rid")
    assert (status, body["error"]["code"], headers) == (403, "forbidden", {})
    status, _, headers = error_parts(TooManyRequests("slow", retry_after_s=2.4), "rid")
    assert status == 429 and headers == {"Retry-After": "2"}
    restored = pickle.loads(pickle.dumps(Unauthorized("x")))
    assert isinstance(restored, Unauthorized) and restored.message == "x"
