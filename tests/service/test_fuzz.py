"""Fuzzing over a real connection: 10,000 generated requests, well-formed and not, never get
INTERNAL, never stop the server, and leave its memory flat; afterwards the same connection
still gets correct answers and the server is SERVING."""

from __future__ import annotations

import asyncio
import resource

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.proto import recommender_pb2 as pb
from service.proto import recommender_pb2_grpc as pb_grpc
from service.server import SERVICE_NAME

ANSWERS = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def fuzz_target(tiny):
    """A server shared by the module's examples (starting one per example would dominate)."""
    from service.config import ServiceConfig
    from service.server import RecommendationServer

    config = ServiceConfig(
        model_dir=tiny.export_dir, host="127.0.0.1", port=0, metrics_port=0, drain_s=0,
        max_clicks=20, max_exclude=20, max_candidates=20,
    )  # fmt: skip
    server = RecommendationServer(config)
    server.start()
    server.load_model()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    codes: dict[str, int] = {}
    yield server, channel, codes
    channel.close()
    server.stop(0, 0)


def send(channel: grpc.Channel, method: str, data: bytes, codes: dict[str, int]) -> None:
    raw = channel.unary_unary(f"/recsys.v1.Recommender/{method}")
    try:
        raw(data, timeout=10)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    codes[code] = codes.get(code, 0) + 1
    assert code in ANSWERS, code


def ids(tiny_ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(tiny_ids), st.text(max_size=40), st.text(min_size=120))


@pytest.mark.slow
def test_ten_thousand_generated_requests_never_break_the_server(fuzz_target, tiny):
    server, channel, codes = fuzz_target
    item = ids(tiny.item_ids)
    recommend = st.builds(
        pb.RecommendRequest,
        session_id=st.text(max_size=300),
        clicks=st.lists(item, max_size=25),
        top_k=st.integers(-(2**31), 2**31 - 1),
        exclude_items=st.lists(item, max_size=25),
        exclude_clicked=st.booleans(),
        strict=st.booleans(),
    )
    score = st.builds(
        pb.ScoreItemsRequest,
        session_id=st.text(max_size=40),
        clicks=st.lists(item, max_size=25),
        candidates=st.lists(item, max_size=25),
        strict=st.booleans(),
    )
    rss: list[float] = []

    @settings(max_examples=4000, **SETTINGS)
    @given(recommend)
    def structured_recommend(request: pb.RecommendRequest) -> None:
        send(channel, "Recommend", request.SerializeToString(), codes)

    @settings(max_examples=2000, **SETTINGS)
    @given(score)
    def structured_score(request: pb.ScoreItemsRequest) -> None:
        send(channel, "ScoreItems", request.SerializeToString(), codes)

    @settings(max_examples=4000, **SETTINGS)
    @given(st.binary(max_size=300), st.sampled_from(["Recommend", "ScoreItems", "Status"]))
    def raw_bytes(data: bytes, method: str) -> None:
        send(channel, method, data, codes)

    structured_recommend()
    rss.append(rss_mb())
    structured_score()
    raw_bytes()
    rss.append(rss_mb())
    assert sum(codes.values()) >= 10_000
    assert codes.get("OK", 0) > 1000 and codes.get("INVALID_ARGUMENT", 0) > 1000
    assert rss[-1] - rss[0] < 50  # MB: flat, not growing with the calls
    assert len(server.handlers.engine.cache) <= 4000
    still_answers_correctly(server, channel, tiny)


def still_answers_correctly(server, channel: grpc.Channel, tiny) -> None:
    """Well-formed calls over the fuzzed connection: ScoreItems gives PyTorch's scores,
    Recommend what the engine computes directly for the same request, health is SERVING."""
    stub = pb_grpc.RecommenderStub(channel)
    clicks = [tiny.item_ids[i] for i in (3, 17, 3, 42)]
    candidates = tiny.item_ids[:20]  # the fixture's max_candidates
    scored = stub.ScoreItems(
        pb.ScoreItemsRequest(session_id="after-fuzz", clicks=clicks, candidates=candidates),
        timeout=10,
    )
    expected = tiny.scores_after(clicks)
    by_id = {it.item_id: it.score for it in scored.items}
    assert sorted(by_id) == sorted(candidates)
    np.testing.assert_allclose(
        [by_id[c] for c in candidates], expected[: len(candidates)], rtol=1e-5, atol=1e-6
    )

    request = pb.RecommendRequest(session_id="after-fuzz", clicks=clicks, top_k=10)
    answer = stub.Recommend(request, timeout=10)
    engine = server.handlers.engine

    async def direct():  # on the server's loop, where the engine lives (single-threaded)
        # the session's clicks again: nothing new for the online layer to learn, so the
        # engine starts from the state the call above left
        return engine.recommend_now(engine.decode(request))

    result = asyncio.run_coroutine_threadsafe(direct(), server._loop).result(timeout=10)
    assert len(answer.items) == 10 and list(answer.unknown_clicks) == []
    assert [it.item_id for it in answer.items] == result.item_ids
    assert [it.score for it in answer.items] == pytest.approx(result.scores, rel=1e-4)

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        check = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
