"""Safe learning (issue #20): the attacks on the online layer, tried against a real server in
its shipped configuration (online layer on), over gRPC on 127.0.0.1.

Each attack's first calls go over the wire (so the handler's path, metadata and refusals
included, is the one tested); the bulk of its calls goes through the same server's engine
in-process (Recommender.recommend_now: the same decode, guard and online layer, without a
round trip), to keep each test to a few seconds. What other users are shown afterwards is
always asked over gRPC.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from service.config import load_config
from service.pipeline.recommender import Recommender
from service.proto import recommender_pb2 as pb
from service.proto import recommender_pb2_grpc as pb_grpc
from service.server import RecommendationServer

from .conftest import TinyModel

EVIL = "EVIL-1"
TOKEN = "s3cret-catalogue-token"
WIRE = 50  # calls of each attack sent over gRPC; the rest in-process


@dataclass
class Served:
    server: RecommendationServer
    stub: pb_grpc.RecommenderStub

    @property
    def engine(self) -> Recommender:
        assert self.server.handlers.engine is not None
        return self.server.handlers.engine

    def top(self, clicks: list[str], session: str = "victim", k: int = 20) -> list[str]:
        """Another user's recommendations, over gRPC. k above the model's 60 items shows
        every item the online layer may recommend, whatever the scorer puts first."""
        reply = self.stub.Recommend(pb.RecommendRequest(session_id=session, clicks=clicks, top_k=k))
        return [item.item_id for item in reply.items]

    def call(
        self, session: str, clicks: list[str], client: str = "", strict: bool = False
    ) -> grpc.StatusCode:
        metadata = (("x-client-id", client),) if client else ()
        request = pb.RecommendRequest(session_id=session, clicks=clicks, strict=strict)
        try:
            self.stub.Recommend(request, metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    def call_in_process(self, session: str, clicks: list[str], client: str = "") -> None:
        engine = self.engine
        request = pb.RecommendRequest(session_id=session, clicks=clicks)
        engine.recommend_now(engine.decode(request, client))

    def attack(self, n: int, calls: Callable[[int], tuple[str, list[str], str]]) -> None:
        """n calls (session, clicks, client id): the first WIRE over gRPC, the rest in-process."""
        for i in range(n):
            session, clicks, client = calls(i)
            if i < WIRE:
                assert self.call(session, clicks, client) is grpc.StatusCode.OK
            else:
                self.call_in_process(session, clicks, client)

    def put_items(self, items: list[str], token: str | None = TOKEN) -> pb.PutItemsResponse:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        request = pb.PutItemsRequest(items=[pb.CatalogueItem(item_id=i) for i in items])
        return self.stub.PutItems(request, metadata=metadata, timeout=10)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def not_learnt(self, reason: str) -> float:
        pattern = rf'^recsys_clicks_not_learnt_total{{reason="{reason}"}} (\S+)$'
        return float(re.search(pattern, self.metrics(), re.M).group(1))


@pytest.fixture
def start(tiny: TinyModel) -> Iterator[Callable[..., Served]]:
    """start(**overrides) -> a loaded server in the shipped configuration (as `python -m
    service --model DIR` in a clean environment) on 127.0.0.1, ports 0."""
    started: list[tuple[RecommendationServer, grpc.Channel]] = []

    def run(**overrides: object) -> Served:
        argv = ["--model", str(tiny.export_dir), "--host", "127.0.0.1", "--port", "0"]
        config = replace(load_config([*argv, "--metrics-port", "0"], environ={}), **overrides)
        server = RecommendationServer(config)
        server.start()
        server.load_model()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return Served(server, pb_grpc.RecommenderStub(channel))

    yield run
    for server, channel in started:
        channel.close()
        server.stop(0, 0)


def shoppers(
    name: str, first: str, then: Callable[[int], str], client: Callable[[int], str]
) -> Callable[[int], tuple[str, list[str], str]]:
    """Calls 2i and 2i+1 of real sessions: session i clicks `first`, then `then(i)`, one
    call per click, from `client(i)`."""

    def calls(i: int) -> tuple[str, list[str], str]:
        n = i // 2
        clicks = [first] if i % 2 == 0 else [first, then(n)]
        return f"{name}-{n}", clicks, client(n)

    return calls


def popular(tiny: TinyModel) -> str:
    return tiny.item_ids[int(tiny.popularity.argmax())]


def others(tiny: TinyModel, n: int = 30) -> list[str]:
    return [item for item in tiny.item_ids if item != popular(tiny)][:n]


def assert_nobody_is_shown(served: Served, item: str, tiny: TinyModel) -> None:
    """item is in no other user's top 100 (so in no top 20): after the popular item, or
    after any of 30 others."""
    for i, first in enumerate([popular(tiny), *others(tiny)]):
        assert item not in served.top([first], session=f"victim-{i}", k=100), first


def test_calls_without_a_session_id_teach_nothing(start, tiny):
    served = start()
    served.attack(3000, lambda i: ("", [popular(tiny), EVIL], ""))
    served.attack(100, lambda i: ("", [popular(tiny), others(tiny)[0]], ""))  # real items too
    assert served.server.online.model.stats()["items"] == 0  # before the victims' calls
    assert served.not_learnt("no_session") == 3100
    assert_nobody_is_shown(served, EVIL, tiny)


def test_fresh_sessions_cannot_teach_an_item_in_no_catalogue(start, tiny):
    served = start()
    served.attack(3000, lambda i: (f"fresh-{i}", [popular(tiny), EVIL], ""))
    assert_nobody_is_shown(served, EVIL, tiny)
    learnt, _, _ = served.server.online.model.score([popular(tiny)], 2e9, 1000)
    assert EVIL not in learnt
    assert served.not_learnt("unknown_item") >= 3000


def test_refused_calls_teach_nothing(start, tiny):
    served = start(catalogue_token=TOKEN)
    served.put_items(["NEW-1"])  # in the catalogue: only the refusal can keep it unlearnt
    for i in range(500):
        code = served.call(f"refused-{i}", ["NEW-1"], strict=True)
        assert code is grpc.StatusCode.NOT_FOUND  # strict, and no click the model knows
        assert served.call(f"evil-{i}", ["EVIL-0", EVIL], strict=True) is code
    assert served.server.online.model.stats()["items"] == 0
    assert_nobody_is_shown(served, "NEW-1", tiny)
    assert_nobody_is_shown(served, EVIL, tiny)
    assert served.not_learnt("refused") == 1000


def test_one_client_with_fresh_sessions_cannot_lift_a_rare_item(start, tiny):
    served = start()
    p = popular(tiny)
    # a popular item's traffic: 1,000 shoppers, each their own client, after p one of 25
    followers = others(tiny, 25)
    served.attack(2000, shoppers("bg", p, lambda n: followers[n % 25], lambda n: f"bg-{n}"))
    rare = next(item for item in reversed(tiny.item_ids) if item not in served.top([p]))
    # one client, 3,000 fresh sessions: after p always the rare item, and after every
    # other item too (distinct transitions, so the per-client cap is what stops them)
    sources = [p, *others(tiny, 59)]
    learnt = served.server.guard.stats.learnt
    served.attack(3000, lambda i: (f"atk-{i}", [sources[i % 60], rare], "attacker"))
    assert served.server.guard.stats.learnt - learnt == 20  # the client's cap per minute
    assert rare not in served.top([p], session="another-shopper")
    held_back = served.not_learnt("client_cap") + served.not_learnt("repeat_transition")
    assert held_back == 2980 and served.not_learnt("client_cap") > 0


def test_the_same_push_from_many_clients_is_learnt(start, tiny):
    """The control of the test above: what the cap holds back is real evidence when it comes
    from many clients, so the item the attacker could not lift does rise."""
    served = start()
    p = popular(tiny)
    followers = others(tiny, 25)
    served.attack(2000, shoppers("bg", p, lambda n: followers[n % 25], lambda n: f"bg-{n}"))
    rare = next(item for item in reversed(tiny.item_ids) if item not in served.top([p]))
    served.attack(200, shoppers("trend", p, lambda n: rare, lambda n: f"fan-{n}"))
    assert rare in served.top([p], session="another-shopper")


def test_callers_without_a_known_click_get_a_full_list_that_one_click_cannot_decide(start, tiny):
    served = start()

    def cold(k: int) -> pb.RecommendResponse:
        request = pb.RecommendRequest(session_id="cold", clicks=["NOT-AN-ITEM"], top_k=k)
        return served.stub.Recommend(request, timeout=10)

    before = cold(20)
    assert before.source == pb.SOURCE_POPULARITY and len(before.items) == 20
    rare = next(i for i in reversed(tiny.item_ids) if i not in [x.item_id for x in before.items])
    assert served.call("one-click", [rare], client="c1") is grpc.StatusCode.OK
    again = cold(20)
    assert again.source == pb.SOURCE_POPULARITY and again.items == before.items
    # live traffic from many clients: now the online layer ranks these calls
    p, followers = popular(tiny), others(tiny, 25)
    served.attack(400, shoppers("bg", p, lambda n: followers[n % 25], lambda n: f"bg-{n}"))
    after = cold(20)
    assert after.source == pb.SOURCE_ONLINE and len(after.items) == 20
    # it tracks 26 items: a list of 50 is filled up with training popularity, scored 0
    wide = cold(50)
    assert wide.source == pb.SOURCE_BLEND and len(wide.items) == 50
    sources = [item.source for item in wide.items]
    n_online = sources.count(pb.SOURCE_ONLINE)
    assert sources == [pb.SOURCE_ONLINE] * n_online + [pb.SOURCE_POPULARITY] * (50 - n_online)
    assert [item.score for item in wide.items[n_online:]] == [0.0] * (50 - n_online)
    assert len({item.item_id for item in wide.items}) == 50


def test_one_client_alone_never_decides_the_cold_list(start, tiny):
    """However many clicks one client may teach (its cap raised here to stand for many
    windows), calls without a known click get training popularity until 20 clients
    taught the layer."""
    served = start(learn_client_clicks=1000)
    items, rare = tiny.item_ids, tiny.item_ids[int(tiny.popularity.argmin())]

    def distinct(i: int) -> tuple[str, list[str], str]:  # 300 distinct transitions
        x = i % 60
        return f"one-{i}", [items[x], items[(x + 1 + i // 60) % 60]], "c1"

    served.attack(300, distinct)
    assert served.server.online.clicks_learnt == 300
    request = pb.RecommendRequest(session_id="cold", clicks=["NOT-AN-ITEM"], top_k=20)
    assert served.stub.Recommend(request, timeout=10).source == pb.SOURCE_POPULARITY
    served.attack(19, lambda i: (f"other-{i}", [rare], f"c{i + 2}"))
    assert served.stub.Recommend(request, timeout=10).source != pb.SOURCE_POPULARITY


def test_put_items_needs_a_configured_token(start):
    served = start()
    with pytest.raises(grpc.RpcError) as off:
        served.put_items(["NEW-1"])
    assert off.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "--catalogue-token" in off.value.details()
    served = start(catalogue_token=TOKEN)
    for token in (None, "wrong"):
        with pytest.raises(grpc.RpcError) as refused:
            served.put_items(["NEW-1"], token=token)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_put_items_takes_its_thousand_items_however_low_the_call_limits_are(start):
    served = start(catalogue_token=TOKEN, max_clicks=5, max_exclude=5, max_candidates=5)
    items = [f"sku-{i:06d}-" + "x" * 100 for i in range(1000)]
    assert served.put_items(items).added == 1000


def test_an_announced_item_becomes_recommendable(start, tiny):
    served = start(catalogue_token=TOKEN)
    p = popular(tiny)
    served.attack(20, shoppers("early", p, lambda n: "NEW-1", lambda n: f"early-{n}"))
    reply = served.put_items(["NEW-1"])
    assert (reply.added, reply.announced) == (1, 1)
    assert "NEW-1" not in served.top([p], k=100)  # clicked before it was announced: not learnt
    served.attack(60, shoppers("fan", p, lambda n: "NEW-1", lambda n: f"fan-{n}"))
    assert "NEW-1" in served.top([p], k=100)
    assert 'recsys_catalogue_items{source="announced"} 1.0' in served.metrics()


def test_open_catalogue_admits_an_item_after_enough_sessions_and_clients(start, tiny):
    served = start(catalogue_open=True)
    p = popular(tiny)
    served.attack(400, shoppers("one", p, lambda n: "NEW-2", lambda n: "one-client"))
    assert "NEW-2" not in served.top([p], k=100)  # 200 sessions, but one client
    served.attack(24, shoppers("many", p, lambda n: "NEW-2", lambda n: f"many-{n}"))
    served.attack(60, shoppers("later", p, lambda n: "NEW-2", lambda n: f"later-{n}"))
    assert "NEW-2" in served.top([p], k=100)
    assert 'recsys_catalogue_items{source="open"} 1.0' in served.metrics()


def test_a_session_teaches_each_transition_once(start, tiny):
    served = start()
    p, q = popular(tiny), others(tiny)[0]
    clicks = [p, q] * 20
    for n in range(1, len(clicks) + 1):
        assert served.call("back-and-forth", clicks[:n]) is grpc.StatusCode.OK
        assert served.call("back-and-forth", clicks[:n]) is grpc.StatusCode.OK  # a retry
    # p (first click), p -> q and q -> p: 3 learnt; the other 37 clicks repeat those
    assert served.server.guard.stats.learnt == 3
    assert served.not_learnt("repeat_transition") == 37


def test_the_layer_learns_only_what_the_guard_chose_after_it_forgot_the_session(start, tiny):
    """The guard forgets a session once cache_size others came after it, while the online
    layer may still remember it: a long call of that session then teaches its last click
    only (the guard's choice), never every click since the layer's record of it."""
    served = start(cache_size=300)
    p, q, rest = popular(tiny), others(tiny)[0], others(tiny)[1:21]
    assert served.call("s0", [p]) is grpc.StatusCode.OK
    assert served.call("s0", [p, q]) is grpc.StatusCode.OK
    # 301 sessions whose only click is in no catalogue: the guard records each, the layer
    # none, so s0 leaves the guard's records alone
    served.attack(301, lambda i: (f"flush-{i}", [EVIL], ""))
    learnt, layer = served.server.guard.stats.learnt, served.server.online.clicks_learnt
    assert served.call("s0", [p, q, *rest]) is grpc.StatusCode.OK  # 20 clicks it never sent
    assert served.server.guard.stats.learnt - learnt == 1
    assert served.server.online.clicks_learnt - layer == 1


def test_a_client_teaches_a_skip_transition_once_whatever_lies_between(start, tiny):
    """The layer also learns click i after click i - 2 (at half weight): [a, y, t] with
    a fresh y each session would teach a -> t once per session without this rule."""
    served = start()
    a, t, middles = popular(tiny), others(tiny)[0], others(tiny)[1:10]
    for n, y in enumerate(middles):
        for clicks in ([a], [a, y], [a, y, t]):
            assert served.call(f"skip-{n}", clicks, client="c1") is grpc.StatusCode.OK
    # a, y1, t from the first session; then each session's y only: its a and its t repeat
    assert served.server.guard.stats.learnt == 3 + 8
    assert served.not_learnt("repeat_transition") == 2 * 8


@pytest.mark.parametrize("cache_size", [100_000, 0])
def test_the_session_rules_hold_with_the_state_cache_off(start, tiny, cache_size):
    """--cache-size 0 turns off the cached states, not the guard's session records: two
    sessions that resend one call each in turn teach its transition once each."""
    served = start(cache_size=cache_size)
    p, q = popular(tiny), others(tiny)[0]
    for i in range(60):
        assert served.call("AB"[i % 2], [p, q]) is grpc.StatusCode.OK
    assert served.server.guard.stats.learnt == 2  # each session's last click, once


def test_a_session_teaches_at_most_its_cap(start, tiny):
    served = start(learn_session_clicks=10)
    for n in range(1, 31):
        assert served.call("long", tiny.item_ids[:n]) is grpc.StatusCode.OK
    assert served.server.guard.stats.learnt == 10
    assert served.not_learnt("session_cap") == 20


def test_a_client_id_sent_twice_is_refused(start, tiny):
    """A caller adding its own x-client-id before the one a proxy appends must not choose
    whose cap it spends."""
    served = start()
    request = pb.RecommendRequest(session_id="s1", clicks=[popular(tiny)])
    twice = (("x-client-id", "mine"), ("x-client-id", "the-proxys"))
    with pytest.raises(grpc.RpcError) as refused:
        served.stub.Recommend(request, metadata=twice, timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'x-client-id' came 2 times" in refused.value.details()
    assert served.server.guard.stats.learnt == 0


def test_learning_without_client_ids_is_logged_once(start, tiny, caplog):
    served = start()
    for n in range(3):
        assert served.call(f"s{n}", [popular(tiny)]) is grpc.StatusCode.OK
    warnings = [r for r in caplog.records if "without x-client-id" in r.getMessage()]
    assert len(warnings) == 1 and "send x-client-id" in warnings[0].getMessage()


def test_a_client_id_longer_than_a_hash_is_refused(start, tiny):
    served = start()
    code = served.call("s1", [popular(tiny)], client="x" * 200)
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_name_every_reason_and_the_catalogue(start, tiny):
    served = start()
    served.call("", [popular(tiny)])
    text = served.metrics()
    for reason in ("no_session", "refused", "unknown_item", "repeat_transition"):
        assert f'recsys_clicks_not_learnt_total{{reason="{reason}"}}' in text
    for reason in ("session_cap", "client_cap"):
        assert f'recsys_clicks_not_learnt_total{{reason="{reason}"}}' in text
    assert f'recsys_catalogue_items{{source="model"}} {float(len(tiny.item_ids))}' in text
    assert "recsys_clicks_learnt_total 0.0" in text


def test_the_catalogue_file_announces_items(start, tiny, tmp_path: Path):
    listing = tmp_path / "catalogue.txt"
    listing.write_text("# new this week\nNEW-3\nSALE-1\t4102444800\n")
    served = start(catalogue_file=listing)
    assert 'recsys_catalogue_items{source="announced"} 2.0' in served.metrics()
    p = popular(tiny)
    served.attack(60, shoppers("fan", p, lambda n: "NEW-3", lambda n: f"fan-{n}"))
    assert "NEW-3" in served.top([p], k=100)
