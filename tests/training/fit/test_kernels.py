"""The compiled row-sparse Adagrad equals the tensor operations it replaces."""

import pytest
import torch

from tests.tools import require_module
from training.fit import kernels
from training.fit.optim import IndexedAdagrad

require_module("numba")  # a train extra; training.fit.kernels falls back without it


def tensor_update(w, acc, mom, rows, grad, lr, momentum, eps):
    """The update as optim.IndexedAdagrad writes it with tensor operations."""
    acc.index_add_(0, rows, grad * grad)
    denom = acc.index_select(0, rows).add_(eps).sqrt_()
    if mom is None:
        w.index_add_(0, rows, grad.div(denom).mul_(-lr))
        return
    step = mom.index_select(0, rows).mul_(momentum).addcdiv_(grad, denom, value=-lr)
    mom.index_copy_(0, rows, step)
    w.index_add_(0, rows, step)


@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("width", [1, 7, 100])
def test_rows_match_the_tensor_update_over_several_steps(momentum, width):
    gen = torch.Generator().manual_seed(width)
    w = torch.randn(50, width, generator=gen)
    acc, mom = torch.rand(50, width, generator=gen), torch.randn(50, width, generator=gen) * 0.1
    expected = [t.clone() for t in (w, acc, mom)]
    for _ in range(4):
        # unique rows in no particular order, more than the prefetch distance and fewer
        rows = torch.randperm(50, generator=gen)[: int(torch.randint(1, 30, (1,), generator=gen))]
        grad = torch.randn(len(rows), width, generator=gen)
        ours, theirs = (mom, expected[2]) if momentum > 0 else (None, None)
        kernels.adagrad_rows(w, acc, ours, rows, grad, 0.1, momentum, 1e-6)
        tensor_update(expected[0], expected[1], theirs, rows, grad, 0.1, momentum, 1e-6)
    torch.testing.assert_close(w, expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(acc, expected[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mom, expected[2], rtol=1e-6, atol=1e-6)


def test_rows_outside_the_update_are_untouched():
    w, acc, mom = torch.zeros(10, 4), torch.zeros(10, 4), torch.zeros(10, 4)
    kernels.adagrad_rows(w, acc, mom, torch.tensor([7, 2]), torch.ones(2, 4), 0.1, 0.2, 1e-6)
    changed = (w != 0).any(dim=1).nonzero().flatten().tolist()
    assert changed == [2, 7] and (acc[[2, 7]] == 1).all() and (mom[[0, 1, 3]] == 0).all()


def test_only_contiguous_float32_cpu_tensors_take_the_compiled_loop():
    table = torch.zeros(4, 3)
    assert kernels.usable(table, torch.zeros(2, dtype=torch.int64))
    assert not kernels.usable(table.T)
    assert not kernels.usable(table.double())


def test_the_optimiser_gives_the_same_weights_with_and_without_the_compiled_loop(monkeypatch):
    def train(use_kernels: bool) -> list[torch.Tensor]:
        if not use_kernels:
            monkeypatch.setattr(kernels, "usable", lambda *tensors: False)
        torch.manual_seed(0)
        table, dense = torch.nn.Parameter(torch.randn(20, 5)), torch.nn.Parameter(torch.randn(3, 5))
        opt = IndexedAdagrad([table, dense], lr=0.1, momentum=0.2)
        for step in range(5):
            rows = torch.tensor([step, step + 3, 11])
            opt.update_rows(table, rows, torch.randn(3, 5))
            dense.grad = torch.randn(3, 5)
            opt.update_dense()
        monkeypatch.undo()
        return [table.detach().clone(), dense.detach().clone()]

    for compiled, plain in zip(train(True), train(False), strict=True):
        torch.testing.assert_close(compiled, plain, rtol=1e-6, atol=1e-6)


def test_unique_rows_find_each_row_once_and_map_every_lookup_back():
    find = kernels.UniqueRows(n_rows=30)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the scratch must be clean again after each call
        index = torch.randint(0, 30, (40,), generator=gen)
        unique, inverse = find(index)
        assert sorted(unique.tolist()) == torch.unique(index).tolist()
        assert torch.equal(unique[inverse], index)
        first_seen = list(dict.fromkeys(index.tolist()))
        assert unique.tolist() == first_seen


@pytest.mark.parametrize("with_bias", [False, True])
def test_reading_rows_gives_the_unique_rows_their_values_and_the_gathered_lookups(with_bias):
    find = kernels.UniqueRows(n_rows=50)
    gen = torch.Generator().manual_seed(5)
    table, bias = torch.randn(50, 7, generator=gen), torch.randn(50, 1, generator=gen)
    for _ in range(3):  # the scratch must be clean again after each call
        first = torch.randint(0, 50, (6,), generator=gen)
        second = torch.randint(0, 50, (30,), generator=gen)
        got = find.read(first, second, table, bias if with_bias else None, n_gather=6)
        unique, inverse, values, bias_values, gathered = got
        assert torch.equal(unique, find(torch.cat([first, second]))[0])
        assert torch.equal(unique[inverse], torch.cat([first, second]))
        assert torch.equal(values, table[unique])
        assert torch.equal(gathered, table[first])
        if with_bias:
            assert torch.equal(bias_values, bias[unique])
        else:
            assert bias_values is None


@pytest.mark.parametrize("dropout", [False, True])
def test_gru_backward_matches_the_tensor_formulas(dropout, monkeypatch):
    from training.fit import fused

    gen = torch.Generator().manual_seed(1)
    b, h = 4, 6
    rz, gh = torch.rand(b, 2 * h, generator=gen), torch.randn(b, 3 * h, generator=gen)
    mask = (torch.rand(b, h, generator=gen) > 0.3).float() / 0.7 if dropout else None
    # gates as the forward leaves them: views into rz and gh, not contiguous
    layer = fused._Layer(
        None,
        torch.randn(b, h, generator=gen),
        rz[:, :h],
        rz[:, h:],
        torch.rand(b, h, generator=gen) * 2 - 1,
        gh[:, 2 * h :],
        mask,
    )
    grad = torch.randn(b, h, generator=gen)
    compiled = fused._gru_backward(grad, layer)
    monkeypatch.setattr(kernels, "gru_backward", lambda *args: None)
    plain = fused._gru_backward(grad, layer)
    for a, e in zip(compiled, plain, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p_drop", [0.0, 0.4])
def test_gru_forward_matches_the_tensor_formulas_and_draws_the_same_mask(p_drop, monkeypatch):
    from training.fit import fused

    gen = torch.Generator().manual_seed(3)
    b, h = 5, 7
    gi, gh = torch.randn(b, 3 * h, generator=gen), torch.randn(b, 3 * h, generator=gen)
    state = torch.randn(b, h, generator=gen)
    torch.manual_seed(4)
    out, layer = fused._gru_forward(None, gi.clone(), gh, state, p_drop)
    monkeypatch.setattr(kernels, "gru_output", lambda *args: None)
    torch.manual_seed(4)
    plain_out, plain = fused._gru_forward(None, gi.clone(), gh, state, p_drop)
    torch.testing.assert_close(out, plain_out, rtol=1e-6, atol=1e-6)
    if p_drop:
        assert torch.equal(layer.mask, plain.mask)
        assert (out[layer.mask == 0] == 0).all() and 0 < (layer.mask == 0).sum() < b * h
    else:
        assert layer.mask is None and plain.mask is None
    # and both are the GRU equations (torch.nn.GRUCell's), then the mask
    r = torch.sigmoid(gi[:, :h] + gh[:, :h])
    z = torch.sigmoid(gi[:, h : 2 * h] + gh[:, h : 2 * h])
    n = torch.tanh(gi[:, 2 * h :] + r * gh[:, 2 * h :])
    expected = (1 - z) * n + z * state
    if p_drop:
        expected = expected * layer.mask
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_log_q", [False, True])
def test_sampled_softmax_matches_the_tensor_version(with_log_q, monkeypatch):
    from training.config import Config
    from training.fit import fused

    gen = torch.Generator().manual_seed(2)
    step = fused.FusedStep.__new__(fused.FusedStep)  # _cross_entropy reads only cfg
    step.cfg = Config(batch_size=4)
    scores = torch.randn(4, 9, generator=gen)
    # column 8 is an input only (no target column): it must get no probability
    target_pos = torch.tensor([0, 3, 3, 5, 1, 2, 3, 7, 0, 6, 4])
    log_q = torch.rand(len(target_pos), generator=gen) * 3 if with_log_q else None
    loss, grad, column_sum, scored = step._cross_entropy(scores.clone(), target_pos, log_q)
    monkeypatch.setattr(kernels, "sampled_softmax", lambda *args: None)
    expected = step._cross_entropy(scores.clone(), target_pos, log_q)
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(grad, expected[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(column_sum, expected[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(column_sum, grad.sum(0), rtol=1e-5, atol=1e-6)
    assert (grad[:, 8] == 0).all()
    assert scored.tolist() == expected[3].tolist() == [True] * 8 + [False]
