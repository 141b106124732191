"""Service configuration: defaults, environment variables, flags over variables, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ServiceConfig, load_config


def test_defaults_are_the_documented_ones():
    cfg = load_config([], {"RECSYS_MODEL_DIR": "/models/x"})
    assert cfg == ServiceConfig(model_dir=Path("/models/x"))
    assert (cfg.host, cfg.port, cfg.metrics_port, cfg.device) == ("0.0.0.0", 50051, 9090, "auto")
    assert (cfg.cache_size, cfg.cache_ttl_s, cfg.grace_s) == (100_000, 1800.0, 10.0)
    assert (cfg.max_clicks, cfg.workers, cfg.log_level) == (200, 8, "INFO")


def test_every_setting_comes_from_its_environment_variable():
    env = {
        "RECSYS_MODEL_DIR": "/m", "RECSYS_HOST": "127.0.0.1", "RECSYS_PORT": "6000",
        "RECSYS_METRICS_PORT": "6001", "RECSYS_DEVICE": "cpu", "RECSYS_CACHE_SIZE": "5",
        "RECSYS_CACHE_TTL_S": "2.5", "RECSYS_GRACE_S": "3", "RECSYS_MAX_CLICKS": "50",
        "RECSYS_WORKERS": "2", "RECSYS_ORT_THREADS": "1", "RECSYS_LOG_LEVEL": "debug",
    }  # fmt: skip
    cfg = load_config([], env)
    assert cfg == ServiceConfig(
        model_dir=Path("/m"), host="127.0.0.1", port=6000, metrics_port=6001, device="cpu",
        cache_size=5, cache_ttl_s=2.5, grace_s=3.0, max_clicks=50, workers=2, ort_threads=1,
        log_level="debug",
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
    with pytest.raises(ValueError, match="RECSYS_WORKERS='many' is not a valid --workers"):
        load_config(["--model", "m"], {"RECSYS_WORKERS": "many"})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "70000"], "port=70000 is not a TCP port"),
        (["--device", "tpu"], "device='tpu' must be one of auto, cpu, cuda"),
        (["--workers", "0"], "workers=0 must be positive"),
        (["--cache-size", "-1"], "cache_size=-1 must be >= 0"),
        (["--log-level", "LOUD"], "log_level='LOUD'"),
    ],
)
def test_out_of_range_values_are_refused_with_the_reason(flags, message):
    with pytest.raises(ValueError, match=message):
        load_config(["--model", "m", *flags], {})
