"""GRU4Rec's three input modes, its scores, and the sparse item tables."""

import pytest
import torch

from training.config import Config
from training.models.gru4rec import GRU4Rec, OneHotGRUCell

MODES = {
    "shared": dict(constrained_embedding=True),
    "separate": dict(constrained_embedding=False, embedding=6),
    "one-hot": dict(constrained_embedding=False, embedding=0),
}


@pytest.mark.parametrize("mode", MODES)
def test_scores_for_targets_are_the_columns_of_the_full_scores(mode):
    model = GRU4Rec(40, Config(layers=(8, 5), **MODES[mode])).eval()
    inputs, targets = torch.tensor([3, 7, 1]), torch.tensor([5, 0, 39, 5])
    hidden = [torch.randn(3, 8), torch.randn(3, 5)]
    full, h1 = model(inputs, hidden, None)
    part, h2 = model(inputs, hidden, targets)
    assert full.shape == (3, 40) and part.shape == (3, 4)
    assert torch.allclose(part, full[:, targets], atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(h1, h2, strict=True))
    assert [h.shape[1] for h in h1] == [8, 5]


def test_shared_embedding_reads_the_input_from_the_output_weights():
    model = GRU4Rec(10, Config(layers=(4,), constrained_embedding=True))
    assert not hasattr(model, "E") and model.first is None
    scores, _ = model(torch.tensor([2]), model.init_hidden(1), torch.tensor([5]))
    scores.sum().backward()
    touched = model.Wy.weight.grad.coalesce().indices()[0].tolist()
    assert sorted(touched) == [2, 5]  # input row 2 and output row 5


def test_one_hot_cell_equals_a_gru_cell_fed_a_one_hot_vector():
    n_items, n_hidden = 7, 3
    ours = OneHotGRUCell(n_items, n_hidden)
    ref = torch.nn.GRUCell(n_items, n_hidden)
    with torch.no_grad():
        ref.weight_ih.copy_(ours.input_gates.weight.T)
        ref.weight_hh.copy_(ours.weight_hh)
        ref.bias_ih.copy_(ours.bias)
        ref.bias_hh.zero_()
    items, h = torch.tensor([0, 4, 6]), torch.randn(3, n_hidden)
    one_hot = torch.nn.functional.one_hot(items, n_items).float()
    assert torch.allclose(ours(items, h), ref(one_hot, h), atol=1e-6)


def test_item_tables_get_sparse_gradients_only_for_the_batch_items():
    model = GRU4Rec(1000, Config(layers=(4,), constrained_embedding=False, embedding=3))
    scores, _ = model(torch.tensor([1, 2]), model.init_hidden(2), torch.tensor([10, 11, 12]))
    scores.sum().backward()
    assert model.Wy.weight.grad.is_sparse and model.E.weight.grad.is_sparse
    assert set(model.E.weight.grad.coalesce().indices()[0].tolist()) == {1, 2}


def test_dropout_is_off_in_eval_mode():
    model = GRU4Rec(20, Config(layers=(16,), dropout_p_embed=0.5, dropout_p_hidden=0.5))
    x, h = torch.tensor([1, 2]), model.init_hidden(2)
    model.eval()
    assert torch.equal(model(x, h)[0], model(x, h)[0])
