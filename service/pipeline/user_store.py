"""The user store shared by the replicas through Redis (--user-store redis), and
make_user_store, which picks it or users.UserStore from the configuration.

Two stores with the same methods (get, put, record_last, forget, forget_local, len()):
users.UserStore, in this process's memory (the default; each replica remembers the users it
served), and RedisUserStore, shared by the replicas through Redis (--user-store redis,
make_user_store):

    client = connect("redis://redis:6379/0", timeout_s=0.05)
    store = RedisUserStore(client, secret, model, max_entries=100_000, ttl_s=30 * 86400)

A user's session that ends on replica A is folded by whichever replica gets the user's next
call: the entry (UserEntry) lives in Redis, so replica B starts the next session from
the state A's session left.

Keys. A user is the hash `{prefix}:u:{HMAC-SHA256(secret, user_id)}`; the raw user id never
leaves the process. A keyed hash rather than a plain or salted SHA-256: user ids are often
guessable (account numbers, e-mail addresses), and whoever can read Redis or a dump of it
could hash every candidate and see who is stored; without the secret (a file every replica
mounts, --user-store-secret-file) that test cannot be run. The hash holds one group of
fields per model version, `{version}|s` (session under way), `|t` (its latest call, Unix
s), `|m` (JSON: ended session ids), `|u`, `|a`, `|l` (float32 rows: user state, the
session's start and latest states): user states belong to a model's weights, so during a
rollout each version reads its own and a new version starts its users from zero.

Bound and expiry. Each write sets the key's expiry to ttl_s (Redis forgets an idle user by
itself) and records the user in the sorted set `{prefix}:index` by the write's time; beyond
max_entries users the least recently written are deleted, in the same Lua script (so one
round trip). Standalone Redis only (the script touches keys it is not given: no Redis
Cluster). Redis's own memory policy is a second line: with maxmemory and
`maxmemory-policy volatile-lru` it evicts expiring keys only, which are these user keys and
never the click bus's stream (clickbus.py).

Cost on the event loop (a synchronous client with a short socket timeout, timeout_s): a call
with a user_id that runs the model makes two round trips when its session goes on (most
calls): one Lua script reads the entry and refreshes it (UserSessions.start, through
continue_session), one writes the session's latest state if it is still the one under way
(record_last); a call that begins a session makes a third, the write of the new entry. Plus
a non-blocking read of the ForgetUser subscription (below). The event loop waits for each:
0.05 to 0.5 ms against a local Redis on a loaded 2-core machine (timed by the test
tests/service/pipeline/test_user_store.py), a network round trip elsewhere; calls without
a user_id make none, but they wait behind those that do (the handlers call the pipeline
synchronously, so the round trips cannot leave the loop without changing them). Redis
unreachable or slower than timeout_s: the call goes on as for a user without history (the
zero state) and what it would have written is lost; recsys_user_store_unavailable_total
counts such operations, one log line marks the outage (and one its end), and Redis is not
tried again for retry_s, so an outage costs at most one timeout per retry_s. An answer that
comes, but after more than RedisStoreConfig.slow_share of timeout_s (10 ms of the default
50), counts and trips the same way (its result is kept): at that pace a replica's user calls
hold its loop most of the time, and a probe measured anonymous calls' median go from 3 ms to
35 ms (Redis 10 ms away) and 145 ms (45 ms away), all without a timeout. ForgetUser does not
go on: it raises StoreUnavailable (gRPC UNAVAILABLE), because a privacy request that
deleted nothing must be retried.

ForgetUser deletes the user's key (every model version's entry) and publishes the session
ids it named on the channel `{prefix}:forgotten`, in one Lua script; each replica reads its
subscription, without waiting, at its next call with a user_id and drops those sessions'
cached states (users' session states live in each replica's session cache, keyed by session
id). A replica that was cut off from Redis when it was published keeps them until the
session cache's TTL. The other workers of the replica's pod read it at once (forget_local,
on the worker link's relay), without deleting again.

A call that begins a session writes the new entry by compare-and-set: only if the entry's
session and time fields still hold what its read (continue_session) found, absent when it
found none. So a call that read the user's entry just before a ForgetUser on another replica
cannot write the user back after it (a tombstone would have refused the user's next session
for its lifetime as well); of two calls of one user racing on two replicas to begin a
session, the first write wins and the other's session begins anew at its next call. A user's
calls normally come one at a time.

Not thread-safe: the server touches it from its event loop only (RedisUserStore's len() is
also called by /metrics from its thread; redis-py's connection pool is thread-safe).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runtime import ExportedModel
from .users import UserEntry, UserStore

if TYPE_CHECKING:
    from redis import Redis

    from ..config import ServiceConfig

log = logging.getLogger(__name__)


# KEYS: the user's hash, the index. ARGV: ttl ms, now, oldest time kept, max entries, the
# user's index member, the key prefix of members, '1' to compare-and-set (else '0'), the
# session and time fields' expected values ('': absent), then field, value pairs (session
# first, time second). Returns -1 when the fields hold something else (nothing written).
_PUT = """
if ARGV[7] == '1' then
  local current = redis.call('HMGET', KEYS[1], ARGV[10], ARGV[12])
  if (current[1] or '') ~= ARGV[8] or (current[2] or '') ~= ARGV[9] then return -1 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    redis.call('DEL', ARGV[6] .. member)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return over
"""
# KEYS: the user's hash, the index. ARGV: session id, now, idle seconds, ttl ms, the user's
# index member, then the entry's fields (session first, time second). Returns {1 when the
# session goes on and was refreshed (else 0), the fields' values}.
_CONTINUE = """
local values = redis.call('HMGET', KEYS[1], unpack(ARGV, 6))
local used = tonumber(values[2])
if values[1] == ARGV[1] and used and tonumber(ARGV[2]) - used <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[7], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
  return {1, values}
end
return {0, values}
"""
# KEYS: the user's hash, the index. ARGV: the user's index member, the channel of forgotten
# sessions. Returns the session ids the user's entries named, and publishes them.
_FORGET = """
local fields = redis.call('HGETALL', KEYS[1])
local sessions = {}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if string.sub(name, -2) == '|s' then
    table.insert(sessions, value)
  elseif string.sub(name, -2) == '|m' then
    local ok, meta = pcall(cjson.decode, value)
    if ok and type(meta) == 'table' and type(meta.ended) == 'table' then
      for _, session in ipairs(meta.ended) do table.insert(sessions, session) end
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if #sessions > 0 then redis.call('PUBLISH', ARGV[2], cjson.encode(sessions)) end
return sessions
"""
# KEYS: the user's hash. ARGV: session field, session id, latest-state field, state bytes.
_RECORD_LAST = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  return 1
end
return 0
"""


class StoreUnavailable(Exception):
    """The shared user store did not answer: ForgetUser is gRPC UNAVAILABLE (retry)."""


@dataclass
class UserStoreStats:
    """Counts of the shared store, for /metrics; never per user."""

    unavailable: int = 0  # operations Redis did not answer, or skipped while it was down
    shared_users: Callable[[], int] = lambda: 0  # RedisUserStore.shared_count once one runs


@dataclass(frozen=True)
class RedisStoreConfig:
    prefix: str = "recsys:users"  # one per deployment sharing a Redis
    retry_s: float = 1.0  # after a failure, Redis is left alone this long
    # an answer slower than this share of the client's socket timeout is a failure too
    slow_share: float = 0.2


def connect(url: str, timeout_s: float) -> Redis:
    """A synchronous client whose every round trip (and connect) gives up after timeout_s,
    without retries. Raises ValueError for a URL redis-py cannot use."""
    from redis import Redis  # imported here: the Redis store is optional
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def read_secret(path: Path) -> bytes:
    """The HMAC key from a file (surrounding whitespace dropped). Raises OSError for an
    unreadable file, ValueError for one too short to be a secret."""
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise OSError(f"cannot read the user store secret file: {err}") from err
    if len(secret) < 16:
        raise ValueError(
            f"the user store secret file {path} holds {len(secret)} bytes; put at least 16 "
            "random bytes in it (e.g. `openssl rand -hex 32`), the same file on every replica"
        )
    return secret


def user_key(secret: bytes, user_id: str) -> str:
    """The hex HMAC-SHA256 of a user id: what Redis sees instead of it."""
    return hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()


class RedisUserStore:
    """UserStore's methods over Redis, for one model (its version and state sizes).
    max_entries=0 remembers nothing. clock: Unix seconds, comparable between replicas."""

    def __init__(
        self,
        client: Redis,
        secret: bytes,
        model: ExportedModel,
        max_entries: int,
        ttl_s: float,
        stats: UserStoreStats | None = None,
        config: RedisStoreConfig | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 0 and ttl_s > 0")
        self.client = client
        self.secret = secret
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.stats = stats or UserStoreStats()
        self.config = config or RedisStoreConfig()
        self.clock = clock
        self.user_size, self.state_size = model.user_size, model.state_size
        version = model.model_version
        # session id, time of the latest call, meta (JSON), user, start, latest state
        self._fields = [f"{version}|{part}" for part in "stmual"]
        self._index = f"{self.config.prefix}:index"
        self._members = f"{self.config.prefix}:u:"
        self._put = client.register_script(_PUT)
        self._record_last = client.register_script(_RECORD_LAST)
        self._forget = client.register_script(_FORGET)
        self._continue = client.register_script(_CONTINUE)
        self._channel = f"{self.config.prefix}:forgotten"
        self._subscription: Any = None  # redis-py PubSub on self._channel; None: not yet
        self._retry_at = 0.0  # time.monotonic() before which Redis is not tried
        self._up = True  # False from a failure until Redis answers again
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._slow_s = float("inf") if timeout is None else timeout * self.config.slow_share
        # (digest, session, time) as continue_session read them, for put's compare-and-set
        self._read: tuple[str, bytes | None, bytes | None] | None = None
        self._last_len = 0
        self.stats.shared_users = self.shared_count

    def __len__(self) -> int:
        """Users held in this process: none (recsys_user_states counts per process)."""
        return 0

    def shared_count(self) -> int:
        """Users in the shared store (every replica's), not expired; the last count known
        while Redis does not answer. Called by /metrics, from its own thread."""
        try:
            count = self.client.zcount(self._index, self.clock() - self.ttl_s, "+inf")
        except _errors():
            return self._last_len
        self._last_len = int(count)
        return self._last_len

    def get(self, user_id: str) -> UserEntry | None:
        """The user's entry for this model, or None (none, or Redis did not answer)."""
        if not self._usable():
            return None
        started = time.perf_counter()
        try:
            values = self.client.hmget(self._key(user_id), self._fields)
        except _errors() as err:
            self._failed(err)
            return None
        self._answered(started)
        return self._decode(values)

    def put(self, user_id: str, entry: UserEntry) -> None:
        """Store the entry, refresh the user's expiry, drop the overflow of least recently
        written users. Lost when Redis does not answer. Right after continue_session read
        this user's entry (UserSessions.start: read, end the session, write), a
        compare-and-set: nothing is written unless the entry's session and time fields still
        hold what that read found (none: still none), e.g. after a ForgetUser meanwhile."""
        digest = user_key(self.secret, user_id)
        read, self._read = self._read, None
        if self.max_entries == 0 or not self._usable():
            return
        meta = json.dumps({"ended": entry.ended})
        values = (entry.session_id, repr(entry.used), meta, _row(entry.user), _row(entry.start),
                  _row(entry.last))  # fmt: skip
        pairs: list[Any] = [x for pair in zip(self._fields, values, strict=True) for x in pair]
        check: list[Any] = ["0", "", ""]
        if read is not None and read[0] == digest:
            check = ["1", read[1] or "", read[2] or ""]
        now = self.clock()
        args = [int(self.ttl_s * 1000), now, now - self.ttl_s, self.max_entries, digest,
                self._members, *check, *pairs]  # fmt: skip
        started = time.perf_counter()
        try:
            self._put(keys=[self._members + digest, self._index], args=args)
        except _errors() as err:
            self._failed(err)
            return
        self._answered(started)

    def continue_session(
        self, user_id: str, session_id: str, now: float, idle_s: float
    ) -> tuple[UserEntry | None, bool]:
        """UserStore.continue_session in one round trip: the entry is read and, when its
        session goes on, its time, expiry and index rank refreshed by one Lua script. When
        it does not, what was read is kept for put's compare-and-set."""
        self._read = None
        if not self._usable():
            return None, False
        digest = user_key(self.secret, user_id)
        keys = [self._members + digest, self._index]
        args = [session_id, now, idle_s, int(self.ttl_s * 1000), digest, *self._fields]
        started = time.perf_counter()
        try:
            refreshed, values = self._continue(keys=keys, args=args)
        except _errors() as err:
            self._failed(err)
            return None, False
        self._answered(started)
        if not refreshed:
            self._read = (digest, values[0], values[1])
        entry = self._decode(values)
        if entry is None or not refreshed:
            return entry, False
        entry.used = now
        return entry, True

    def record_last(self, user_id: str, session_id: str, state: np.ndarray) -> bool:
        """Set the latest state of the user's session, if session_id is still the one under
        way (another replica may have begun the next); whether it was set. Lost when Redis
        does not answer (True then: nothing is known to be forgotten either)."""
        if self.max_entries == 0:
            return False
        if not self._usable():
            return True
        session_field, last_field = self._fields[0], self._fields[5]
        args = [session_field, session_id, last_field, _row(state)]
        started = time.perf_counter()
        try:
            recorded = self._record_last(keys=[self._key(user_id)], args=args)
        except _errors() as err:
            self._failed(err)
            return True
        self._answered(started)
        return bool(recorded)

    def forget(self, user_id: str) -> list[str]:
        """Delete the user's entries of every model version; the session ids they named.
        Always tries Redis, down or not; raises StoreUnavailable when it does not answer."""
        digest = user_key(self.secret, user_id)
        keys, args = [self._members + digest, self._index], [digest, self._channel]
        started = time.perf_counter()
        try:
            sessions = self._forget(keys=keys, args=args)
        except _errors() as err:
            self._failed(err)
            raise StoreUnavailable(
                "the user store (Redis) did not answer, so the user's state may not be "
                "deleted; retry ForgetUser"
            ) from None
        self._answered(started)
        return [s.decode(errors="replace") for s in sessions]

    def forget_local(self, user_id: str) -> list[str]:
        """A ForgetUser another worker of this pod took (workers/link.py): that worker
        deleted the user in Redis and published the session ids, so nothing is deleted
        here; the session ids published since the last look (forgotten()), for this
        process to drop their cached states now rather than at its next call with a
        user_id. Never raises."""
        return self.forgotten()

    def forgotten(self) -> list[str]:
        """The session ids whose users a ForgetUser call (on any replica) deleted since the
        last look, for this replica to drop their cached states. Never waits: reads what
        has arrived on the subscription (made at the first look). Ids published while
        this replica was not subscribed are missed: their cached states expire by the
        session cache's TTL."""
        if not self._usable():
            return []
        sessions: list[str] = []
        try:
            if self._subscription is None:
                subscription = self.client.pubsub()
                subscription.subscribe(self._channel)
                self._subscription = subscription
            # None only once nothing is left to read (ignore_subscribe_messages would also
            # answer None for the subscription's confirmation, ending the loop too early)
            while (message := self._subscription.get_message(timeout=0.0)) is not None:
                if message["type"] == "message":
                    with _malformed():
                        sessions.extend(str(s) for s in json.loads(message["data"]))
        except _errors() as err:
            self._failed(err)
            self._unsubscribe()
        return sessions

    def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(*_errors()):
                subscription.close()

    def _key(self, user_id: str) -> str:
        return self._members + user_key(self.secret, user_id)

    def _decode(self, values: list[bytes | None]) -> UserEntry | None:
        """The entry of HMGET's values; None for none, or one this model cannot use."""
        session, used, meta, user, start, last = values
        if session is None or used is None or meta is None or not user:
            return None
        with _malformed():
            info = json.loads(meta)
            user_state = _array(user, self.user_size)
            assert user_state is not None
            return UserEntry(
                user_state,
                session.decode(),
                _array(start, self.state_size),
                _array(last, self.state_size),
                used=float(used),
                ended=[str(s) for s in info["ended"]],
            )
        return None

    def _usable(self) -> bool:
        if time.monotonic() >= self._retry_at:
            return True
        self.stats.unavailable += 1
        return False

    def _failed(self, err: Exception) -> None:
        self.stats.unavailable += 1
        self._retry_at = time.monotonic() + self.config.retry_s
        if self._up:  # once per outage; the key in an error is a hash, never the user id
            url = _redacted(self.client)
            log.warning("user store: cannot use Redis at %s (%s: %s); users start from the "
                        "zero state until it answers", url, type(err).__name__, err)  # fmt: skip
        self._up = False

    def _answered(self, started: float) -> None:
        """Redis answered a round trip begun at started (time.perf_counter()); an answer
        slower than the budget trips the breaker as a failure does (the event loop waited
        for it), though the answer itself is used."""
        took = time.perf_counter() - started
        if took > self._slow_s:
            self.stats.unavailable += 1
            self._retry_at = time.monotonic() + self.config.retry_s
            if self._up:  # once per episode, as an outage
                log.warning("user store: Redis at %s answers slowly (%.1f ms, over %.1f ms); "
                            "users start from the zero state for %.0f s at a time until it "
                            "answers in time", _redacted(self.client), took * 1000,
                            self._slow_s * 1000, self.config.retry_s)  # fmt: skip
            self._up = False
            return
        if not self._up:
            log.info("user store: Redis at %s answers again", _redacted(self.client))
        self._up = True


def _row(state: np.ndarray | None) -> bytes:
    return b"" if state is None else np.ascontiguousarray(state, np.float32).tobytes()


def _array(data: bytes | None, size: int) -> np.ndarray | None:
    """A (1, size) float32 row of stored bytes; None for none (b""). Raises ValueError for
    bytes of another size (another model's state)."""
    if not data:
        return None
    if len(data) != 4 * size:
        raise ValueError(f"a stored state of {len(data)} bytes, not {4 * size}")
    return np.frombuffer(data, np.float32).reshape(1, size)


def _malformed() -> contextlib.suppress:
    """Suppresses what a malformed or foreign stored value raises: it reads as absent."""
    return contextlib.suppress(ValueError, KeyError, TypeError)


def _errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is down, slow or refuses."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)  # OSError covers TimeoutError


def _redacted(client: Redis) -> str:
    """host:port/db of the client, without its password, for logs."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def make_user_store(
    config: ServiceConfig, model: ExportedModel, stats: UserStoreStats
) -> UserStore | RedisUserStore:
    """The store config.user_store names, for one model's users. Raises OSError or
    ValueError for a secret file or Redis URL that cannot be used."""
    if config.user_store != "redis":
        return UserStore(config.user_store_size, config.user_ttl_s)
    assert config.redis_url is not None and config.user_store_secret_file is not None
    secret = read_secret(config.user_store_secret_file)
    client = connect(config.redis_url, config.user_store_timeout_ms / 1000)
    return RedisUserStore(client, secret, model, config.user_store_size, config.user_ttl_s,
                          stats)  # fmt: skip
