import numpy as np
import pytest
import torch

from training.config import Config
from training.data.logs import ItemVocab, Sessions
from training.data.synthetic import generate
from training.fit.train import fit, load_model, save_model
from training.models.architectures import build_model
from training.models.gru4rec import GRU4Rec
from training.models.prnn import PRNN, load_item_features, standardise

N_ITEMS, N_FEATURES = 120, 10


@pytest.fixture(scope="module")
def sessions() -> Sessions:
    cat = generate(n_items=N_ITEMS, n_sessions=150, n_categories=6, seed=2)
    return Sessions.from_events(cat.events, ItemVocab(cat.item_ids))


@pytest.fixture
def features_file(tmp_path):
    raw = np.random.default_rng(0).normal(3.0, 5.0, (N_ITEMS, N_FEATURES)).astype(np.float32)
    np.save(tmp_path / "features.npy", raw)
    return tmp_path / "features.npy"


def _cfg(architecture="parallel", strategy="simultaneous", **kw) -> Config:
    base = dict(layers=(8,), feature_layers=(6,), batch_size=16, n_sample=20, n_epochs=1)
    return Config(architecture=architecture, strategy=strategy, **{**base, **kw})


def _features() -> torch.Tensor:
    return torch.randn(N_ITEMS, N_FEATURES, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("architecture", ["feature", "concat", "parallel"])
def test_target_scores_are_the_matching_columns_of_the_full_scores(architecture):
    model = PRNN(N_ITEMS, _cfg(architecture, layers=(8, 5)), features=_features()).eval()
    inputs, targets = torch.tensor([0, 7, 119]), torch.tensor([3, 3, 50, 119])
    hidden = [torch.randn_like(h) for h in model.init_hidden(3)]
    some, new_a = model(inputs, hidden, targets)
    full, new_b = model(inputs, hidden, None)
    assert full.shape == (3, N_ITEMS) and torch.allclose(some, full[:, targets], atol=1e-5)
    assert [h.shape[1] for h in new_a] == ([8, 5, 6] if architecture == "parallel" else [8, 5])
    assert all(torch.equal(a, b) for a, b in zip(new_a, new_b, strict=True))


def test_parallel_scores_are_the_sum_of_the_two_subnets():
    model = PRNN(N_ITEMS, _cfg(), features=_features()).eval()
    inputs, hidden = torch.tensor([4, 9]), model.init_hidden(2)
    scores, _ = model(inputs, hidden, None)
    id_scores, _ = model.id_net(inputs, hidden[:1], None)
    top, _ = model.feature_net(inputs, model.item_features[inputs], hidden[1:])
    expected = id_scores + top @ model.feature_net.Wy.weight.T
    assert torch.allclose(scores, expected, atol=1e-6)


def test_features_are_loaded_standardised_in_vocabulary_order(features_file):
    raw = np.load(features_file)
    loaded = load_item_features(features_file, N_ITEMS)
    expected = (raw - raw.mean(0)) / raw.std(0, ddof=1)
    assert np.allclose(loaded.numpy(), expected, atol=1e-5)
    model = build_model(N_ITEMS, _cfg("feature", features=str(features_file)))
    assert isinstance(model, PRNN) and torch.equal(model.item_features, loaded)


def test_constant_feature_columns_become_zero_not_nan():
    out = standardise(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert torch.equal(out[:, 1], torch.zeros(2)) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "cfg, message",
    [
        (_cfg("feature"), "needs item features: set features=PATH"),
        (_cfg("feature", features="/nonexistent.npy"), "python -m training.models.features"),
        (_cfg("concat", "residual", features="x"), "use strategy=simultaneous"),
        (_cfg("id", features="x"), "is not one of feature, concat, parallel"),
    ],
)
def test_unusable_settings_are_refused_with_what_to_do(cfg, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PRNN(N_ITEMS, cfg)


def test_features_of_the_wrong_shape_are_refused(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((N_ITEMS - 1, 4), np.float32))
    with pytest.raises(ValueError, match="Extract features again"):
        load_item_features(tmp_path / "f.npy", N_ITEMS)


def test_parameter_groups_split_the_parallel_model_into_its_subnets():
    model = PRNN(N_ITEMS, _cfg(), features=_features())
    groups = model.parameter_groups()
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert set(groups) == {"id", "feature"} and not ids["id"] & ids["feature"]
    assert ids["id"] | ids["feature"] == {id(p) for p in model.parameters()}
    assert ids["id"] == {id(p) for p in model.id_net.parameters()}
    single = PRNN(N_ITEMS, _cfg("concat"), features=_features())
    assert single.parameter_groups().keys() == {"all"} and single.active_groups(3, 5) == ["all"]


@pytest.mark.parametrize(
    "strategy, n_epochs, schedule",
    [  # (epoch, step) -> groups, written out from the paper's description of each strategy
        ("simultaneous", 2, {(0, 0): {"id", "feature"}, (1, 7): {"id", "feature"}}),
        ("alternating", 3, {(0, 5): {"id"}, (1, 0): {"feature"}, (2, 9): {"id"}}),
        ("interleaving", 2, {(0, 0): {"id"}, (0, 1): {"feature"}, (1, 4): {"id"}}),
        ("residual", 2, {(0, 3): {"id"}, (1, 8): {"id"}, (2, 0): {"feature"}, (3, 1): {"feature"}}),
    ],
)
def test_strategies_schedule_the_subnets_as_the_paper_describes(strategy, n_epochs, schedule):
    cfg = _cfg(strategy=strategy, n_epochs=n_epochs)
    model = PRNN(N_ITEMS, cfg, features=_features())
    for (epoch, step), groups in schedule.items():
        assert set(model.active_groups(epoch, step)) == groups
    assert model.n_epochs_total(cfg) == (2 * n_epochs if strategy == "residual" else n_epochs)


def test_residual_training_starts_as_the_id_subnet_alone():
    torch.manual_seed(0)
    model = PRNN(N_ITEMS, _cfg(strategy="residual"), features=_features()).eval()
    inputs = torch.tensor([1, 2, 3])
    hidden = [torch.randn_like(h) for h in model.init_hidden(3)]
    scores, _ = model(inputs, hidden, None)
    alone, _ = model.id_net(inputs, hidden[:1], None)
    assert torch.equal(scores, alone)  # the feature subnet's output block is zero


class Recorder(PRNN):
    """Snapshots every group's parameters each time the training loop asks which groups
    to update (after the backward pass, before the optimiser steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int, list[str], dict[str, torch.Tensor]]] = []

    def flat(self) -> dict[str, torch.Tensor]:
        return {
            name: torch.cat([p.detach().flatten() for p in params]).clone()
            for name, params in self.parameter_groups().items()
        }

    def active_groups(self, epoch: int, step: int) -> list[str]:
        active = super().active_groups(epoch, step)
        self.calls.append((epoch, step, active, self.flat()))
        return active


@pytest.mark.parametrize("strategy", ["simultaneous", "alternating", "residual", "interleaving"])
def test_training_updates_exactly_the_active_subnets(sessions, strategy):
    cfg = _cfg(strategy=strategy, n_epochs=2)
    model = Recorder(N_ITEMS, cfg, features=_features())
    fit(sessions, N_ITEMS, cfg, progress=False, model=model)
    snapshots = [c[3] for c in model.calls[1:]] + [model.flat()]
    changed = {name: set() for name in ("id", "feature")}
    for (epoch, step, active, before), after in zip(model.calls, snapshots, strict=True):
        for name in ("id", "feature"):
            if not torch.equal(before[name], after[name]):
                assert name in active, f"{name} changed at epoch {epoch} step {step}"
                changed[name].add(epoch)
    epochs = model.n_epochs_total(cfg)
    assert max(c[0] for c in model.calls) == epochs - 1
    expected = {
        "simultaneous": ({0, 1}, {0, 1}),
        "alternating": ({0}, {1}),
        "residual": ({0, 1}, {2, 3}),
        "interleaving": ({0, 1}, {0, 1}),
    }[strategy]
    assert (changed["id"], changed["feature"]) == expected


def test_the_features_travel_with_the_saved_model(tmp_path, features_file):
    cfg = _cfg(features=str(features_file))
    model = build_model(N_ITEMS, cfg)
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    save_model(tmp_path / "m", model, cfg, vocab, np.ones(N_ITEMS, dtype=np.int64))
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(state["item_features"], model.item_features)
    rebuilt = PRNN(N_ITEMS, cfg, features=state["item_features"])
    rebuilt.load_state_dict(state)
    loaded = load_model(tmp_path / "m").model
    inputs, hidden = torch.tensor([5, 6]), model.init_hidden(2)
    expected, _ = model.eval()(inputs, hidden, None)
    assert torch.allclose(loaded(inputs, hidden, None)[0], expected)
    assert torch.allclose(rebuilt.eval()(inputs, hidden, None)[0], expected)


def test_id_architecture_is_plain_gru4rec():
    assert type(build_model(N_ITEMS, _cfg("id"))) is GRU4Rec


@pytest.mark.parametrize("architecture", ["feature", "concat", "parallel"])
def test_the_onnx_export_carries_the_features_and_scores_like_pytorch(
    tmp_path, features_file, architecture
):
    from training.export import check_parity, export_model

    cfg = _cfg(architecture, features=str(features_file))
    vocab = ItemVocab([f"i{i}" for i in range(N_ITEMS)])
    save_model(tmp_path / "m", build_model(N_ITEMS, cfg), cfg, vocab, np.ones(N_ITEMS, np.int64))
    export_dir = export_model(tmp_path / "m", tmp_path / "export")
    features_file.unlink()  # the service has no features file: the graph must hold them
    import onnx

    graph = onnx.load(export_dir / "model.onnx")
    sizes = [int(np.prod(t.dims)) for t in graph.graph.initializer]
    assert N_ITEMS * N_FEATURES in sizes
    np.save(features_file, np.zeros((N_ITEMS, N_FEATURES), np.float32))  # load_model reads it
    report = check_parity(tmp_path / "m", export_dir, n_sessions=8, seed=1)
    assert report["ok"], report
