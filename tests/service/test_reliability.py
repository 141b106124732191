"""The server under pressure, over real connections: overload, deadlines, cold prefixes cut
to the deadline, message and id limits, undecodable bytes, batching, long sessions."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.proto import recommender_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING


def slow_model(running, seconds: float) -> threading.Event:
    """Make every model run of the loaded engine take `seconds` longer (a busy model); the
    event is set once a run has begun (its calls have left the queue)."""
    batcher = running.server.handlers.engine.batcher
    run, begun = batcher.run, threading.Event()

    def slow(jobs):
        begun.set()
        time.sleep(seconds)
        run(jobs)

    batcher.run = slow
    return begun


def sample(running, name: str) -> float:
    value = running.server.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll until `condition()` holds: what a sleep would hope for, on a machine of any
    speed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def test_overload_is_refused_at_once_and_health_checks_still_answer(start_server, tiny):
    running = start_server(max_queue=4, max_batch=2)
    slow_model(running, 0.05)
    request = pb.RecommendRequest(clicks=tiny.item_ids[:3], top_k=5)
    with grpc.insecure_channel(running.target) as channel:
        stub = running.client.stub.__class__(channel)
        health = health_pb2_grpc.HealthStub(channel)
        calls = [stub.Recommend.future(request, timeout=30) for _ in range(64)]
        checks = [
            health.Check.future(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(34)
        ]
        assert all(c.result().status == SERVING for c in checks)
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append("OK")
            except grpc.RpcError as err:
                codes.append(err.code().name)
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert 5 <= codes.count("OK") < 64  # the queue (4) and the batch in flight were taken
    assert sample(running, "recsys_overload_refusals_total") == codes.count("RESOURCE_EXHAUSTED")


def test_a_refused_call_says_so_at_once_not_after_the_queue_drained(start_server, tiny):
    running = start_server(max_queue=1, max_batch=1)
    begun = slow_model(running, 1.5)
    batcher = running.server.handlers.engine.batcher
    request = pb.RecommendRequest(clicks=tiny.item_ids[:2])
    busy = [running.client.stub.Recommend.future(request, timeout=30)]
    assert begun.wait(20)  # the first call is in the model for 1.5 s
    busy.append(running.client.stub.Recommend.future(request, timeout=30))
    wait_for(lambda: len(batcher) == 1)  # the second fills the queue
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        running.client.stub.Recommend(request, timeout=30)
    took = time.perf_counter() - started
    print(f"refused after {took * 1e3:.1f} ms")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "another replica" in caught.value.details()
    assert took < 1.0  # well before the model is free again (1.5 s); milliseconds when idle
    assert [call.exception() for call in busy] == [None, None]


def test_a_call_whose_deadline_passed_in_the_queue_is_not_run(start_server, tiny):
    running = start_server(max_batch=1)
    begun = slow_model(running, 1.5)
    request = pb.RecommendRequest(clicks=tiny.item_ids[:2])
    first = running.client.stub.Recommend.future(request, timeout=30)
    assert begun.wait(20)  # the first call is in the model for 1.5 s; the next one queues
    with pytest.raises(grpc.RpcError) as caught:
        running.client.stub.Recommend(request, timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first.result()
    # the expired call's turn comes once the first has run: dropped, not run
    wait_for(lambda: sample(running, "recsys_batch_expired_total") == 1)
    print(f"batched calls run: {sample(running, 'recsys_batched_calls_total'):g}")
    assert sample(running, "recsys_batched_calls_total") == 1


def test_a_cold_prefix_is_cut_to_the_latest_clicks_that_fit_the_deadline(start_server, tiny):
    running = start_server()
    running.server.handlers.engine.prefix_s_per_click = 0.04  # pretend clicks are slow
    clicks = [tiny.item_ids[i % 60] for i in range(200)]
    response = running.client.stub.Recommend(
        pb.RecommendRequest(session_id="long", clicks=clicks, top_k=5), timeout=2.0
    )
    print(f"skipped {response.skipped_clicks} of the 199 prefix clicks")
    # at most 2 s / 40 ms = 50 of the 199 prefix clicks fit, however fast the machine; a
    # slow one fits fewer, down to none
    assert 149 <= response.skipped_clicks <= 199
    assert len(response.items) == 5
    assert sample(running, "recsys_prefix_clicks_skipped_total") == response.skipped_clicks
    assert len(running.server.handlers.engine.cache) == 0  # a cut state is not the session's
    relaxed = running.client.stub.Recommend(
        pb.RecommendRequest(session_id="long", clicks=clicks, top_k=5), timeout=30
    )
    assert relaxed.skipped_clicks == 0


def test_concurrent_calls_are_batched_and_answer_as_they_would_alone(start_model_only_server, tiny):
    # online layer off: the model's answers, which batching must not change
    running = start_model_only_server(max_wait_ms=20, max_batch=16)
    requests = [
        pb.RecommendRequest(session_id=f"b{n}", clicks=tiny.item_ids[n : n + 4], top_k=10)
        for n in range(16)
    ]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: running.client.stub.Recommend(r, timeout=30), requests))
    alone_server = start_model_only_server(cache_size=0)
    alone = [alone_server.client.stub.Recommend(r, timeout=30) for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
        assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], abs=1e-6)
    batches = sample(running, "recsys_batches_total")
    assert batches < 16  # some calls shared a model run
    assert sample(running, "recsys_batched_calls_total") == 16


def test_a_session_longer_than_the_click_limit_keeps_hitting_the_cache(start_server, tiny):
    running = start_server(max_clicks=50)
    session = [tiny.item_ids[(i * 7) % 60] for i in range(80)]
    for n in range(1, len(session) + 1):
        window = session[max(0, n - 50) : n]  # what a frontend sends: the latest 50 clicks
        running.client.recommend("long-session", window, top_k=3)
    assert sample(running, "recsys_session_cache_misses_total") == 1
    assert sample(running, "recsys_session_cache_hits_total") == len(session) - 1


def test_a_message_far_larger_than_any_valid_request_is_refused(served):
    huge = pb.RecommendRequest(clicks=["i"], exclude_items=["x" * 100] * 20_000)
    with pytest.raises(grpc.RpcError) as caught:
        served.client.stub.Recommend(huge, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.client.recommend("after", ["item-001"]).items


def test_an_error_quoting_long_ids_stays_short_and_keeps_its_code(served):
    ids = [f"{n}" + "z" * 120 for n in range(5)]
    with pytest.raises(grpc.RpcError) as caught:
        served.client.recommend("s", ids, strict=True)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < 400
    assert "(5 in all)" in caught.value.details()


UNDECODABLE = [
    b"\xff\xff\xff\xff",  # not protobuf at all
    b"\x12\x02\xff\xfe",  # clicks[0] with invalid UTF-8
    b"\x0a\x05abc",  # a length running past the end
]


@pytest.mark.parametrize("data", UNDECODABLE, ids=["garbage", "bad-utf8", "truncated"])
def test_undecodable_requests_are_invalid_argument_counted_and_not_logged_as_crashes(
    served, data, caplog
):
    caplog.set_level(logging.DEBUG)
    with grpc.insecure_channel(served.target) as channel:
        raw = channel.unary_unary("/recsys.v1.Recommender/Recommend")
        with pytest.raises(grpc.RpcError) as caught:
            raw(data, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid recsys.v1.RecommendRequest" in caught.value.details()
    assert not any(r.exc_info for r in caplog.records)
    assert sample(served, "recsys_undecodable_requests_total") == 0  # no such sample name
    got = served.server.metrics.registry.get_sample_value(
        "recsys_undecodable_requests_total", {"method": "Recommend"}
    )
    assert got == 1


def test_the_metrics_port_serves_metrics_only(served):
    base = f"http://127.0.0.1:{served.server.metrics_port}"
    assert b"recsys_requests_total" in urllib.request.urlopen(base + "/metrics").read()
    for path in ("/", "/debug", "/metrics/../etc"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + path)
        assert caught.value.code == 404


def test_status_names_the_model_and_the_last_reload(served, tiny):
    import json

    status = served.client.status()
    meta = json.loads((tiny.export_dir / "metadata.json").read_text())
    assert status.model_version == meta["model_version"]
    assert status.n_items == len(tiny.item_ids)
    assert status.last_reload_result == "ok"
    assert status.loaded_at > 0 and status.provider == "CPUExecutionProvider"
