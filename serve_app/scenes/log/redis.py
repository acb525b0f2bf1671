"""The redis event log: one sorted set on a redis server shared by several hosts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

from serve_app.library.backends import LibraryUnavailable, redact_url
from serve_app.scenes.log.base import PAGE, Event, EventLog, check_since, encode_body

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# INCR and ZADD in one script: redis runs a script atomically, so a number is never
# visible before every smaller one (a reader polling with ``since`` never skips one).
_APPEND: Final[str] = """
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, seq .. ' ' .. ARGV[1])
return seq
"""


class RedisEventLog(EventLog):
    """Events in a redis server, shared by every process using the same URL and prefix.

    Keys (``P`` is ``prefix``): ``P scenes:counter`` (the sequence counter, ``INCR``) and
    ``P scenes:events`` (a sorted set scored by sequence number whose members are
    ``"<seq> <JSON [kind, at, body]>"``; the number keeps members unique). Both are
    written by one Lua script, atomically. Nothing expires. Connection problems and
    server errors raise :class:`~serve_app.library.backends.LibraryUnavailable` within the
    socket timeouts; the client connects on first use, not on construction.
    """

    kind = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "memeserve:",
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - redis is a declared dependency
            raise LibraryUnavailable(
                "the redis scenes log needs the redis client: pip install redis"
            ) from exc
        if not prefix:
            raise ValueError("prefix must not be empty")
        self._redis = redis
        self.location = redact_url(url)
        self.prefix = prefix
        self._counter_key = f"{prefix}scenes:counter"
        self._events_key = f"{prefix}scenes:events"
        self._closed = False
        try:
            # Any: redis-py's return types are unions over its sync and async clients.
            self._client: Any = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ValueError(f"bad redis URL {self.location}: {exc}") from None
        self._append_script: Any = self._client.register_script(_APPEND)

    def _call(self, what: str, action: Callable[[], _T]) -> _T:
        """Run ``action``; turn client errors into ``LibraryUnavailable``."""
        if self._closed:
            raise LibraryUnavailable(f"redis scenes log {self.location} is closed")
        try:
            return action()
        except self._redis.RedisError as exc:
            raise LibraryUnavailable(
                f"redis scenes log {self.location} failed to {what}: {type(exc).__name__}: {exc}"
            ) from exc

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        encoded = encode_body(kind, body)
        # JSON [kind, at, body] with the body spliced in as already encoded (and validated).
        member = json.dumps([kind, float(at)], ensure_ascii=False)[:-1] + "," + encoded + "]"
        seq = self._call(
            "append",
            lambda: self._append_script(keys=[self._counter_key, self._events_key], args=[member]),
        )
        return int(seq)

    def since(self, seq: int, limit: int = PAGE) -> list[Event]:
        check_since(seq, limit)
        members = self._call(
            "read events",
            lambda: self._client.zrangebyscore(self._events_key, f"({seq}", "+inf", 0, limit),
        )
        events = []
        for member in members:
            number, payload = member.decode("utf-8").split(" ", 1)
            kind, at, body = json.loads(payload)
            events.append(Event(seq=int(number), kind=str(kind), body=body, at=float(at)))
        return events

    def describe(self) -> dict[str, Any]:
        last = self._call("read the counter", lambda: self._client.get(self._counter_key))
        return {
            "kind": self.kind,
            "location": self.location,
            "prefix": self.prefix,
            "last_seq": int(last or 0),
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()
