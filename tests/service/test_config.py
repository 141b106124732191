"""Service configuration: defaults, environment variables, flags over variables, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import PUT_ITEMS, ServiceConfig, load_config


def test_defaults_are_the_documented_ones():
    cfg = load_config([], {"RECSYS_MODEL_DIR": "/models/x"})
    assert cfg == ServiceConfig(model_dir=Path("/models/x"))
    assert (cfg.host, cfg.port, cfg.metrics_port, cfg.device) == ("0.0.0.0", 50051, 9090, "auto")
    assert (cfg.cache_size, cfg.cache_mb, cfg.cache_ttl_s) == (100_000, 256.0, 1800.0)
    assert (cfg.drain_s, cfg.grace_s, cfg.reload_poll_s) == (2.0, 10.0, 5.0)
    assert (cfg.max_batch, cfg.max_wait_ms, cfg.max_queue) == (64, 4.0, 512)
    assert (cfg.max_clicks, cfg.max_item_id_bytes, cfg.log_level) == (200, 128, "INFO")
    assert cfg.reuse_port is False and cfg.tls_cert is None
    assert (cfg.online, cfg.blend_model_weight, cfg.online_half_life_s) == (True, 0.7, 3600.0)


def test_the_receive_limit_is_close_to_the_largest_valid_request():
    cfg = ServiceConfig(model_dir=Path("m"))
    ids = ["i" * cfg.max_item_id_bytes]
    from service.proto import recommender_pb2 as pb

    largest = (
        pb.ScoreItemsRequest(
            session_id="s" * 256, clicks=ids * cfg.max_clicks, candidates=ids * cfg.max_candidates
        ).ByteSize()
        + pb.RecommendRequest(exclude_items=ids * cfg.max_exclude).ByteSize()
    )
    assert largest <= cfg.max_request_bytes <= 1.1 * largest + 8192
    assert cfg.max_request_bytes < 512 * 1024  # far below gRPC's 4 MB default


def test_the_receive_limit_keeps_room_for_put_items_when_the_call_limits_are_low():
    from service.proto import recommender_pb2 as pb

    cfg = ServiceConfig(model_dir=Path("m"), max_clicks=5, max_exclude=5, max_candidates=5)
    item_id = "i" * cfg.max_item_id_bytes
    items = [pb.CatalogueItem(item_id=item_id, expires_at=2e9)] * PUT_ITEMS
    largest = pb.PutItemsRequest(items=items, remove_item_ids=[item_id] * PUT_ITEMS)
    assert largest.ByteSize() <= cfg.max_request_bytes


def test_every_setting_comes_from_its_environment_variable():
    env = {
        "RECSYS_MODEL_DIR": "/m", "RECSYS_HOST": "127.0.0.1", "RECSYS_PORT": "6000",
        "RECSYS_METRICS_PORT": "6001", "RECSYS_DEVICE": "cpu", "RECSYS_CACHE_SIZE": "5",
        "RECSYS_CACHE_TTL_S": "2.5", "RECSYS_GRACE_S": "3", "RECSYS_MAX_CLICKS": "50",
        "RECSYS_MAX_BATCH": "8", "RECSYS_ORT_THREADS": "1", "RECSYS_LOG_LEVEL": "debug",
        "RECSYS_CACHE_MB": "64", "RECSYS_DRAIN_S": "1", "RECSYS_MAX_WAIT_MS": "0.5",
        "RECSYS_MAX_QUEUE": "100", "RECSYS_RELOAD_POLL_S": "0", "RECSYS_REUSE_PORT": "true",
        "RECSYS_MAX_ITEM_ID_BYTES": "64", "RECSYS_MAX_EXCLUDE": "10",
        "RECSYS_MAX_CANDIDATES": "20", "RECSYS_TLS_CERT": "/c.pem", "RECSYS_TLS_KEY": "/k.pem",
        "RECSYS_TLS_CLIENT_CA": "/ca.pem", "RECSYS_ONLINE": "0",
        "RECSYS_BLEND_MODEL_WEIGHT": "0.7", "RECSYS_ONLINE_HALF_LIFE_S": "600",
        "RECSYS_ONLINE_MAX_ITEMS": "1000",
    }  # fmt: skip
    cfg = load_config([], env)
    assert cfg == ServiceConfig(
        model_dir=Path("/m"), host="127.0.0.1", port=6000, metrics_port=6001, device="cpu",
        cache_size=5, cache_ttl_s=2.5, grace_s=3.0, max_clicks=50, max_batch=8, ort_threads=1,
        log_level="debug", cache_mb=64.0, drain_s=1.0, max_wait_ms=0.5, max_queue=100,
        reload_poll_s=0.0, reuse_port=True, max_item_id_bytes=64, max_exclude=10,
        max_candidates=20, tls_cert=Path("/c.pem"), tls_key=Path("/k.pem"),
        tls_client_ca=Path("/ca.pem"), online=False, blend_model_weight=0.7,
        online_half_life_s=600.0, online_max_items=1000,
    )  # fmt: skip
    assert cfg.log_level_number == 10


def test_flags_override_environment_variables():
    env = {"RECSYS_MODEL_DIR": "/env", "RECSYS_PORT": "6000", "RECSYS_CACHE_SIZE": "5"}
    cfg = load_config(["--model", "/flag", "--port", "7000"], env)
    assert (cfg.model_dir, cfg.port, cfg.cache_size) == (Path("/flag"), 7000, 5)


def test_a_missing_model_says_how_to_give_one():
    with pytest.raises(ValueError, match="pass --model DIR or set RECSYS_MODEL_DIR"):
        load_config([], {})


def test_an_unparsable_variable_is_named():
    with pytest.raises(ValueError, match="RECSYS_MAX_BATCH='many' is not a valid --max-batch"):
        load_config(["--model", "m"], {"RECSYS_MAX_BATCH": "many"})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "70000"], "port=70000 is not a TCP port"),
        (["--device", "tpu"], "device='tpu' must be one of auto, cpu, cuda"),
        (["--max-batch", "0"], "max_batch=0 must be positive"),
        (["--tls-cert", "c.pem"], "tls_cert and tls_key go together"),
        (["--drain-s", "-1"], "drain_s=-1.0 must not be negative"),
        (["--cache-size", "-1"], "cache_size=-1 must be >= 0"),
        (["--log-level", "LOUD"], "log_level='LOUD'"),
        (["--max-clicks", "20000000"], "more than gRPC's 2,147,483,647; lower them"),
    ],
)
def test_out_of_range_values_are_refused_with_the_reason(flags, message):
    with pytest.raises(ValueError, match=message):
        load_config(["--model", "m", *flags], {})
