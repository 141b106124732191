"""The static-shape step (merging repeated rows through a scratch table, no torch.unique)
equals the fused step; its CUDA graph replays equal eager steps where a GPU is present."""

import copy

import pytest
import torch

from training.config import Config
from training.fit.fused import FusedStep
from training.fit.graphed import GraphedStep, StaticFusedStep
from training.fit.train import _GroupedOptimizer
from training.models.gru4rec import GRU4Rec

from .test_fused import MODES, N_ITEMS, _steps


def _train(model, cfg, step_class, steps, device="cpu"):
    optimizer = _GroupedOptimizer(model, cfg).optimizers["all"]
    step = step_class(model, optimizer, cfg)
    torch.manual_seed(1)
    hidden, losses = model.init_hidden(5, device), []
    for inputs, targets, log_q in steps:
        loss, hidden = step(inputs, targets, hidden, log_q)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("mode", MODES)
def test_static_step_equals_the_fused_step(mode):
    cfg = Config(
        layers=(8, 6),
        batch_size=5,
        learning_rate=0.1,
        momentum=0.3,
        dropout_p_embed=0.2,
        dropout_p_hidden=0.3,
        **MODES[mode],
    )
    torch.manual_seed(0)
    model = GRU4Rec(N_ITEMS, cfg).train()
    twin = copy.deepcopy(model)
    steps = _steps(n_steps=5)  # repeated items in inputs and targets
    assert _train(model, cfg, StaticFusedStep, steps) == pytest.approx(
        _train(twin, cfg, FusedStep, steps), rel=1e-5
    )
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_cuda_graph_replays_equal_eager_steps(loss):
    cfg = Config(layers=(16,), batch_size=5, loss=loss, learning_rate=0.1, momentum=0.3)
    torch.manual_seed(0)
    eager = GRU4Rec(N_ITEMS, cfg).cuda().train()
    graphed = copy.deepcopy(eager)
    steps = [tuple(t.cuda() for t in s) for s in _steps(n_steps=6)]
    if loss != "cross-entropy":
        steps = [(i, t, None) for i, t, _ in steps]
    expected = _train(eager, cfg, StaticFusedStep, steps, "cuda")

    def make_graphed(model, optimizer, cfg):
        n_targets = len(steps[0][1])
        static = StaticFusedStep(model, optimizer, cfg)
        return GraphedStep(static, 5, n_targets, with_log_q=steps[0][2] is not None)

    assert _train(graphed, cfg, make_graphed, steps, "cuda") == pytest.approx(expected, rel=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
