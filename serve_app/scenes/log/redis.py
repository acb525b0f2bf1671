"""The redis event log: one sorted set on a redis server shared by several hosts."""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from serve_app.library.backends.plumbing import RedisConnection, import_redis
from serve_app.scenes.log.base import PAGE, Event, EventLog, check_since, encode_body

logger = logging.getLogger(__name__)

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
        redis = import_redis("redis scenes log")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.prefix = prefix
        self._counter_key = f"{prefix}scenes:counter"
        self._events_key = f"{prefix}scenes:events"
        self._conn = RedisConnection(
            redis,
            url,
            "redis scenes log",
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._client: Any = self._conn.client
        self.location = self._conn.location
        self._append_script: Any = self._client.register_script(_APPEND)

    def append(self, kind: str, body: dict[str, Any], at: float) -> int:
        encoded = encode_body(kind, body)
        # JSON [kind, at, body] with the body spliced in as already encoded (and validated).
        member = json.dumps([kind, float(at)], ensure_ascii=False)[:-1] + "," + encoded + "]"
        seq = self._conn.call(
            "append",
            lambda: self._append_script(keys=[self._counter_key, self._events_key], args=[member]),
        )
        return int(seq)

    def since(self, seq: int, limit: int = PAGE) -> list[Event]:
        check_since(seq, limit)
        members = self._conn.call(
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
        last = self._conn.call("read the counter", lambda: self._client.get(self._counter_key))
        return {
            "kind": self.kind,
            "location": self.location,
            "prefix": self.prefix,
            "last_seq": int(last or 0),
        }

    def close(self) -> None:
        self._conn.close()
