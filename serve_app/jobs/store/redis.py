"""The redis job store: jobs on a redis server shared by several hosts, claimed by Lua scripts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from serve_app.jobs.store.base import (
    FINISHED_STATES,
    Claimed,
    JobStore,
    JobView,
    NewItem,
    NewJob,
    check_claim,
    check_lease,
    check_new_job,
    check_page,
    check_worker,
    encode_outcome,
    is_job_id,
    job_view_from_fields,
    new_job_fields,
    new_job_id,
    result_row,
    short_error,
)
from serve_app.library.backends.plumbing import RedisConnection, import_redis

logger = logging.getLogger(__name__)

CHUNK: Final[int] = 1000
"""Items per command when a job's items are written or deleted."""

# Every script takes the key prefix as ARGV[1] and builds a job's keys from it: a job's
# items are not known before the script runs, so the store needs a single redis server
# (not a cluster). Redis runs each script atomically, which is what makes claims safe.
# Times travel as Python's repr of a float, compared with tonumber (exact for doubles).
_HELPERS: Final[str] = """
local function finish(P, job_id, jk, now)
  redis.call('HSET', jk, 'finished_at', now)
  redis.call('ZREM', P .. 'open', job_id)
  redis.call('ZADD', P .. 'finished', now, job_id)
  if redis.call('HGET', jk, 'cb_state') == 'pending' then
    redis.call('HSET', jk, 'cb_next_at', now)
    redis.call('ZADD', P .. 'callbacks', now, job_id)
  end
end
local function is_open(state)
  return state == 'queued' or state == 'running'
end
"""

_CLAIM: Final[str] = """
local P, worker, limit, now, lease_until = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
local start = 0
while #out < limit do
  local jobs = redis.call('ZRANGE', P .. 'open', start, start + 99)
  if #jobs == 0 then break end
  for _, job_id in ipairs(jobs) do
    local jk = P .. 'j:' .. job_id
    local job = redis.call('HMGET', jk, 'state', 'policy')
    if job[1] == 'queued' or job[1] == 'running' then
      local q = P .. 'q:' .. job_id
      local ready = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, limit - #out)
      for _, member in ipairs(ready) do
        local ik = P .. 'i:' .. job_id .. ':' .. member
        local attempt = redis.call('HINCRBY', ik, 'attempt', 1)
        redis.call('HSET', ik, 'state', 'leased', 'worker', worker)
        redis.call('ZADD', q, lease_until, member)
        local item = redis.call('HMGET', ik, 'item_id', 'image', 'text', 'policy')
        local policy = item[4]
        if not policy then policy = job[2] end
        out[#out + 1] = {job_id, member, item[1], item[2], item[3], policy, attempt}
      end
      if #ready > 0 and job[1] == 'queued' then redis.call('HSET', jk, 'state', 'running') end
      if #out >= limit then break end
    end
  end
  start = start + 100
end
return out
"""

_COMPLETE: Final[str] = (
    _HELPERS
    + """
local P, job_id, member, worker, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = P .. 'j:' .. job_id
if not is_open(redis.call('HGET', jk, 'state')) then return 0 end
local ik = P .. 'i:' .. job_id .. ':' .. member
local item = redis.call('HMGET', ik, 'state', 'worker')
if item[1] ~= 'leased' or item[2] ~= worker then return 0 end
local q = P .. 'q:' .. job_id
local lease = redis.call('ZSCORE', q, member)
if not lease or tonumber(lease) <= tonumber(now) then return 0 end
redis.call('HSET', ik, 'state', 'done', 'status', ARGV[6], 'outcome', ARGV[7])
redis.call('HDEL', ik, 'image', 'worker')
redis.call('ZREM', q, member)
redis.call('ZADD', P .. 'r:' .. job_id, tonumber(member), member)
local done = redis.call('HINCRBY', jk, 'done', 1)
if ARGV[8] == '1' then redis.call('HINCRBY', jk, 'failed', 1) end
if done >= tonumber(redis.call('HGET', jk, 'total')) then
  redis.call('HSET', jk, 'state', 'done')
  finish(P, job_id, jk, now)
end
return 1
"""
)

_RELEASE: Final[str] = (
    _HELPERS
    + """
local P, job_id, member, worker, retry_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not is_open(redis.call('HGET', P .. 'j:' .. job_id, 'state')) then return 0 end
local ik = P .. 'i:' .. job_id .. ':' .. member
local item = redis.call('HMGET', ik, 'state', 'worker')
if item[1] ~= 'leased' or item[2] ~= worker then return 0 end
redis.call('HSET', ik, 'state', 'pending')
redis.call('HDEL', ik, 'worker')
redis.call('ZADD', P .. 'q:' .. job_id, retry_at, member)
return 1
"""
)

_CANCEL: Final[str] = (
    _HELPERS
    + """
local P, job_id, now = ARGV[1], ARGV[2], ARGV[3]
local jk = P .. 'j:' .. job_id
if not is_open(redis.call('HGET', jk, 'state')) then return 0 end
redis.call('HSET', jk, 'state', 'cancelled')
finish(P, job_id, jk, now)
local q = P .. 'q:' .. job_id
for _, member in ipairs(redis.call('ZRANGE', q, 0, -1)) do
  local ik = P .. 'i:' .. job_id .. ':' .. member
  redis.call('HSET', ik, 'state', 'cancelled')
  redis.call('HDEL', ik, 'image', 'worker')
end
redis.call('DEL', q)
return 1
"""
)

_CLAIM_CALLBACK: Final[str] = """
local P, job_id, worker, now, lease_until = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = P .. 'j:' .. job_id
local f = redis.call('HMGET', jk, 'state', 'cb_state', 'cb_next_at', 'cb_worker', 'cb_lease_until')
if f[1] ~= 'done' and f[1] ~= 'cancelled' then return 0 end
if f[2] ~= 'pending' or not f[3] or tonumber(f[3]) > tonumber(now) then return 0 end
if f[5] and tonumber(f[5]) > tonumber(now) and f[4] ~= worker then return 0 end
redis.call('HSET', jk, 'cb_worker', worker, 'cb_lease_until', lease_until)
redis.call('ZADD', P .. 'callbacks', lease_until, job_id)
return 1
"""

_RECORD_CALLBACK: Final[str] = """
local P, job_id, outcome, err, next_at, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local jk = P .. 'j:' .. job_id
local f = redis.call('HMGET', jk, 'state', 'cb_state')
if f[1] ~= 'done' and f[1] ~= 'cancelled' then return 0 end
if f[2] ~= 'pending' then return 0 end
redis.call('HINCRBY', jk, 'cb_attempts', 1)
if ARGV[7] == '1' then redis.call('HSET', jk, 'cb_last_error', err) end
redis.call('HDEL', jk, 'cb_worker', 'cb_lease_until')
if outcome == 'delivered' then
  redis.call('HSET', jk, 'cb_state', 'delivered', 'cb_delivered_at', now)
  redis.call('HDEL', jk, 'cb_next_at')
  redis.call('ZREM', P .. 'callbacks', job_id)
elseif outcome == 'failed' then
  redis.call('HSET', jk, 'cb_state', 'failed')
  redis.call('HDEL', jk, 'cb_next_at')
  redis.call('ZREM', P .. 'callbacks', job_id)
else
  redis.call('HSET', jk, 'cb_next_at', next_at)
  redis.call('ZADD', P .. 'callbacks', next_at, job_id)
end
return 1
"""


def _member(index: int) -> str:
    """An item's member name: its index, zero-padded so that ties sort by position."""
    return f"{index:010d}"


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


class RedisJobStore(JobStore):
    """Jobs on a redis server, shared by every process using the same URL and prefix.

    Keys (``P`` is ``prefix + "jobs:"``):

    * ``P j:<job>`` — hash of the job's fields (an absent field is ``None``);
    * ``P i:<job>:<index>`` — hash of one item (its image until it is done);
    * ``P q:<job>`` — sorted set of the job's claimable or leased items, scored by when
      they may be claimed (0 at first, the lease's end while leased, ``retry_at`` when
      given back); ``P r:<job>`` — sorted set of its completed items, by position;
    * ``P open`` (queued and running jobs by creation number, from ``P counter``),
      ``P finished`` (by ``finished_at``) and ``P callbacks`` (finished jobs whose callback
      is pending, by when it may next be claimed).

    ``create`` is one ``MULTI``/``EXEC`` transaction; every other change is one Lua script,
    so claims are atomic across hosts. The scripts build keys from the prefix, so the store
    needs one redis server, not a cluster. Job ids are checked for the shape the store
    gives them before they go into a key name, so a crafted id never reaches another key.
    Nothing expires: finished jobs stay until :meth:`purge`. Connection problems and server
    errors raise :class:`~serve_app.library.backends.LibraryUnavailable` within the socket
    timeouts; the client connects on first use, not on construction.
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
        redis = import_redis("redis job store")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.prefix = prefix
        self._p = f"{prefix}jobs:"
        self._conn = RedisConnection(
            redis,
            url,
            "redis job store",
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._client: Any = self._conn.client
        self.location = self._conn.location
        register = self._client.register_script
        self._claim: Any = register(_CLAIM)
        self._complete: Any = register(_COMPLETE)
        self._release: Any = register(_RELEASE)
        self._cancel: Any = register(_CANCEL)
        self._claim_callback: Any = register(_CLAIM_CALLBACK)
        self._record_callback: Any = register(_RECORD_CALLBACK)

    def _job_key(self, job_id: str) -> str:
        return f"{self._p}j:{job_id}"

    def _item_key(self, job_id: str, index: int) -> str:
        return f"{self._p}i:{job_id}:{_member(index)}"

    def create(self, job: NewJob, items: Sequence[NewItem], now: float) -> str:
        check_new_job(job, items)
        job_id = new_job_id()
        fields = {k: v for k, v in new_job_fields(job, now).items() if v is not None}
        return self._conn.call("create a job", lambda: self._create(job_id, fields, items))

    def _create(self, job_id: str, fields: dict[str, Any], items: Sequence[NewItem]) -> str:
        seq = int(self._client.incr(f"{self._p}counter"))
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self._job_key(job_id), mapping=fields)
            for index, item in enumerate(items):
                mapping: dict[str, Any] = {
                    "item_id": item.item_id,
                    "image": bytes(item.image),
                    "state": "pending",
                    "attempt": 0,
                }
                if item.text is not None:
                    mapping["text"] = item.text
                if item.policy is not None:
                    mapping["policy"] = item.policy
                pipe.hset(self._item_key(job_id, index), mapping=mapping)
            for start in range(0, len(items), CHUNK):
                stop = min(start + CHUNK, len(items))
                pipe.zadd(f"{self._p}q:{job_id}", {_member(i): 0 for i in range(start, stop)})
            pipe.zadd(f"{self._p}open", {job_id: seq})
            pipe.execute()
        return job_id

    def claim(self, worker: str, limit: int, lease_s: float, now: float) -> list[Claimed]:
        check_claim(worker, limit, lease_s)
        args = [self._p, worker, limit, float(now), float(now) + lease_s]
        rows = self._conn.call("claim items", lambda: self._claim(keys=[], args=args))
        return [
            Claimed(
                job_id=job_id.decode("ascii"),
                index=int(member),
                item_id=item_id.decode("utf-8"),
                image=bytes(image),
                text=_text(text),
                policy=_text(policy),
                attempt=int(attempt),
            )
            for job_id, member, item_id, image, text, policy, attempt in rows
        ]

    def complete(
        self, job_id: str, index: int, worker: str, outcome: Mapping[str, Any], now: float
    ) -> bool:
        status, encoded = encode_outcome(outcome)
        if index < 0 or not is_job_id(job_id):
            return False
        args = [self._p, job_id, _member(index), worker, float(now), status, encoded]
        args.append("1" if status != 200 else "0")
        return bool(self._conn.call("complete an item", lambda: self._complete(keys=[], args=args)))

    def release(self, job_id: str, index: int, worker: str, retry_at: float) -> None:
        if index < 0 or not is_job_id(job_id):
            return
        args = [self._p, job_id, _member(index), worker, float(retry_at)]
        self._conn.call("release an item", lambda: self._release(keys=[], args=args))

    def cancel(self, job_id: str, now: float) -> bool:
        if not is_job_id(job_id):
            return False
        args = [self._p, job_id, float(now)]
        return bool(self._conn.call("cancel a job", lambda: self._cancel(keys=[], args=args)))

    def get(self, job_id: str) -> JobView | None:
        if not is_job_id(job_id):
            return None
        data = self._conn.call("read a job", lambda: self._client.hgetall(self._job_key(job_id)))
        return self._view(job_id, data)

    @staticmethod
    def _view(job_id: str, data: Mapping[bytes, bytes] | None) -> JobView | None:
        if not data:
            return None
        return job_view_from_fields(job_id, {k.decode("utf-8"): v for k, v in data.items()})

    def results(self, job_id: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        check_page(offset, limit)
        if not is_job_id(job_id):
            return []
        return self._conn.call("read results", lambda: self._results(job_id, offset, limit))

    def _results(self, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        members = self._client.zrange(f"{self._p}r:{job_id}", offset, offset + limit - 1)
        if not members:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for member in members:
                key = f"{self._p}i:{job_id}:{member.decode('ascii')}"
                pipe.hmget(key, ["item_id", "status", "outcome"])
            rows = pipe.execute()
        # A row without an id was purged meanwhile.
        return [result_row(*row) for row in rows if row[0] is not None]

    def open_jobs(self, owner: str | None) -> int:
        return self._conn.call("count open jobs", lambda: self._open_jobs(owner))

    def _open_jobs(self, owner: str | None) -> int:
        ids = self._client.zrange(f"{self._p}open", 0, -1)
        if not ids:
            return 0
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._job_key(job_id.decode("ascii")), ["state", "owner"])
            rows = pipe.execute()
        return sum(
            1 for state, who in rows if state in (b"queued", b"running") and _text(who) == owner
        )

    def callbacks_due(self, now: float, limit: int = 100) -> list[JobView]:
        check_page(0, limit)
        return self._conn.call("list due callbacks", lambda: self._callbacks_due(now, limit))

    def _callbacks_due(self, now: float, limit: int) -> list[JobView]:
        ids = self._client.zrangebyscore(f"{self._p}callbacks", "-inf", float(now), 0, limit)
        if not ids:
            return []
        job_ids = [job_id.decode("ascii") for job_id in ids]
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._job_key(job_id))
            hashes = pipe.execute()
        views = (self._view(job_id, data) for job_id, data in zip(job_ids, hashes, strict=True))
        return [
            view
            for view in views
            if view is not None
            and view.state in FINISHED_STATES
            and view.callback.state == "pending"
        ]

    def claim_callback(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        check_worker(worker)
        check_lease(lease_s)
        if not is_job_id(job_id):
            return False
        args = [self._p, job_id, worker, float(now), float(now) + lease_s]
        return bool(
            self._conn.call("claim a callback", lambda: self._claim_callback(keys=[], args=args))
        )

    def record_callback(
        self,
        job_id: str,
        ok: bool,
        error: str | None,
        next_attempt_at: float | None,
        now: float,
    ) -> None:
        if not is_job_id(job_id):
            return
        outcome = "delivered" if ok else "failed" if next_attempt_at is None else "pending"
        args = [
            self._p,
            job_id,
            outcome,
            short_error(error) or "",
            "" if next_attempt_at is None else float(next_attempt_at),
            float(now),
            "0" if error is None else "1",
        ]
        self._conn.call("record a callback", lambda: self._record_callback(keys=[], args=args))

    def purge(self, older_than: float) -> int:
        return self._conn.call("purge jobs", lambda: self._purge(older_than))

    def _purge(self, older_than: float) -> int:
        removed = 0
        while True:
            ids = self._client.zrangebyscore(
                f"{self._p}finished", "-inf", f"({float(older_than)!r}", 0, CHUNK
            )
            if not ids:
                return removed
            for raw in ids:
                removed += self._purge_job(raw.decode("ascii"))

    def _purge_job(self, job_id: str) -> int:
        total = int(self._client.hget(self._job_key(job_id), "total") or 0)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._job_key(job_id))
            pipe.delete(f"{self._p}q:{job_id}", f"{self._p}r:{job_id}")
            for start in range(0, total, CHUNK):
                stop = min(start + CHUNK, total)
                pipe.delete(*(self._item_key(job_id, i) for i in range(start, stop)))
            for index in ("open", "finished", "callbacks"):
                pipe.zrem(f"{self._p}{index}", job_id)
            results = pipe.execute()
        return int(results[0])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "prefix": self.prefix}

    def close(self) -> None:
        self._conn.close()
