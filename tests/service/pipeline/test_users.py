"""User states (users.py) over a real gRPC connection, with a tiny HRNN export (random
weights): answers checked against PyTorch's HRNN carried across a user's sessions; the
store's bound, expiry and ForgetUser; user ids kept out of metrics and logs."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from service.pipeline.inference import run_jobs
from service.pipeline.users import UserEntry, UserSessions, UserStore
from service.proto import recommender_pb2 as pb
from service.runtime import ExportedModel
from tests.service.conftest import Running
from training.config import Config
from training.data.logs import ItemVocab
from training.export import export_model
from training.fit.train import save_model
from training.models.architectures import build_model

N_ITEMS = 50
TOKEN = "operator-token-for-tests"  # ForgetUser's bearer token (--catalogue-token)
TOP_K = 10
RTOL = ATOL = 1e-5  # float32 kernels differ in summation order (training/export.py)


@dataclass
class TinyHRNN:
    export_dir: Path
    model: torch.nn.Module  # eval mode
    item_ids: list[str]

    def scores(self, sessions: list[list[str]]) -> np.ndarray:
        """PyTorch's scores (N,) after the last session's clicks, the user's earlier sessions
        handed over between sessions as in training (HRNN.hand_over)."""
        with torch.no_grad():
            hidden = self.model.init_hidden(1)
            for n, clicks in enumerate(sessions):
                if n:
                    hidden = self.model.hand_over(hidden, torch.tensor([True]), None)
                for item in clicks:
                    index = torch.tensor([self.item_ids.index(item)])
                    scores, hidden = self.model(index, hidden, None)
        return scores[0].numpy()

    def top(self, sessions: list[list[str]]) -> tuple[list[str], np.ndarray]:
        scores = self.scores(sessions)
        best = np.argsort(-scores, kind="stable")[:TOP_K]
        return [self.item_ids[i] for i in best], scores[best]


@pytest.fixture(scope="module")
def hrnn(tmp_path_factory: pytest.TempPathFactory) -> TinyHRNN:
    """Session layers of 8 and 6 units, a user GRU of 5, the user state fed to every step."""
    root = tmp_path_factory.mktemp("hrnn")
    torch.manual_seed(3)
    cfg = Config(architecture="hrnn", layers=(8, 6), user_layer=5, user_propagation="all")
    model = build_model(N_ITEMS, cfg).eval()
    ids = [f"item-{i:03d}" for i in range(N_ITEMS)]
    popularity = np.arange(N_ITEMS, dtype=np.int64)
    save_model(root / "model", model, cfg, ItemVocab(ids), popularity, {})
    export_model(root / "model", root / "export")
    return TinyHRNN(root / "export", model, ids)


@pytest.fixture
def start_hrnn(
    start_model_only_server: Callable[..., Running], hrnn: TinyHRNN
) -> Callable[..., Running]:
    def start(**overrides: object) -> Running:
        settings: dict = {"model_dir": hrnn.export_dir, "catalogue_token": TOKEN, **overrides}
        return start_model_only_server(**settings)

    return start


FIRST = ["item-003", "item-017", "item-005"]
SECOND = ["item-009", "item-002"]


def ask(running: Running, session_id: str, clicks: list[str], user_id: str = "") -> tuple:
    request = pb.RecommendRequest(session_id=session_id, clicks=clicks, top_k=TOP_K,
                                  user_id=user_id)  # fmt: skip
    reply = running.client.stub.Recommend(request, timeout=10)
    assert reply.source == pb.SOURCE_MODEL
    return [i.item_id for i in reply.items], np.array([i.score for i in reply.items])


def assert_answer(got: tuple, expected: tuple) -> None:
    assert got[0] == expected[0]
    np.testing.assert_allclose(got[1], expected[1], rtol=RTOL, atol=ATOL)


def forget(running: Running, user_id: str, token: str | None = TOKEN) -> None:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    request = pb.ForgetUserRequest(user_id=user_id)
    running.client.stub.ForgetUser(request, metadata=metadata, timeout=10)


def test_no_user_id_and_a_new_user_get_the_session_models_zero_state_answer(start_hrnn, hrnn):
    running = start_hrnn()
    zero = hrnn.top([FIRST])
    assert_answer(ask(running, "anon", FIRST), zero)
    assert_answer(ask(running, "s1", FIRST, user_id="new-user"), zero)


def test_a_returning_users_next_session_is_what_pytorchs_hrnn_computes(start_hrnn, hrnn):
    running = start_hrnn()
    ask(running, "s1", FIRST[:1], user_id="u")
    ask(running, "s1", FIRST, user_id="u")  # the session's final state is after all three
    got = ask(running, "s2", SECOND, user_id="u")
    assert_answer(got, hrnn.top([FIRST, SECOND]))
    assert got[0] != hrnn.top([SECOND])[0]  # personalised: not the zero-state answer
    # a later call of the same session resumes it (cache) and still matches
    assert_answer(ask(running, "s2", SECOND + FIRST[:1], user_id="u"),
                  hrnn.top([FIRST, SECOND + FIRST[:1]]))  # fmt: skip


def test_a_session_uncached_midway_restarts_from_the_users_start_state(start_hrnn, hrnn):
    running = start_hrnn(cache_size=0)  # every call recomputes its session from its clicks
    ask(running, "s1", FIRST, user_id="u")
    ask(running, "s2", SECOND[:1], user_id="u")
    assert_answer(ask(running, "s2", SECOND, user_id="u"), hrnn.top([FIRST, SECOND]))


def test_an_idle_session_ends_and_the_next_call_starts_a_new_one(start_hrnn, hrnn):
    running = start_hrnn(user_session_idle_s=0.3)
    ask(running, "s1", FIRST, user_id="u")
    time.sleep(0.5)
    # the same session id, clicks that do not extend the cached ones: a new session
    assert_answer(ask(running, "s1", SECOND, user_id="u"), hrnn.top([FIRST, SECOND]))


def test_the_store_evicts_the_least_recently_used_user(start_hrnn, hrnn):
    running = start_hrnn(user_store_size=2)
    for user in ("a", "b", "c"):  # a is evicted when c comes
        ask(running, f"{user}-1", FIRST, user_id=user)
    assert_answer(ask(running, "c-2", SECOND, user_id="c"), hrnn.top([FIRST, SECOND]))
    assert_answer(ask(running, "a-2", SECOND, user_id="a"), hrnn.top([SECOND]))


def test_a_user_idle_past_the_ttl_is_forgotten(start_hrnn, hrnn):
    running = start_hrnn(user_ttl_s=0.3)
    ask(running, "s1", FIRST, user_id="u")
    time.sleep(0.5)
    assert_answer(ask(running, "s2", SECOND, user_id="u"), hrnn.top([SECOND]))


def test_forget_user_deletes_the_user_state_and_the_sessions_cached_state(start_hrnn, hrnn):
    running = start_hrnn()
    ask(running, "s1", FIRST, user_id="u")
    ask(running, "s2", SECOND, user_id="u")
    forget(running, "u")
    forget(running, "never-seen")  # the same answer: nothing says who was remembered
    engine = running.server.handlers.engine
    assert engine is not None and engine.users is not None
    assert len(engine.users.store) == 0
    assert engine.cache.get("s1") is None and engine.cache.get("s2") is None
    assert_answer(ask(running, "s3", SECOND, user_id="u"), hrnn.top([SECOND]))
    with pytest.raises(grpc.RpcError) as err:
        forget(running, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_without_the_user_or_of_another_does_not_resume_the_users_state(start_hrnn, hrnn):
    """The session cache is keyed by session id; the state it holds ran from the user's
    start, which a call without user_id (as without it) or of another user must not get."""
    running = start_hrnn()
    ask(running, "s1", FIRST, user_id="alice")
    ask(running, "s2", SECOND, user_id="alice")  # personalised: starts from alice's state
    anonymous = SECOND + FIRST[:1]
    assert_answer(ask(running, "s2", anonymous), hrnn.top([anonymous]))
    bob = SECOND + FIRST[:2]  # bob's first session: the zero state
    assert_answer(ask(running, "s2", bob, user_id="bob"), hrnn.top([bob]))


def test_forget_user_while_a_call_is_in_the_model_keeps_nothing_of_it(start_hrnn, hrnn):
    """The call's state comes back from the model after ForgetUser: it is not cached (the
    server's order of events, run by hand on its engine so that the race is certain)."""
    running = start_hrnn()
    ask(running, "s1", FIRST, user_id="u")
    engine = running.server.handlers.engine
    assert engine is not None
    query = engine.decode(pb.RecommendRequest(session_id="s2", clicks=SECOND, user_id="u"))
    job = engine.prepare(query)  # queued for the model
    assert job is not None
    forget(running, "u")
    run_jobs(engine.model, [job])
    engine.finish(query, job)
    assert engine.cache.get("s2") is None and len(engine.users.store) == 0
    assert_answer(ask(running, "s2", SECOND + FIRST[:1]), hrnn.top([SECOND + FIRST[:1]]))


def test_a_session_model_ignores_user_id(start_model_only_server, tiny):
    running = start_model_only_server(catalogue_token=TOKEN)
    first, second = ["item-001", "item-002"], ["item-004"]
    ask(running, "s1", first, user_id="u")
    expected = ask(running, "anon", second)
    assert_answer(ask(running, "s2", second, user_id="u"), expected)
    forget(running, "u")


def test_user_ids_appear_neither_in_metrics_nor_in_logs(start_hrnn, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "user-4711-secret"
    running = start_hrnn()
    ask(running, "s1", FIRST, user_id=secret)
    ask(running, "s2", SECOND, user_id=secret)
    with pytest.raises(grpc.RpcError) as err:  # refused: the message must not quote it
        ask(running, "s3", FIRST, user_id=secret * 20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert secret not in (err.value.details() or "")
    forget(running, secret)
    ask(running, "s4", FIRST, user_id="user-0815-other")
    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "recsys_user_states 1.0" in text
    assert 'method="ForgetUser"' in text
    assert secret not in text and "user-0815" not in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged and secret not in logged and "user-0815" not in logged


# --- the store and the hand-over without gRPC, on a clock of the test's own ---


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(used: float) -> UserEntry:
    return UserEntry(np.zeros((1, 5), np.float32), "s", None, used=used)


def test_the_store_drops_expired_entries_and_the_least_recently_used_overflow():
    clock = Clock()
    store = UserStore(2, ttl_s=10.0, clock=clock)
    store.put("a", entry(clock.now))
    store.put("b", entry(clock.now))
    store.put("a", entry(clock.now))  # a is now the most recent
    store.put("c", entry(clock.now))
    assert store.get("b") is None and store.get("a") is not None and len(store) == 2
    clock.now += 11
    assert store.get("a") is None
    assert len(UserStore(0, 1.0)) == 0


def test_expired_users_leave_the_store_and_its_count_without_another_write():
    clock = Clock()
    store = UserStore(10, ttl_s=10.0, clock=clock)
    store.put("a", entry(clock.now))
    clock.now += 5
    store.put("b", entry(clock.now))
    assert len(store) == 2
    clock.now += 6  # a is past the ttl, b not
    assert len(store) == 1  # counted (recsys_user_states) without a write
    clock.now += 5
    assert store.get("c") is None and len(store) == 0


def test_the_user_states_gauge_drops_users_idle_past_the_ttl(start_hrnn):
    running = start_hrnn(user_ttl_s=0.3)
    ask(running, "s1", FIRST, user_id="u")
    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    assert "recsys_user_states 1.0" in urllib.request.urlopen(url, timeout=5).read().decode()
    time.sleep(0.5)  # no call meanwhile
    assert "recsys_user_states 0.0" in urllib.request.urlopen(url, timeout=5).read().decode()


def test_hand_over_happens_once_per_session_and_a_session_without_a_model_run_changes_nothing(
    hrnn,
):
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    clock = Clock()
    users = UserSessions(model, UserStore(10, 1000.0, clock), session_idle_s=60.0)
    assert users.start("u", "s1") is None  # no history: zero
    final = model.advance_many([np.array([3, 17, 5])], model.zero_state(1))
    users.seen("u", "s1", final)
    start = users.start("u", "s2")
    assert start is not None
    user = final[:, -model.user_size :]
    np.testing.assert_array_equal(start, model.end_session(user, final)[1])
    assert users.start("u", "s2") is start  # same session: no second hand-over
    assert users.start("u", "s3") is start  # s2 never ran the model: nothing to hand over
    clock.now += 61  # idle: s3 ended, but it ran nothing either
    assert users.start("u", "s3") is start


def test_user_sessions_refuse_a_model_without_a_user_graph(tiny):
    with pytest.raises(ValueError, match="user graph"):
        UserSessions(ExportedModel.load(tiny.export_dir, "cpu"), UserStore(1, 1.0), 1.0)


def test_score_items_reads_user_id_as_recommend_does(start_hrnn, hrnn):
    running = start_hrnn()
    ask(running, "s1", FIRST, user_id="u")
    candidates = hrnn.item_ids[::5]
    request = pb.ScoreItemsRequest(session_id="s2", clicks=SECOND, candidates=candidates,
                                   user_id="u")  # fmt: skip
    reply = running.client.stub.ScoreItems(request, timeout=10)
    got = {item.item_id: item.score for item in reply.items}
    expected = hrnn.scores([FIRST, SECOND])
    np.testing.assert_allclose([got[i] for i in candidates],
                               [expected[hrnn.item_ids.index(i)] for i in candidates],
                               rtol=RTOL, atol=ATOL)  # fmt: skip
    request.user_id = "secret-user" * 30  # too long: refused without quoting it
    with pytest.raises(grpc.RpcError) as err:
        running.client.stub.ScoreItems(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "secret-user" not in (err.value.details() or "")
