"""The row-sparse Adagrad with momentum equals its dense formula on the touched rows."""

import torch

from training.fit.optim import IndexedAdagrad


def dense_reference(w, grads, lr, momentum, eps=1e-6, lazy=False):
    """The formula on whole matrices; `lazy` leaves rows without a gradient in a step alone
    (momentum included), which is what a row-sparse update does."""
    acc, mom = torch.zeros_like(w), torch.zeros_like(w)
    for g in grads:
        rows = (g != 0).any(dim=1, keepdim=True) if lazy else torch.ones(len(w), 1, dtype=bool)
        acc = torch.where(rows, acc + g**2, acc)
        mom = torch.where(rows, momentum * mom - lr * g / torch.sqrt(acc + eps), mom)
        w = torch.where(rows, w + mom, w)
    return w


def test_sparse_rows_follow_the_formula_and_rows_outside_the_batch_stay():
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 3, sparse=True)
    start = table.weight.detach().clone()
    opt = IndexedAdagrad(table.parameters(), lr=0.1, momentum=0.5)
    dense_grads = []
    for rows in ([1, 3, 3], [1, 4]):  # a repeated row: its gradients add up
        table.zero_grad()
        weights = torch.randn(len(rows), 3)
        (table(torch.tensor(rows)) * weights).sum().backward()
        g = torch.zeros(6, 3)
        g.index_add_(0, torch.tensor(rows), weights)
        dense_grads.append(g)
        opt.step()
    expected = dense_reference(start, dense_grads, lr=0.1, momentum=0.5, lazy=True)
    touched = [1, 3, 4]
    assert torch.allclose(table.weight[touched], expected[touched], atol=1e-6)
    assert torch.equal(table.weight.detach()[[0, 2, 5]], start[[0, 2, 5]])


def test_dense_parameters_follow_the_same_formula():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = IndexedAdagrad([w], lr=0.2, momentum=0.0)
    grads = [torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    assert torch.allclose(w.detach(), dense_reference(torch.ones(2, 2), grads, 0.2, 0.0), atol=1e-6)
