"""Share the clicks the online layer learns between replicas, through a Redis Stream.

    bus = ClickBus(layer, "redis://sessionrec-redis:6379/0")   # hooks layer.on_learn
    await bus.start()   # on the serving event loop; returns at once, Redis up or not
    ...                 # every click the layer learns is published; the others' are learnt
    await bus.stop()

Why: behind a load balancer without session affinity each of N replicas sees 1/N of the
clicks, and its online statistics (online.py) learn from that share alone.
scripts/bench_replicas.py measures what that costs and that sharing wins it back.

Message: one stream entry per learnt click with the fields r (replica id), s (session id),
n (the session's click count up to this click, as the request carried it), t (Unix seconds)
and c (a JSON list of the session's last up to WINDOW clicks, this one last: all that
OnlineModel.learn reads when session-KNN is off, its default; with w_knn > 0 other replicas'
clicks reach the KNN index as short fragments of their sessions).

The request path only appends to a bounded deque (publish(); when full the oldest click is
dropped and counted). A background task writes the deque out every flush_ms as pipelined
XADDs with an approximate MAXLEN, so Redis holds about `maxlen` clicks whatever the traffic.
Another task follows the stream (XREAD BLOCK from the last id read, from the bus's start
time at first: the clicks others published while Redis was still out of this replica's
reach count too) and learns the other replicas' clicks; its own, recognised by r, are
skipped. A click is also skipped when this replica has learnt the session up to it already,
and a learnt one advances the session's count in the layer, so that a later call of the
session here does not learn it a second time (blend.OnlineLayer.learn).

Redis down: the replica serves on its own statistics. The outage is logged once, and its
end once; both tasks retry with exponential backoff up to backoff_max_s; clicks wait in the
deque (the oldest dropped beyond max_pending) and the reader resumes from its last id, so a
short outage loses nothing MAXLEN kept. Metrics: recsys_clickbus_connected, _published,
_applied, _dropped, _duplicates and _lag_seconds (metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .metrics import BusStats
from .pipeline.blend import OnlineLayer

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

WINDOW = 3  # clicks per message: the learnt one and the two OnlineModel.learn links it to


@dataclass(frozen=True)
class BusConfig:
    stream: str = "recsys:clicks"  # one stream per deployment (share a Redis: change it)
    # entries kept: about 150 bytes each in Redis, so ~15 MB; at 1,000 clicks/s a reader
    # that was cut off for up to 100 s still finds what it missed
    maxlen: int = 100_000
    flush_ms: float = 5.0  # the delay publishing adds before a click leaves this replica
    max_pending: int = 10_000  # clicks waiting for Redis; beyond, the oldest are dropped
    max_batch: int = 500  # clicks per pipeline and per read: at ~10 us to learn one, a read
    # holds the event loop for at most ~5 ms
    block_ms: int = 500  # a read waits this long for news (it returns as soon as one comes);
    # stop() waits for the read in progress
    connect_timeout_s: float = 1.0
    backoff_min_s: float = 0.1  # retry delays after a failure: doubled up to backoff_max_s
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if min(self.maxlen, self.max_pending, self.max_batch, self.block_ms) < 1:
            raise ValueError("maxlen, max_pending, max_batch and block_ms must be >= 1")
        if not 0 < self.backoff_min_s <= self.backoff_max_s or self.flush_ms <= 0:
            raise ValueError("need flush_ms > 0 and 0 < backoff_min_s <= backoff_max_s")


class SharedClick(NamedTuple):  # made on the request path: cheaper than a frozen dataclass
    session: str  # "" for calls without a session id
    n: int  # the session's click count up to this click
    clicks: tuple[str, ...]  # its last up to WINDOW clicks, this one last
    time: float  # Unix seconds of the call that taught it


def encode(replica: str, click: SharedClick) -> dict[str, str]:
    """The stream entry's fields for a click learnt by `replica`."""
    return {
        "r": replica,
        "s": click.session,
        "n": str(click.n),
        "t": repr(click.time),
        "c": json.dumps(click.clicks, ensure_ascii=False),
    }


def decode(fields: Mapping[str, str]) -> tuple[str, SharedClick]:
    """(replica, click) of a stream entry; raises ValueError for a malformed one."""
    try:
        clicks = tuple(json.loads(fields["c"]))
        click = SharedClick(fields["s"], int(fields["n"]), clicks, float(fields["t"]))
        replica = fields["r"]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a click message: {dict(fields)!r}") from err
    valid = clicks and all(isinstance(c, str) for c in clicks) and math.isfinite(click.time)
    if not valid or click.n < 1:  # a NaN time would poison every decayed statistic
        raise ValueError(f"not a click message: {dict(fields)!r}")
    return replica, click


def learn_shared(layer: OnlineLayer, click: SharedClick) -> bool:
    """Learn a click another replica learnt, unless `layer` has learnt the session up to it
    already (a duplicate, or a call that reached this replica first); True if learnt.

    Keeps the layer's per-session record (n, last click) in step by its own rules, so a
    later call of the session here learns only what came after."""
    return layer.learn_shared(click.session, click.n, list(click.clicks), click.time)


def _shared(session_id: str, clicks: Sequence[str], now: float) -> SharedClick:
    return SharedClick(session_id, len(clicks), tuple(clicks[-WINDOW:]), now)


class ClickBus:
    """One replica's end of the stream: publishes what `layer` learns and learns what the
    others publish. start() and stop() run on the event loop that serves calls; publish()
    (installed as layer.on_learn) is the only part on the request path."""

    def __init__(
        self,
        layer: OnlineLayer,
        url: str,
        config: BusConfig | None = None,
        replica: str | None = None,
        stats: BusStats | None = None,
    ):
        self.layer = layer
        self.url = url
        self.config = config or BusConfig()
        # the pod name says which replica wrote an entry; the random part keeps two buses
        # of one process apart
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stats = stats or BusStats()
        self._pending: deque[SharedClick] = deque()
        self._client: Redis | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping: asyncio.Event | None = None  # made on the loop, by start()
        self._up: bool | None = None  # None until the first Redis call
        self._start_id = "0-0"  # the stream id the reader starts after (set by start())
        layer.on_learn = self.publish

    def publish(self, session_id: str, clicks: list[str], now: float) -> None:
        """Queue a learnt click for the stream (OnlineLayer.on_learn). O(1); never waits."""
        if len(self._pending) >= self.config.max_pending:
            self._pending.popleft()
            self.stats.dropped += 1
        self._pending.append(_shared(session_id, clicks, now))

    async def start(self) -> None:
        """Start writing and reading in the background. Raises ValueError for a bad URL."""
        from redis.asyncio import Redis  # imported here: the bus is optional
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        c = self.config
        self._client = Redis.from_url(
            self.url,
            decode_responses=True,
            socket_connect_timeout=c.connect_timeout_s,
            socket_timeout=c.block_ms / 1000 + c.connect_timeout_s,  # a read blocks block_ms
            retry=Retry(NoBackoff(), 0),  # the loops below retry, with their own backoff
        )
        self._stopping = asyncio.Event()
        # the first read starts at this time, not at the stream's end at first contact: a
        # replica that starts while Redis is down would else skip whatever the others
        # published before it got through (a probe lost half a pod's clicks so)
        self._start_id = f"{int(time.time() * 1000)}-0"
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="clickbus-write"),
            loop.create_task(self._read_loop(), name="clickbus-read"),
        ]

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop learning from the stream and publishing; what is pending is written out first
        if Redis is up. Takes up to block_ms (the read in progress), timeout_s more at most
        when Redis hangs. The tasks are asked to end rather than cancelled: redis-py may
        swallow the cancellation of a blocking read (redis/redis-py#2028, #2579)."""
        if self.layer.on_learn == self.publish:
            self.layer.on_learn = None
        if self._stopping is not None:
            self._stopping.set()
        if self._tasks:
            wait_s = self.config.block_ms / 1000 + timeout_s
            _, late = await asyncio.wait(self._tasks, timeout=wait_s)
            for task in late:
                task.cancel()  # a Redis that stopped answering: leave it
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(*_errors()):  # TimeoutError included
                await asyncio.wait_for(self._client.aclose(), timeout_s)
            self._client = None

    def _stopped(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def _pause(self, seconds: float) -> None:
        """A backoff sleep that stop() cuts short."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # --- writing ---

    async def _write_loop(self) -> None:
        c = self.config
        backoff = 0.0
        while not self._stopped():
            if backoff:
                await self._pause(backoff)
            else:
                await asyncio.sleep(c.flush_ms / 1000)
            try:
                await self._flush()
            except Exception as err:  # the task must outlive anything Redis does
                self._down(err)
                backoff = min(max(2 * backoff, c.backoff_min_s), c.backoff_max_s)
                continue
            backoff = 0.0

    async def _flush(self) -> None:
        """Write the pending clicks, max_batch per pipeline; a failed batch goes back to the
        front of the deque (a click may then reach the stream twice: readers skip it)."""
        assert self._client is not None
        c = self.config
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), c.max_batch))]
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for click in batch:
                        fields: dict[Any, Any] = encode(self.replica, click)  # redis-py's types
                        pipe.xadd(c.stream, fields, maxlen=c.maxlen)
                    await pipe.execute()
            except BaseException:
                self._pending.extendleft(reversed(batch))
                while len(self._pending) > c.max_pending:
                    self._pending.popleft()
                    self.stats.dropped += 1
                raise
            self.stats.published += len(batch)
            self._set_up()

    # --- reading ---

    async def _read_loop(self) -> None:
        c = self.config
        last = self._start_id  # the last id read: entries from the bus's start on
        backoff = 0.0
        while not self._stopped():
            try:
                assert self._client is not None
                reply: Any = await self._client.xread(
                    {c.stream: last}, count=c.max_batch, block=c.block_ms
                )
            except Exception as err:  # the task must outlive anything Redis does
                self._down(err)
                backoff = min(max(2 * backoff, c.backoff_min_s), c.backoff_max_s)
                await self._pause(backoff)
                continue
            backoff = 0.0
            self._set_up()
            # [[stream, entries]] in RESP2 and redis-py's legacy RESP3 form; {stream: entries}
            # in its newer RESP3 form
            for _stream, entries in reply.items() if isinstance(reply, dict) else reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._apply(fields)

    def _apply(self, fields: Mapping[str, str]) -> None:
        try:
            replica, click = decode(fields)
        except ValueError as err:
            log.debug("click bus: skipped %s", err)
            return
        if replica == self.replica:
            return
        if learn_shared(self.layer, click):
            self.stats.applied += 1
            self.stats.lag.observe(max(0.0, time.time() - click.time))
        else:
            self.stats.duplicates += 1

    # --- connection state: logged on change only ---

    def _set_up(self) -> None:
        if self._up is not True:
            log.info("click bus: connected to %s (stream %s, replica %s)",
                     _redacted(self.url), self.config.stream, self.replica)  # fmt: skip
        self._up, self.stats.connected = True, 1.0

    def _down(self, err: Exception) -> None:
        if self._up is not False:
            expected = isinstance(err, _errors())  # else a bug: worth its traceback
            log.warning("click bus: cannot use Redis at %s (%s: %s); serving on this "
                        "replica's own clicks and retrying", _redacted(self.url),
                        type(err).__name__, err, exc_info=not expected)  # fmt: skip
        self._up, self.stats.connected = False, 0.0


class LocalBus:
    """The bus without Redis, for replays in one process (scripts/bench_replicas.py): the
    clicks each member learns go through encode() and decode() to every other member, once
    the replay's clock has passed their time by delay_s (0: at once)."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.stats = BusStats()
        self._members: list[tuple[str, OnlineLayer]] = []
        self._queue: deque[tuple[float, dict[str, str]]] = deque()

    def join(self, layer: OnlineLayer, replica: str) -> None:
        def publish(session_id: str, clicks: list[str], now: float) -> None:
            self._queue.append((now, encode(replica, _shared(session_id, clicks, now))))
            self.stats.published += 1
            self.deliver(now)

        self._members.append((replica, layer))
        layer.on_learn = publish

    def deliver(self, now: float) -> None:
        """Every member but the sender learns the clicks published up to now - delay_s."""
        while self._queue and self._queue[0][0] <= now - self.delay_s:
            sender, click = decode(self._queue.popleft()[1])
            for replica, layer in self._members:
                if replica == sender:
                    continue
                if learn_shared(layer, click):
                    self.stats.applied += 1
                else:
                    self.stats.duplicates += 1


def _errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is down, slow or refuses (no redis import before
    the bus is used)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)  # OSError covers TimeoutError


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
