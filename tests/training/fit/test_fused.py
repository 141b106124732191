"""The hand-written training step equals the autograd step: same loss, same parameters after
a few updates, in every input mode and loss, with dropout drawing the same masks."""

import copy

import pytest
import torch

from training.config import Config
from training.fit import fused
from training.fit.optim import IndexedAdagrad
from training.fit.train import _GroupedOptimizer, _step_function
from training.models.gru4rec import GRU4Rec

MODES = {
    "shared": dict(constrained_embedding=True),
    "separate": dict(constrained_embedding=False, embedding=6),
    "one-hot": dict(constrained_embedding=False, embedding=0),
}
N_ITEMS = 60


def _run(model, cfg, use_fused, steps):
    optimizer = _GroupedOptimizer(model, cfg)
    only = optimizer.optimizers["all"]
    step_fn, _ = _step_function(model, optimizer, cfg, 0)
    if not use_fused:  # the same loop with the autograd step
        step_fn = _autograd_only(model, optimizer, cfg)
    assert isinstance(only, IndexedAdagrad) and fused.supports(model, only, cfg)
    torch.manual_seed(1)  # the same dropout masks on both sides
    hidden, losses = model.init_hidden(5), []
    for i, (inputs, targets, log_q) in enumerate(steps):
        loss, hidden = step_fn(inputs, targets, hidden, log_q, i)
        losses.append(float(loss))
    return losses, hidden


def _autograd_only(model, optimizer, cfg):
    saved = fused.supports
    fused.supports = lambda *args: False
    try:
        return _step_function(model, optimizer, cfg, 0)[0]
    finally:
        fused.supports = saved


def _steps(n_steps=4, batch=5, n_sample=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n_steps):
        inputs = torch.randint(0, N_ITEMS, (batch,), generator=gen)
        targets = torch.randint(0, N_ITEMS, (batch + n_sample,), generator=gen)
        targets[1] = inputs[0]  # an item both clicked and a target, and repeated targets
        targets[-1] = targets[0]
        steps.append((inputs, targets, torch.rand(batch + n_sample, generator=gen)))
    return steps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max", "top1"])
def test_fused_step_matches_autograd(mode, loss):
    cfg = Config(
        layers=(8, 6),
        loss=loss,
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
    steps = _steps()
    if loss != "cross-entropy":
        steps = [(i, t, None) for i, t, _ in steps]
    losses_a, hidden_a = _run(model, cfg, True, steps)
    losses_b, hidden_b = _run(twin, cfg, False, steps)
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    # float32 rounding apart (the compiled optimiser loop and the merged softmax sum in
    # another order): weights of size ~0.1 agree to a few 1e-7
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=3e-6, rtol=1e-5), name
    # hidden states of size ~1 after several steps of those weights: a few 1e-6 on CPUs whose
    # vector units (AVX-512) round MKL's products differently
    worst = max(float((a - b).abs().max()) for a, b in zip(hidden_a, hidden_b, strict=True))
    print(f"largest hidden-state difference: {worst:.2e}")
    assert worst < 1e-5


def test_rows_outside_the_step_stay_and_bias_rows_of_inputs_only_stay():
    cfg = Config(layers=(4,), batch_size=2, learning_rate=0.5, momentum=0.5)
    model = GRU4Rec(20, cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _GroupedOptimizer(model, cfg)
    step = fused.FusedStep(model, optimizer.optimizers["all"], cfg)
    step(torch.tensor([3, 4]), torch.tensor([5, 6, 7]), model.init_hidden(2))
    changed_wy = (model.Wy.weight != before["Wy.weight"]).any(dim=1).nonzero().flatten()
    changed_by = (model.By.weight != before["By.weight"]).any(dim=1).nonzero().flatten()
    assert changed_wy.tolist() == [3, 4, 5, 6, 7] and changed_by.tolist() == [5, 6, 7]


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.parametrize("mode", MODES)
def test_fused_step_on_the_gpu_matches_the_cpu(mode):
    """Everything a step touches (tables, optimiser state, indices) stays on the device."""
    cfg = Config(layers=(8, 6), batch_size=5, learning_rate=0.1, momentum=0.3, **MODES[mode])
    torch.manual_seed(0)
    cpu = GRU4Rec(N_ITEMS, cfg).train()
    gpu = copy.deepcopy(cpu).cuda()
    steps = _steps()
    losses_cpu, _ = _run(cpu, cfg, True, steps)
    on_gpu = [tuple(t.cuda() for t in step) for step in steps]
    losses_gpu, hidden = _run(gpu, cfg, True, on_gpu)
    assert all(h.is_cuda for h in hidden)
    assert losses_gpu == pytest.approx(losses_cpu, rel=1e-4)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-5, rtol=1e-4), name
