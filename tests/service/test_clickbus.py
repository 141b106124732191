"""service/clickbus.py: replicas share learnt clicks through a real redis-server (started
here on a free port, no persistence), and keep serving when it is gone.

redis-server comes from Debian's redis-server package; without it these tests skip, and
fail on CI instead (tests/tools.py). The message format and LocalBus need no Redis.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.clickbus import (
    BusConfig,
    ClickBus,
    LocalBus,
    SharedClick,
    decode,
    encode,
    learn_shared,
)
from service.learning.guard import LearningGuard
from service.learning.online import OnlineModel
from service.pipeline.blend import BlendConfig, OnlineLayer
from tests.tools import require_module, require_tool

T0 = 1_700_000_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process on a fixed free port, so it can be stopped and started again
    where the clients expect it (an outage and a recovery)."""

    def __init__(self, binary: str, directory: Path):
        self.binary, self.directory = binary, directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = require_tool("redis-server")
    require_module("redis")  # the client service/clickbus.py talks with
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


def fast(**overrides: object) -> BusConfig:
    """Test timings: short reads and backoff, so outages and recoveries take a moment."""
    settings: dict = dict(
        stream=f"test:{time.monotonic_ns()}", flush_ms=2.0, block_ms=100,
        connect_timeout_s=0.5, backoff_min_s=0.02, backoff_max_s=0.1,
    )  # fmt: skip
    return BusConfig(**{**settings, **overrides})


def layer() -> OnlineLayer:
    return OnlineLayer(OnlineModel(), BlendConfig())


async def until(condition: Callable[[], object], timeout_s: float = 5.0) -> float:
    """Seconds until condition() holds; fails the test after timeout_s."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def connected_pair(url: str, config: BusConfig) -> tuple[ClickBus, ClickBus]:
    """Two started buses on one stream, each over a layer of its own, both connected."""
    a, b = ClickBus(layer(), url, config), ClickBus(layer(), url, config)
    await a.start()
    await b.start()
    await until(lambda: a.stats.connected and b.stats.connected)
    return a, b


def ranking(online: OnlineLayer, clicks: list[str], t: float) -> tuple[list[str], np.ndarray]:
    ids, scores, _ = online.model.score(clicks, t, 20)
    return ids, scores


# --- the message, and sharing without Redis ---


def test_a_message_carries_the_click_and_its_predecessors_exactly():
    click = SharedClick("s\t1", 7, ("a", "b\nc", "é\x00"), T0 + 0.123456789)
    replica, back = decode(encode("r1", click))
    assert (replica, back) == ("r1", click)


@pytest.mark.parametrize(
    "fields",
    [{}, {"r": "x", "s": "", "n": "1", "t": "1.0", "c": "not json"},
     {"r": "x", "s": "", "n": "1", "t": "1.0", "c": "[]"},
     {"r": "x", "s": "", "n": "0", "t": "1.0", "c": '["a"]'},
     {"r": "x", "s": "", "n": "1", "t": "1.0", "c": "[1]"},
     {"r": "x", "s": "", "n": "1", "t": "nan", "c": '["a"]'}],
)  # fmt: skip
def test_a_malformed_message_is_refused(fields):
    with pytest.raises(ValueError):
        decode(fields)


def test_replicas_sharing_clicks_learn_what_one_replica_learns():
    """Calls spread round-robin over three layers joined by a LocalBus leave every layer
    with the statistics of one layer that took all the calls."""
    rng = np.random.default_rng(0)
    one = layer()
    replicas = [layer() for _ in range(3)]
    bus = LocalBus()
    for i, replica in enumerate(replicas):
        bus.join(replica, f"r{i}")
    sessions: dict[str, list[str]] = {}
    for call in range(600):
        session = f"s{rng.integers(0, 40)}"
        clicks = sessions.setdefault(session, [])
        clicks.append(f"i{rng.integers(0, 30)}")
        t = T0 + call
        one.learn(session, clicks, t)
        replicas[call % 3].learn(session, clicks, t)
        if call % 7 == 0:  # a retried call, to another replica
            replicas[(call + 1) % 3].learn(session, clicks, t)
    expected = ranking(one, ["i1", "i2"], T0 + 600)
    for replica in replicas:
        ids, scores = ranking(replica, ["i1", "i2"], T0 + 600)
        assert ids == expected[0]
        np.testing.assert_allclose(scores, expected[1], rtol=1e-6)
    # every click published once and learnt once by each other replica; a retry is a
    # repeat wherever it lands
    assert (bus.stats.published, bus.stats.applied, bus.stats.duplicates) == (600, 1200, 0)


def test_a_click_the_layer_has_learnt_up_to_already_is_not_learnt_again():
    online = layer()
    online.learn("s", ["a", "b", "c"], T0)  # a new session: teaches its last click
    assert not learn_shared(online, SharedClick("s", 2, ("a", "b"), T0))
    assert not learn_shared(online, SharedClick("s", 3, ("a", "b", "c"), T0))
    assert learn_shared(online, SharedClick("s", 4, ("b", "c", "d"), T0))
    assert online.learn("s", ["a", "b", "c", "d", "e"], T0) == 1  # only "e" is new here


def test_a_session_known_from_another_replica_teaches_here_only_what_this_guard_chose():
    """A replica's layer knows the session's first five clicks from the bus, its guard
    does not: a call of eight clicks here teaches its last click alone, as from any
    session this guard has not seen, not the three the layer has not learnt."""
    online, guard = layer(), LearningGuard()
    clicks = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for n in range(1, 6):
        assert learn_shared(online, SharedClick("s", n, tuple(clicks[max(0, n - 3) : n]), T0))
    before = online.clicks_learnt
    for i, key in guard.select("s", clicks, "", T0, known=set(clicks)):
        online.learn_click(key, clicks[: i + 1], T0)
    assert online.clicks_learnt - before == 1
    assert guard.stats.learnt == 1


# --- over Redis ---


def test_a_click_learnt_on_one_replica_reaches_the_other_within_a_second(redis_server):
    async def scenario() -> None:
        config = fast()
        a, b = await connected_pair(redis_server.url, config)
        a_layer, b_layer, expected = a.layer, b.layer, layer()
        for online in (a_layer, expected):
            online.learn("s1", ["x"], T0)
            online.learn("s1", ["x", "y"], T0 + 10)
        delay = await until(lambda: b.stats.applied == 2, timeout_s=1.0)
        assert delay < 1.0
        assert ranking(b_layer, ["x"], T0 + 20)[0] == ranking(expected, ["x"], T0 + 20)[0]
        assert b.stats.lag.sum >= 0 and sum(b.stats.lag.counts) == 2
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_a_replica_skips_its_own_clicks_and_clicks_it_has_learnt(redis_server):
    async def scenario() -> None:
        config = fast()
        a, b = await connected_pair(redis_server.url, config)
        a_layer, b_layer = a.layer, b.layer
        a_layer.learn("s", ["x"], T0)
        a_layer.learn("s", ["x", "y"], T0 + 1)
        await until(lambda: b.stats.applied == 2)
        # the session's next call reaches B: only its new click is learnt there, and sent
        assert b_layer.learn("s", ["x", "y", "z"], T0 + 2) == 1
        await until(lambda: a.stats.applied == 1)
        # a click both replicas published (a call retried on another replica) counts once
        from redis.asyncio import Redis

        client = Redis.from_url(redis_server.url, decode_responses=True)
        fields: dict = encode("c", SharedClick("s", 3, ("x", "y", "z"), T0))
        await client.xadd(config.stream, fields)
        await until(lambda: a.stats.duplicates == 1 and b.stats.duplicates == 1)
        await client.aclose()
        await asyncio.sleep(0.05)
        assert (a.stats.published, b.stats.published) == (2, 1)
        assert (a.stats.applied, b.stats.applied) == (1, 2)  # never their own
        for online in (a_layer, b_layer):
            assert online.model.stats()["items"] == 3
            assert online.model.stats()["transitions"] == 3  # x>y, y>z and the skip x>z
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_a_replica_that_starts_while_redis_is_down_gets_what_others_published_first(
    redis_server,
):
    """Both replicas start with Redis down; A gets through first and publishes what it
    learnt meanwhile, B a moment later: B learns all of it (it used to start at the
    stream's end at its first contact, past A's clicks)."""
    redis_server.stop()

    async def scenario() -> None:
        config = fast()
        a = ClickBus(layer(), redis_server.url, config)
        b = ClickBus(
            layer(), redis_server.url, replace(config, backoff_min_s=0.5, backoff_max_s=0.5)
        )
        await a.start()
        await b.start()
        for i in range(5):
            assert a.layer.learn(f"s{i}", ["a", f"i{i}"], T0 + i) == 1
        await asyncio.sleep(0.2)  # both have failed once
        redis_server.start()
        await until(lambda: a.stats.published == 5)
        await until(lambda: b.stats.applied == 5)
        await a.stop()
        await b.stop()

    asyncio.run(scenario())


def test_the_stream_keeps_about_maxlen_clicks(redis_server):
    async def scenario() -> None:
        config = fast(maxlen=100)
        online = layer()
        bus = ClickBus(online, redis_server.url, config)
        await bus.start()
        for i in range(3000):
            online.learn(f"s{i}", [f"i{i % 50}"], T0 + i)
        await until(lambda: bus.stats.published == 3000, timeout_s=10)
        assert bus.stats.dropped == 0
        from redis.asyncio import Redis

        client = Redis.from_url(redis_server.url)
        # approximate MAXLEN trims whole nodes of 100 entries (stream-node-max-entries)
        assert 100 <= await client.xlen(config.stream) <= 200
        await client.aclose()
        await bus.stop()

    asyncio.run(scenario())


def test_without_redis_learning_goes_on_the_outage_is_logged_once_and_clicks_are_bounded(
    caplog,
):
    async def scenario() -> None:
        online = layer()
        bus = ClickBus(online, f"redis://127.0.0.1:{_free_port()}/0", fast(max_pending=10))
        await bus.start()
        for i in range(25):
            assert online.learn(f"s{i}", ["a", f"i{i}"], T0 + i) == 1
        await asyncio.sleep(0.5)  # several retries of both tasks
        assert bus.stats.connected == 0.0
        assert bus.stats.dropped == 15  # the oldest went; 10 wait for Redis
        assert online.model.stats()["items"] == 25
        started = time.monotonic()
        await bus.stop()
        assert time.monotonic() - started < 1.0  # backoff sleeps end at once

    with caplog.at_level(logging.WARNING, logger="service.clickbus"):
        asyncio.run(scenario())
    assert len([r for r in caplog.records if "cannot use Redis" in r.message]) == 1


# --- two real servers ---


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    (line,) = [row for row in text.splitlines() if row.startswith(name + " ")]
    return float(line.split()[1])


def test_servers_share_clicks_and_serve_through_a_redis_outage(start_server, redis_server):
    a = start_server(online=True, redis_url=redis_server.url)
    b = start_server(online=True, redis_url=redis_server.url)
    b_items = b.server.online.model.stats
    connected = "recsys_clickbus_connected"

    def wait(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "not within the time allowed"
            time.sleep(0.01)

    wait(lambda: _metric(a.metrics_url, connected) == 1 and _metric(b.metrics_url, connected) == 1)
    a.client.recommend("s1", ["item-001", "item-002"], top_k=5)
    wait(lambda: b_items()["items"] == 1)  # a new session teaches its last click
    redis_server.stop()
    wait(lambda: _metric(a.metrics_url, connected) == 0)
    answer = a.client.recommend("s1", ["item-001", "item-002", "item-003"], top_k=5)
    assert len(answer.items) == 5  # served on A's own statistics
    assert _metric(a.metrics_url, "recsys_clickbus_published_total") == 1
    redis_server.start()  # the servers retry every 5 s at most (BusConfig.backoff_max_s)
    wait(lambda: _metric(a.metrics_url, "recsys_clickbus_published_total") == 2, 15)
    wait(lambda: b_items()["items"] == 2, 15)  # the click made during the outage
    wait(lambda: _metric(b.metrics_url, connected) == 1, 15)
    assert _metric(b.metrics_url, "recsys_clickbus_applied_total") == 2
