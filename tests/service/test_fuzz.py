"""Fuzzing over a real connection: 10,000 generated requests, well-formed and not, never get
INTERNAL, never stop the server, and leave its memory flat."""

from __future__ import annotations

import resource

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.proto import recommender_pb2 as pb

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
    assert server.handlers.engine is not None  # still serving
    assert len(server.handlers.engine.cache) <= 4000
