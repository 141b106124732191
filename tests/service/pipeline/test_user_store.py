"""The Redis user store (RedisUserStore in service/pipeline/users.py) over real gRPC
connections: two servers share one real redis-server (started here), so a user's session
finished on one replica sets where the user's next session starts on the other; expiry, the
bound, ForgetUser (authenticated) everywhere, an outage, and user ids kept out of Redis, logs
and metrics. The tiny HRNN export and its PyTorch reference come from
pipeline/test_users.py."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest

from service.config import load_config
from service.pipeline.user_store import (
    RedisStoreConfig,
    RedisUserStore,
    connect,
    read_secret,
    user_key,
)
from service.pipeline.users import UserEntry, UserSessions
from service.proto import recommender_pb2 as pb
from service.runtime import ExportedModel
from tests.service.conftest import Running
from tests.service.pipeline import test_users
from tests.service.pipeline.test_users import FIRST, SECOND, TinyHRNN, ask, assert_answer, forget
from tests.service.test_clickbus import RedisServer
from tests.tools import require_module, require_tool

if TYPE_CHECKING:
    from redis import Redis

SECRET = b"0123456789abcdef0123456789abcdef"  # the HMAC key every replica mounts
hrnn = test_users.hrnn  # its fixtures: the tiny HRNN export, servers that serve it
start_hrnn = test_users.start_hrnn


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = require_tool("redis-server")
    require_module("redis")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replica(
    start_hrnn: Callable[..., Running],
    redis_server: RedisServer,
    tmp_path: Path,
) -> Callable[..., Running]:
    """replica(**config overrides) -> a server with the HRNN, --user-store redis."""
    secret_file = tmp_path / "user-store-secret"
    secret_file.write_bytes(SECRET + b"\n")

    def start(**overrides: object) -> Running:
        settings: dict = dict(user_store="redis", redis_url=redis_server.url,
                              user_store_secret_file=secret_file)  # fmt: skip
        return start_hrnn(**{**settings, **overrides})

    return start


def redis_client(server: RedisServer) -> Redis:
    return connect(server.url, timeout_s=1.0)


def metric(running: Running, name: str) -> float:
    text = urllib.request.urlopen(running.metrics_url, timeout=5).read().decode()
    (line,) = [row for row in text.splitlines() if row.startswith(name + " ")]
    return float(line.split()[1])


CANDIDATES = [f"item-{i:03d}" for i in range(0, 50, 7)]


def score(running: Running, session_id: str, clicks: list[str], user_id: str) -> np.ndarray:
    """ScoreItems' scores of CANDIDATES, in CANDIDATES' order."""
    request = pb.ScoreItemsRequest(session_id=session_id, clicks=clicks,
                                   candidates=CANDIDATES, user_id=user_id)  # fmt: skip
    scores = {item.item_id: item.score for item in running.client.stub.ScoreItems(
        request, timeout=10).items}  # fmt: skip
    return np.array([scores[item] for item in CANDIDATES])


def test_a_session_finished_on_one_replica_starts_the_users_next_session_on_another(
    replica, hrnn: TinyHRNN, redis_server: RedisServer
):
    a, b = replica(), replica()
    secret_user = "user-4711-secret"
    ask(a, "s1", FIRST[:1], user_id=secret_user)
    ask(a, "s1", FIRST, user_id=secret_user)
    got = ask(b, "s2", SECOND, user_id=secret_user)  # the session s1 ends here, on B
    assert_answer(got, hrnn.top([FIRST, SECOND]))
    assert got[0] != hrnn.top([SECOND])[0]  # personalised, not the zero-state answer
    # ScoreItems carries user_id with the same meaning: a third session, on A
    scores = score(a, "s3", FIRST, user_id=secret_user)
    expected = hrnn.scores([FIRST, SECOND, FIRST])[[hrnn.item_ids.index(i) for i in CANDIDATES]]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    # Redis holds a keyed hash of the user id, never the id itself
    client = redis_client(redis_server)
    keys = client.keys("*")
    digest = user_key(SECRET, secret_user)
    assert f"recsys:users:u:{digest}".encode() in keys
    dump = b"".join(keys) + b"".join(
        b"".join(client.hgetall(k).keys()) + b"".join(client.hgetall(k).values())
        for k in keys
        if client.type(k) == b"hash"
    )
    assert secret_user.encode() not in dump and b"4711" not in dump


def test_a_user_idle_past_the_ttl_is_forgotten_by_redis(replica, hrnn, redis_server):
    a, b = replica(user_ttl_s=0.5), replica(user_ttl_s=0.5)
    ask(a, "s1", FIRST, user_id="u")
    assert redis_client(redis_server).exists(f"recsys:users:u:{user_key(SECRET, 'u')}") == 1
    time.sleep(0.8)
    assert redis_client(redis_server).exists(f"recsys:users:u:{user_key(SECRET, 'u')}") == 0
    assert_answer(ask(b, "s2", SECOND, user_id="u"), hrnn.top([SECOND]))


def test_the_shared_store_keeps_the_most_recently_served_users(replica, hrnn):
    a, b = replica(user_store_size=2), replica(user_store_size=2)
    for user, server in (("a", a), ("b", b), ("c", a)):  # a is dropped when c comes
        ask(server, f"{user}-1", FIRST, user_id=user)
    shared = "recsys_user_store_shared_users"
    assert metric(a, shared) == 2 and metric(b, shared) == 2
    assert metric(a, "recsys_user_states") == 0  # none held in the process
    assert_answer(ask(b, "c-2", SECOND, user_id="c"), hrnn.top([FIRST, SECOND]))
    assert_answer(ask(b, "b-2", SECOND, user_id="b"), hrnn.top([FIRST, SECOND]))
    assert_answer(ask(b, "a-2", SECOND, user_id="a"), hrnn.top([SECOND]))


def test_forget_user_on_one_replica_deletes_the_users_state_for_every_replica(
    replica, hrnn, redis_server
):
    a, b = replica(), replica()
    ask(b, "s0", SECOND, user_id="u")
    ask(a, "s1", FIRST, user_id="u")
    b_cache = b.server.handlers.engine.cache
    assert b_cache.get("s0") is not None
    forget(a, "u")
    forget(a, "never-seen")  # the same answer: nothing says who was remembered
    engine = a.server.handlers.engine
    assert engine is not None
    assert engine.cache.get("s1") is None and engine.cache.get("s0") is None
    assert redis_client(redis_server).keys("recsys:users:u:*") == []
    ask(b, "other-1", FIRST, user_id="another-user")  # B reads the forgotten sessions
    assert b_cache.get("s0") is None  # B's cached state of the user's session is gone
    assert_answer(ask(b, "s2", SECOND, user_id="u"), hrnn.top([SECOND]))


def test_forget_user_needs_the_operator_token(replica, hrnn):
    a, b = replica(), replica(catalogue_token=None)
    ask(a, "s1", FIRST, user_id="u")
    for token in (None, "wrong-token", ""):
        with pytest.raises(grpc.RpcError) as refused:
            forget(a, "u", token=token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as off:  # B has no operator token at all
        forget(b, "u")
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "--catalogue-token-file" in (off.value.details() or "")
    # nothing was deleted: B starts the user's next session from A's
    assert_answer(ask(b, "s2", SECOND, user_id="u"), hrnn.top([FIRST, SECOND]))


def test_without_redis_calls_still_answer_the_outage_is_counted_and_logged_once(
    replica, hrnn, redis_server, caplog
):
    caplog.set_level(logging.DEBUG)
    secret_user = "user-0815-secret"
    a = replica()
    ask(a, "s1", FIRST, user_id=secret_user)
    assert metric(a, "recsys_user_store_unavailable_total") == 0
    redis_server.stop()
    for n in range(3):  # as users without history
        assert_answer(ask(a, f"s{n + 2}", SECOND, user_id=secret_user), hrnn.top([SECOND]))
    assert metric(a, "recsys_user_store_unavailable_total") >= 3
    with pytest.raises(grpc.RpcError) as unavailable:  # a privacy request must be retried
        forget(a, secret_user)
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in (unavailable.value.details() or "")
    outage = [r for r in caplog.records if "user store: cannot use Redis" in r.getMessage()]
    assert len(outage) == 1
    redis_server.start()  # empty: a new Redis; tried again after RedisStoreConfig.retry_s
    time.sleep(1.1)
    ask(a, "t1", FIRST, user_id=secret_user)
    assert_answer(ask(a, "t2", SECOND, user_id=secret_user), hrnn.top([FIRST, SECOND]))
    assert any("answers again" in r.getMessage() for r in caplog.records)
    text = urllib.request.urlopen(a.metrics_url, timeout=5).read().decode()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret_user not in text and "0815" not in text
    assert secret_user not in logged and "0815" not in logged


def test_the_stores_round_trips_are_short(hrnn, redis_server, capsys):
    """The store's operations on localhost, timed: what a call with a user_id adds (a
    session that goes on: continue_session and record_last; a new one: put as well)."""
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    store = RedisUserStore(redis_client(redis_server), SECRET, model, 100_000, 3600.0)
    entry = UserEntry(np.zeros((1, model.user_size), np.float32), "s", None, used=time.time())
    state = np.ones((1, model.state_size), np.float32)
    n, seconds = 300, {}
    for name, operation in (
        ("put", lambda i: store.put(f"user-{i}", entry)),
        ("continue_session", lambda i: store.continue_session(f"user-{i}", "s", time.time(), 60)),
        ("record_last", lambda i: store.record_last(f"user-{i}", "s", state)),
        ("get", lambda i: store.get(f"user-{i}")),
    ):
        t0 = time.perf_counter()
        for i in range(n):
            operation(i)
        seconds[name] = (time.perf_counter() - t0) / n
    got, refreshed = store.continue_session("user-7", "s", time.time(), 60)
    assert refreshed and got is not None and got.last is not None
    np.testing.assert_array_equal(got.last, state)
    assert store.continue_session("user-7", "s2", time.time(), 60)[1] is False  # another
    with capsys.disabled():
        shown = ", ".join(f"{name} {s * 1000:.3f} ms" for name, s in seconds.items())
        print(f"\nuser store on localhost, per call: {shown}")
    assert sum(seconds.values()) < 0.02  # loose: a shared 2-core machine
    assert store.forget("user-7") == ["s"] and store.get("user-7") is None


def test_the_redis_store_is_configured_with_a_url_and_a_secret(tmp_path: Path):
    argv = ["--model", "m", "--user-store", "redis", "--redis-url", "redis://127.0.0.1:1/0"]
    with pytest.raises(ValueError, match="user_store_secret_file"):
        load_config(argv, environ={})
    with pytest.raises(ValueError, match="must be one of memory, redis"):
        load_config(["--model", "m", "--user-store", "disk"], environ={})
    short = tmp_path / "short"
    short.write_text("abc\n")
    config = load_config([*argv, "--user-store-secret-file", str(short)], environ={})
    assert config.user_store == "redis" and config.user_store_timeout_ms == 50.0
    with pytest.raises(ValueError, match="at least 16 random bytes"):
        read_secret(short)
    assert load_config(["--model", "m"], environ={}).user_store == "memory"
    assert user_key(b"k" * 16, "u") != user_key(b"j" * 16, "u")  # keyed: no secret, no test


def _store(
    server: RedisServer, model: ExportedModel, timeout_s: float = 1.0, retry_s: float = 1.0
) -> RedisUserStore:
    return RedisUserStore(connect(server.url, timeout_s), SECRET, model, 100, 3600.0,
                          config=RedisStoreConfig(retry_s=retry_s))  # fmt: skip


def test_a_call_that_read_the_entry_before_a_forget_user_does_not_write_the_user_back(
    hrnn, redis_server
):
    """Replica A begins the user's next session: it reads the entry, ForgetUser deletes it
    on replica B, then A writes the ended session's hand-over: the compare-and-set refuses."""
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    a, b = _store(redis_server, model), _store(redis_server, model)
    users = UserSessions(model, a, session_idle_s=60.0)
    users.start("u", "s1")
    users.seen("u", "s1", model.advance_many([np.array([3, 17, 5])], model.zero_state(1)))
    read = a.continue_session

    def forgotten_meanwhile(*args: object) -> tuple:
        got = read(*args)  # type: ignore[arg-type]
        assert b.forget("u") == ["s1"]  # ForgetUser answers OK here
        return got

    a.continue_session = forgotten_meanwhile  # type: ignore[method-assign]
    assert users.start("u", "s2") is not None  # this call's own start: the hand-over of s1
    key = f"recsys:users:u:{user_key(SECRET, 'u')}"
    assert redis_client(redis_server).exists(key) == 0  # s1's state did not come back
    assert users.seen("u", "s2", model.zero_state(1)) is False  # nor is s2's state cached
    a.continue_session = read  # type: ignore[method-assign]
    assert users.start("u", "s3") is None  # the user's next session: from zero, and kept
    entry = a.get("u")
    assert entry is not None and entry.session_id == "s3" and entry.ended == []


def test_forget_user_deletes_from_redis_while_a_model_without_a_user_graph_serves(
    replica, hrnn, redis_server, start_model_only_server, tiny, tmp_path
):
    """A GRU4Rec export swapped in (a rollout step): ForgetUser still deletes the state an
    HRNN export left in Redis, which a rollback to it would read."""
    ask(replica(), "s1", FIRST, user_id="u")
    secret_file = tmp_path / "gru-secret"
    secret_file.write_bytes(SECRET)
    gru = start_model_only_server(model_dir=tiny.export_dir, catalogue_token=test_users.TOKEN,
                                  user_store="redis", redis_url=redis_server.url,
                                  user_store_secret_file=secret_file)  # fmt: skip
    forget(gru, "u")
    assert redis_client(redis_server).keys("recsys:users:u:*") == []
    assert_answer(ask(replica(), "s2", SECOND, user_id="u"), hrnn.top([SECOND]))  # rolled back


def test_a_slow_redis_trips_the_breaker_and_is_counted_and_logged(hrnn, redis_server, caplog):
    """Answers that come in time but slowly hold the event loop as long: past a fifth of
    the timeout they count as unavailable and Redis is left alone for retry_s."""
    caplog.set_level(logging.INFO)
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    store = _store(redis_server, model, timeout_s=0.2, retry_s=0.3)  # slow past 40 ms
    entry = UserEntry(np.zeros((1, model.user_size), np.float32), "s", None, used=time.time())
    store.put("u", entry)
    assert store.get("u") is not None and store.stats.unavailable == 0
    redis_client(redis_server).client_pause(100)  # every client waits 100 ms
    assert store.get("u") is not None  # answered within the timeout: the answer is used
    assert store.stats.unavailable == 1
    assert store.get("u") is None and store.stats.unavailable == 2  # not asked: retry_s
    slow = [r.getMessage() for r in caplog.records if "answers slowly" in r.getMessage()]
    assert len(slow) == 1 and "over 40.0 ms" in slow[0]
    time.sleep(0.35)
    assert store.get("u") is not None and store.stats.unavailable == 2
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_the_outage_line_says_the_errors_type_and_message(hrnn, redis_server, caplog):
    caplog.set_level(logging.INFO)
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    store = _store(redis_server, model)
    redis_server.stop()
    assert store.get("u") is None
    (line,) = [r.getMessage() for r in caplog.records if "cannot use Redis" in r.getMessage()]
    assert "(ConnectionError: Error 111 connecting to 127.0.0.1:" in line, line
    assert "Connection refused" in line
