"""Configuration: reference names and defaults, files, overrides, clear errors."""

import json
from dataclasses import replace

import numpy as np
import pytest

from training.config import Config
from training.data.logs import ItemVocab
from training.fit.train import save_model
from training.models.architectures import build_model


def test_defaults_are_the_reference_implementations():
    cfg = Config()
    assert (cfg.loss, cfg.layers, cfg.batch_size, cfg.learning_rate) == (
        "cross-entropy",
        (100,),
        64,
        0.05,
    )
    assert (cfg.n_sample, cfg.sample_alpha, cfg.bpreg, cfg.elu_param) == (2048, 0.5, 1.0, 0.5)
    assert cfg.constrained_embedding and cfg.embedding == 0 and cfg.n_epochs == 10


def test_params_override_the_file_and_are_typed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"loss": "bpr-max", "layers": [64], "n_epochs": 3}))
    cfg = Config.from_sources(path, ["layers=100/50", "constrained_embedding=False", "logq=1"])
    assert cfg.loss == "bpr-max" and cfg.layers == (100, 50) and cfg.n_epochs == 3
    assert cfg.constrained_embedding is False and cfg.logq == 1.0


def test_reference_paramfiles_are_read_without_executing_them(tmp_path):
    path = tmp_path / "rsc15.py"
    path.write_text(
        "from collections import OrderedDict\ngru4rec_params = OrderedDict(["
        "('loss', 'cross-entropy'), ('layers', [100]), ('logq', 1.0)])\n"
    )
    assert Config.from_sources(path).logq == 1.0


def test_presets_are_found_by_name():
    cfg = Config.from_sources("rsc15_xe_shared_100_best")
    assert cfg.n_sample == 2048 and cfg.learning_rate == 0.2 and cfg.dropout_p_hidden == 0.4


@pytest.mark.parametrize(
    "preset, values",
    [  # the reference's paramfiles for the two data sets added with its PyTorch version
        (
            "coveo_bprmax_shared_best",
            dict(loss="bpr-max", batch_size=144, bpreg=1.85, momentum=0.4),
        ),
        (
            "rees46_xe_shared_best",
            dict(loss="cross-entropy", batch_size=240, logq=1.0, learning_rate=0.065),
        ),
    ],
)
def test_every_reference_paramfile_has_a_preset(preset, values):
    cfg = Config.from_sources(preset)
    assert {name: getattr(cfg, name) for name in values} == values and cfg.layers == (512,)


@pytest.mark.parametrize(
    "param, message",
    [
        ("loss=hinge", "loss='hinge' is not one of"),
        ("n_epochs=two", "not a valid int"),
        ("layers=0", "must be positive"),
        ("colour=red", "unknown parameter"),
        ("dropout_p_hidden=1.5", "must be in"),
        ("lossbpr", "must look like name=value"),
        ("learning_rate=nan", "learning_rate=nan must be a positive number"),
        ("momentum=-1", "momentum=-1.0 must be in"),
        ("logq=-0.5", "logq=-0.5 must be a number >= 0"),
        ("sample_alpha=-1", "sample_alpha=-1.0 must be a number >= 0"),
        ("threads=-1", "threads and sample_store_size >= 0"),
        ("device=tpu", "device='tpu' is not one of"),
        ("bloom_on=inputs", "bloom_on='inputs' is not one of"),
        ("strategy=simultanous", "strategy='simultanous' is not one of"),
        ("architecture=transformer", "architecture='transformer' is not one of"),
    ],
)
def test_bad_values_get_errors_that_say_what_to_fix(param, message):
    with pytest.raises(ValueError, match=message):
        Config.from_sources(None, [param])


def test_one_example_a_batch_without_sampled_negatives_is_refused():
    with pytest.raises(ValueError, match="leaves no negative for any example"):
        Config(batch_size=1, n_sample=0)
    Config(batch_size=1, n_sample=8)  # negatives from the sample
    Config(batch_size=2, n_sample=0)  # the other example


def test_round_trips_through_a_dict():
    cfg = Config(layers=(10, 20), loss="top1")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_embedding_layersize_means_the_first_layers_width_as_in_the_reference():
    cfg = Config.from_sources(None, ["layers=64/32", "embedding=layersize"])
    assert cfg.embedding == 64
    assert Config.from_dict({"embedding": "layersize"}).embedding == 100
    with pytest.raises(ValueError, match="embedding='wide'"):
        Config.from_dict({"embedding": "wide"})


def test_a_model_directory_or_its_config_json_gives_the_models_config(tmp_path):
    """A model's config.json wraps the parameters with format_version, n_items and meta; it
    used to be refused as unknown parameters."""
    cfg = Config(layers=(8, 4), loss="bpr-max", n_sample=16, n_epochs=2)
    vocab = ItemVocab(["a", "b", "c"])
    save_model(tmp_path, build_model(3, cfg), cfg, vocab, np.ones(3), {"trained_at": "T"})
    assert Config.from_sources(tmp_path / "config.json") == cfg
    assert Config.from_sources(tmp_path, ["n_epochs=5"]) == replace(cfg, n_epochs=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="directory without config.json"):
        Config.from_sources(tmp_path / "empty")
