"""The gRPC server over a real connection on 127.0.0.1: answers against PyTorch, health,
reflection, metrics and every kind of bad input. Answers compared with the model's own
ranking come from a server with the online layer off (`served_model_only`); the rest run the
shipped configuration (`served`)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from service.proto import recommender_pb2 as pb

SERVICE = "recsys.v1.Recommender"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def ranked(scores: np.ndarray, exclude: set[int], k: int) -> list[int]:
    """Indices by descending score, lower index first among equals, skipping `exclude`."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [i for i in order if i not in exclude][:k]


def test_recommend_matches_pytorch_and_may_return_clicked_items_by_default(served_model_only, tiny):
    clicks = [tiny.item_ids[i] for i in (3, 17, 3, 42)]
    response = served_model_only.client.recommend("s1", clicks, top_k=len(tiny.item_ids))
    expected_scores = tiny.scores_after(clicks)
    expected = ranked(expected_scores, set(), len(tiny.item_ids))
    assert set(clicks) <= {it.item_id for it in response.items}  # what offline evaluation ranks
    assert [it.item_id for it in response.items] == [tiny.item_ids[i] for i in expected]
    np.testing.assert_allclose(
        [it.score for it in response.items], expected_scores[expected], rtol=1e-5, atol=1e-6
    )
    assert response.source == pb.SOURCE_MODEL
    assert list(response.unknown_clicks) == []


def test_exclude_items_and_exclude_clicked_change_the_candidate_set(served_model_only, tiny):
    clicks = [tiny.item_ids[i] for i in (5, 6)]
    scores = tiny.scores_after(clicks)
    banned = [tiny.item_ids[i] for i in ranked(scores, {5, 6}, 3)]
    everything = len(tiny.item_ids)
    response = served_model_only.client.recommend(
        "", clicks, top_k=everything, exclude_items=banned + ["not-an-item"]
    )
    got = [it.item_id for it in response.items]
    assert set(got) == set(tiny.item_ids) - set(banned)
    assert set(clicks) <= set(got)
    response = served_model_only.client.recommend(
        "", clicks, top_k=10, exclude_items=banned, exclude_clicked=True
    )
    got = [it.item_id for it in response.items]
    assert got == [tiny.item_ids[i] for i in ranked(scores, {5, 6, *map(tiny.index, banned)}, 10)]


def test_unknown_clicks_are_skipped_and_echoed_in_request_order(served_model_only, tiny):
    known = [tiny.item_ids[7], tiny.item_ids[8]]
    response = served_model_only.client.recommend(
        "s2", ["x1", known[0], "x2", known[1], "x1"], top_k=5
    )
    assert list(response.unknown_clicks) == ["x1", "x2", "x1"]
    plain = served_model_only.client.recommend("", known, top_k=5)
    assert [it.item_id for it in response.items] == [it.item_id for it in plain.items]


def test_no_known_click_falls_back_to_popularity_and_says_so(served_model_only, tiny):
    # with the online layer on, its statistics of the clicks it learnt answer instead
    response = served_model_only.client.recommend(
        "s3", ["nope"], top_k=8, exclude_items=[tiny.item_ids[0]]
    )
    order = sorted(range(len(tiny.popularity)), key=lambda i: (-tiny.popularity[i], i))
    expected = [i for i in order if i != 0][:8]
    assert response.source == pb.SOURCE_POPULARITY
    assert [it.item_id for it in response.items] == [tiny.item_ids[i] for i in expected]
    assert [it.score for it in response.items] == [float(tiny.popularity[i]) for i in expected]


def test_score_items_ranks_known_candidates_and_lists_unknown_ones(served, tiny):
    clicks = [tiny.item_ids[1], tiny.item_ids[2]]
    candidates = [tiny.item_ids[i] for i in (9, 2, 30, 11)] + ["ghost"]
    response = served.client.score_items("s4", clicks, candidates)
    scores = tiny.scores_after(clicks)
    expected = sorted((9, 2, 30, 11), key=lambda i: -scores[i])
    assert [it.item_id for it in response.items] == [tiny.item_ids[i] for i in expected]
    np.testing.assert_allclose([it.score for it in response.items], scores[expected], rtol=1e-5)
    assert list(response.unknown_candidates) == ["ghost"]


def test_score_items_scores_a_repeated_candidate_once(served, tiny):
    a, b = tiny.item_ids[9], tiny.item_ids[2]
    response = served.client.score_items("s6", [tiny.item_ids[1]], [a, b, a, "ghost", "ghost"])
    assert sorted(it.item_id for it in response.items) == sorted([a, b])
    assert list(response.unknown_candidates) == ["ghost"]


def test_each_answer_has_a_fresh_uuid_and_the_exported_model_version(served, tiny):
    meta = json.loads((tiny.export_dir / "metadata.json").read_text())
    first = served.client.recommend("s5", [tiny.item_ids[4]])
    second = served.client.recommend("s5", [tiny.item_ids[4]])
    assert uuid.UUID(first.recommendation_id).version == 4
    assert first.recommendation_id != second.recommendation_id
    assert first.model_version == second.model_version == meta["model_version"]
    assert len(first.items) == 20  # top_k=0 means the default


BAD_REQUESTS = [
    ("empty clicks", dict(clicks=[]), grpc.StatusCode.INVALID_ARGUMENT, "clicks is empty"),
    ("too many clicks", dict(clicks=["item-001"] * 201), grpc.StatusCode.INVALID_ARGUMENT,
     "at most the last 200"),
    ("negative top_k", dict(top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "1 to 1000"),
    ("top_k too large", dict(top_k=1001), grpc.StatusCode.INVALID_ARGUMENT, "1 to 1000"),
    ("session id too long", dict(session_id="s" * 257), grpc.StatusCode.INVALID_ARGUMENT,
     "at most 256"),
    ("too many exclusions", dict(exclude_items=["x"] * 1001), grpc.StatusCode.INVALID_ARGUMENT,
     "at most 1000 item ids"),
    ("item id too long", dict(clicks=["i" * 129]), grpc.StatusCode.INVALID_ARGUMENT,
     "longer than 128 bytes"),
    ("strict without known click", dict(clicks=["nope", "nada"], strict=True),
     grpc.StatusCode.NOT_FOUND, "unset strict"),
    ("user id without session id", dict(session_id="", user_id="u1"),
     grpc.StatusCode.INVALID_ARGUMENT, "user_id needs a session_id"),
]  # fmt: skip


@pytest.mark.parametrize(
    "overrides, code, hint", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_recommend_requests_get_a_status_that_says_what_to_fix(served, overrides, code, hint):
    request = {**dict(session_id="bad", clicks=["item-001"], top_k=5), **overrides}
    with pytest.raises(grpc.RpcError) as caught:
        served.client.stub.Recommend(pb.RecommendRequest(**request))
    assert caught.value.code() == code
    assert hint in caught.value.details()
    assert served.client.recommend("after", ["item-001"]).items  # still serving


@pytest.mark.parametrize(
    "n_candidates, hint", [(0, "send 1 to 1000 item ids"), (1001, "at most 1000 item ids")]
)
def test_score_items_refuses_empty_or_oversized_candidate_lists(served, n_candidates, hint):
    with pytest.raises(grpc.RpcError) as caught:
        served.client.score_items("s", ["item-001"], ["item-002"] * n_candidates)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert hint in caught.value.details()


def test_strict_score_items_without_known_click_is_not_found(served):
    with pytest.raises(grpc.RpcError) as caught:
        served.client.score_items("s", ["nope"], ["item-002"], strict=True)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def health_of(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_the_model_is_loaded(start_server):
    running = start_server(load=False)
    for service in ("", SERVICE):
        assert health_of(running.target, service) == NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        running.client.recommend("s", ["item-001"])
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = running.client.status()
    assert (status.last_reload_result, status.model_version) == ("loading", "")
    running.server.load_model()
    for service in ("", SERVICE):
        assert health_of(running.target, service) == SERVING
    assert running.client.status().last_reload_result == "ok"


def test_health_watch_follows_loading_and_shutdown(start_server):
    running = start_server(load=False)
    with grpc.insecure_channel(running.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=20
        )
        assert next(watch).status == NOT_SERVING
        running.server.load_model()
        assert next(watch).status == SERVING
        # the open Watch is itself an in-flight call, so stop() waits out its grace
        stopper = threading.Thread(target=running.server.stop, args=(2.0,))
        stopper.start()
        assert next(watch).status == NOT_SERVING
        stopper.join()


def test_reflection_lists_the_recommender_and_health_services(served):
    with grpc.insecure_channel(served.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        recommender = db.FindFileContainingSymbol(SERVICE)
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    assert recommender.name == "recsys/v1/recommender.proto"
    methods = {m.name for m in recommender.service[0].method}
    assert methods == {"Recommend", "ScoreItems", "Status", "PutItems", "ForgetUser"}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a Prometheus text endpoint."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_calls_by_method_and_code_cache_hits_and_the_model(served_model_only, tiny):
    client = served_model_only.client  # online layer off: unknown clicks fall back to popularity
    client.recommend("m1", ["item-001"])  # miss
    client.recommend("m1", ["item-001", "item-002"])  # hit: extends the session
    client.score_items("m1", ["item-001", "item-002"], ["item-003"])  # hit: same clicks
    client.recommend("m2", ["unknown-a", "unknown-b"])  # fallback, 2 unknown clicks
    with pytest.raises(grpc.RpcError):
        client.recommend("m1", [])
    got = scrape(served_model_only.metrics_url)
    version = json.loads((tiny.export_dir / "metadata.json").read_text())["model_version"]
    assert got[("recsys_requests_total", (("code", "OK"), ("method", "Recommend")))] == 3
    assert got[("recsys_requests_total", (("code", "OK"), ("method", "ScoreItems")))] == 1
    assert (
        got[("recsys_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Recommend")))] == 1
    )
    assert got[("recsys_request_duration_seconds_count", (("method", "Recommend"),))] == 4
    assert got[("recsys_session_cache_hits_total", ())] == 2
    assert got[("recsys_session_cache_misses_total", ())] == 1  # m2 never reached the model
    assert got[("recsys_session_cache_entries", ())] == 1
    assert got[("recsys_session_cache_bytes", ())] > 0
    assert got[("recsys_unknown_clicks_total", ())] == 2
    assert got[("recsys_popularity_fallbacks_total", ())] == 1
    assert got[("recsys_model_loaded", ())] == 1
    info = [labels for (name, labels) in got if name == "recsys_model_info"]
    assert dict(info[0])["model_version"] == version
    assert dict(info[0])["provider"] == "CPUExecutionProvider"


def test_status_calls_are_counted_like_the_others(served):
    key = ("recsys_requests_total", (("code", "OK"), ("method", "Status")))
    before = scrape(served.metrics_url).get(key, 0)
    for _ in range(3):
        served.client.status()
    assert scrape(served.metrics_url)[key] - before == 3


def test_an_idle_or_half_sent_metrics_connection_does_not_block_other_scrapes(served):
    port = served.server.metrics_port
    idle = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /metr")  # half a request line, then silence
    try:
        with urllib.request.urlopen(served.metrics_url, timeout=3) as reply:
            assert reply.status == 200 and b"recsys_model_loaded" in reply.read()
    finally:
        idle.close()
        half.close()


def test_metrics_listen_on_their_own_address_when_given(start_server):
    running = start_server(host="127.0.0.1", metrics_host="127.0.0.2")
    port = running.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=3) as reply:
        assert reply.status == 200
    with pytest.raises(OSError):  # not on the gRPC address
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3)
