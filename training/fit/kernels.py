"""Compiled CPU loops for the hand-written training step (numba): the row-sparse Adagrad
update, and the reads, GRU element-wise work and softmax bookkeeping around it, each a loop
that replaces several tensor operations (fused.py says which).

Updating U rows of an item table with the reference's Adagrad with momentum takes ten tensor
operations (read acc, mom and the weights at the rows, square, add, sqrt, divide, multiply,
write the three back), each a pass over a (U, D) block and a dispatch; at the RSC15 settings
that was a third of a training step. One compiled loop reads each row once, updates it in
registers and writes it back: about a sixth of the time, with the same float32 arithmetic
(it matches the tensor version to rounding, tests/training/fit/test_kernels.py). The rows are
scattered over tables larger than the cache, so the loop asks for the rows a few iterations
ahead (a prefetch); without that it waits on memory at every row and takes twice as long.

    if kernels.usable(table, grad):
        kernels.adagrad_rows(table, acc, mom, rows, grad, lr, momentum, eps)

CUDA tensors, other dtypes, or an install without numba take the tensor operations
(optim.IndexedAdagrad decides). The loops are compiled once per machine and cached next to
this file (or in numba's user cache when that is read-only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic
except ImportError:  # an install without the train extra's numba: tensor operations only
    numba = None

# how far ahead to prefetch, in 64-byte lines per table: 7-line rows (100 floats) were
# fastest 4 rows ahead (2 waited on memory, 8 and 16 no faster; 2-core EPYC)
LINES_AHEAD = 28


_DTYPES = (torch.float32, torch.int64, torch.bool)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops can update these tensors in place: numba is installed and
    all are contiguous float32 / int64 / bool CPU tensors."""
    if numba is None:
        return False
    return all(t.is_cpu and t.dtype in _DTYPES and t.is_contiguous() for t in tensors)


if numba is not None:

    def _jit(function=None, **options):
        options = dict(
            cache=True,
            boundscheck=False,
            # numpy's float rules: no zero-division branch in the inner loop, so it vectorises
            error_model="numpy",
            **options,
        )
        return numba.njit(**options) if function is None else numba.njit(**options)(function)

    @intrinsic
    def _prefetch(typingctx, address):  # pragma: no cover
        """Ask for the 64-byte line at `address` (an integer) to be brought into the cache."""

        def codegen(context, builder, signature, args):
            byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
            )
            # for writing, keep in all cache levels, data cache
            flags = [ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            builder.call(fn, [builder.inttoptr(args[0], byte_ptr), *flags])
            return context.get_dummy_value()

        return numba.types.void(numba.types.intp), codegen

    @_jit
    def _rows_ahead(table):  # pragma: no cover
        lines = (table.shape[1] * table.itemsize + 63) // 64
        return max(1, LINES_AHEAD // lines)

    @_jit
    def _prefetch_row(table, row):  # pragma: no cover
        row_bytes = table.shape[1] * table.itemsize
        start = table.ctypes.data + row * row_bytes
        for offset in range(0, row_bytes, 64):
            _prefetch(start + offset)

    @_jit(inline="always")
    def _row_with_momentum(w_r, acc_r, mom_r, g_r, lr, momentum, eps):  # pragma: no cover
        for d in range(w_r.shape[0]):
            g = g_r[d]
            a = acc_r[d] + g * g
            acc_r[d] = a
            v = momentum * mom_r[d] - lr * g / np.sqrt(a + eps)
            mom_r[d] = v
            w_r[d] += v

    @_jit(inline="always")
    def _row_plain(w_r, acc_r, g_r, lr, eps):  # pragma: no cover
        for d in range(w_r.shape[0]):
            g = g_r[d]
            a = acc_r[d] + g * g
            acc_r[d] = a
            w_r[d] -= lr * g / np.sqrt(a + eps)

    @_jit
    def _rows_with_momentum(
        w, acc, mom, rows, grad, lr, momentum, eps, b, b_acc, b_mom, b_grad, b_mask
    ):  # pragma: no cover
        n, k, with_bias = rows.shape[0], _rows_ahead(w), b_mask.shape[0] > 0
        for i in range(n):
            if i + k < n:
                ahead = rows[i + k]
                _prefetch_row(w, ahead)
                _prefetch_row(acc, ahead)
                _prefetch_row(mom, ahead)
                if with_bias:
                    _prefetch_row(b, ahead)
                    _prefetch_row(b_acc, ahead)
                    _prefetch_row(b_mom, ahead)
            r = rows[i]
            _row_with_momentum(w[r], acc[r], mom[r], grad[i], lr, momentum, eps)
            if with_bias and b_mask[i]:
                _row_with_momentum(b[r], b_acc[r], b_mom[r], b_grad[i], lr, momentum, eps)

    @_jit
    def _rows_plain(w, acc, rows, grad, lr, eps, b, b_acc, b_grad, b_mask):  # pragma: no cover
        n, k, with_bias = rows.shape[0], _rows_ahead(w), b_mask.shape[0] > 0
        for i in range(n):
            if i + k < n:
                _prefetch_row(w, rows[i + k])
                _prefetch_row(acc, rows[i + k])
                if with_bias:
                    _prefetch_row(b, rows[i + k])
                    _prefetch_row(b_acc, rows[i + k])
            r = rows[i]
            _row_plain(w[r], acc[r], grad[i], lr, eps)
            if with_bias and b_mask[i]:
                _row_plain(b[r], b_acc[r], b_grad[i], lr, eps)

    @_jit
    def _dense(weights, accs, moms, grads, lr, momentum, eps):  # pragma: no cover
        for j in range(len(weights)):
            if momentum > 0:
                _row_with_momentum(weights[j], accs[j], moms[j], grads[j], lr, momentum, eps)
            else:
                _row_plain(weights[j], accs[j], grads[j], lr, eps)

    @_jit
    def _unique_in_order(index, slot):  # pragma: no cover
        unique, inverse = np.empty_like(index), np.empty_like(index)
        n = 0
        for i in range(index.shape[0]):
            item = index[i]
            if slot[item] < 0:
                slot[item] = n
                unique[n] = item
                n += 1
            inverse[i] = slot[item]
        for j in range(n):  # leave the scratch as it was found
            slot[unique[j]] = -1
        return unique[:n], inverse

    @_jit
    def _read_rows(first, second, table, bias, slot, n_gather):  # pragma: no cover
        n_first = first.shape[0]
        total = n_first + second.shape[0]
        unique, inverse = np.empty(total, np.int64), np.empty(total, np.int64)
        n = 0
        for i in range(total):
            item = first[i] if i < n_first else second[i - n_first]
            if slot[item] < 0:
                slot[item] = n
                unique[n] = item
                n += 1
            inverse[i] = slot[item]
        width, k, with_bias = table.shape[1], _rows_ahead(table), bias.shape[0] > 0
        values = np.empty((n, width), table.dtype)
        bias_values = np.empty((n if with_bias else 0, 1), table.dtype)
        for j in range(n):
            if j + k < n:  # the rows are scattered over a table larger than the cache
                _prefetch_row(table, unique[j + k])
            row = unique[j]
            slot[row] = -1  # leave the scratch as it was found
            values[j, :] = table[row, :]
            if with_bias:
                bias_values[j, 0] = bias[row, 0]
        gathered = np.empty((n_gather, width), table.dtype)
        for i in range(n_gather):
            gathered[i, :] = values[inverse[i], :]
        return unique[:n], inverse, values, bias_values, gathered

    @_jit
    def _gru_output(z, n, h, uniform, p, out, mask):  # pragma: no cover
        batch, hidden = h.shape
        drop = uniform.shape[0] > 0
        # as torch's rand >= p, then / (1 - p), in float32
        keep = np.float32(1.0) / np.float32(1.0 - p) if drop else np.float32(1.0)
        for i in range(batch):
            for j in range(hidden):
                z_ = z[i, j]
                value = (np.float32(1.0) - z_) * n[i, j] + z_ * h[i, j]
                if drop:
                    m = keep if uniform[i, j] >= p else np.float32(0.0)
                    mask[i, j] = m
                    value *= m
                out[i, j] = value

    @_jit
    def _gru_backward(
        grad_out, mask, r, z, n, hn, h_prev, g_gi, g_gh, g_bi, g_bh
    ):  # pragma: no cover
        batch, hidden = grad_out.shape
        masked = mask.shape[0] > 0
        g_bi[:] = 0.0
        g_bh[:] = 0.0
        for i in range(batch):
            for j in range(hidden):
                g_h = grad_out[i, j] * mask[i, j] if masked else grad_out[i, j]
                r_, z_, n_ = r[i, j], z[i, j], n[i, j]
                g_an = g_h * (1.0 - z_) * (1.0 - n_ * n_)  # through the candidate's tanh
                g_ar = g_an * hn[i, j] * r_ * (1.0 - r_)
                g_az = g_h * (h_prev[i, j] - n_) * z_ * (1.0 - z_)
                g_gi[i, j], g_gi[i, hidden + j], g_gi[i, 2 * hidden + j] = g_ar, g_az, g_an
                g_gh[i, j], g_gh[i, hidden + j], g_gh[i, 2 * hidden + j] = g_ar, g_az, g_an * r_
        for i in range(batch):  # the biases' gradients: column sums, row by row
            for k in range(3 * hidden):
                g_bi[k] += g_gi[i, k]
                g_bh[k] += g_gh[i, k]

    @_jit
    def _add_column_weights(scores, target_pos, log_q, positive, top, scored):  # pragma: no cover
        batch, n_unique = scores.shape
        log_weight = np.zeros(n_unique, np.float32)
        for j in range(target_pos.shape[0]):
            log_weight[target_pos[j]] += np.exp(-log_q[j]) if log_q.shape[0] else 1.0
        for u in range(n_unique):
            scored[u] = log_weight[u] > 0  # rows that are only inputs have no column
            log_weight[u] = np.log(log_weight[u])  # -inf for those
        for i in range(batch):
            positive[i] = scores[i, target_pos[i]] - (log_q[i] if log_q.shape[0] else 0.0)
            row_max = -np.inf
            for u in range(n_unique):
                value = scores[i, u] + log_weight[u]
                scores[i, u] = value
                row_max = max(row_max, value)
            top[i] = row_max
            for u in range(n_unique):
                scores[i, u] -= row_max

    @_jit
    def _normalise(
        exp_logits, total, top, positive, target_pos, scale, column_sum
    ):  # pragma: no cover
        batch, n_unique = exp_logits.shape
        column_sum[:] = 0.0
        loss = 0.0
        for i in range(batch):
            loss += np.log(np.float64(total[i])) + top[i] - positive[i]
            inverse = np.float32(scale / total[i])
            for u in range(n_unique):
                exp_logits[i, u] *= inverse
            exp_logits[i, target_pos[i]] -= scale
            for u in range(n_unique):
                column_sum[u] += exp_logits[i, u]
        return loss


def _float32_cpu(*tensors: torch.Tensor) -> bool:
    return numba is not None and all(t.is_cpu and t.dtype == torch.float32 for t in tensors)


def gru_output(
    z: torch.Tensor, n: torch.Tensor, h: torch.Tensor, uniform: torch.Tensor | None, p: float
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A GRU layer's output (1 - z) * n + z * h with dropout, in one loop: z, n, h (B, H) any
    strides; uniform (B, H) the dropout's draws (gru.dropout_mask keeps units where
    uniform >= p and scales them by 1 / (1 - p)) or None. -> (output, mask or None), or None
    when the tensors are not float32 CPU tensors."""
    if not _float32_cpu(z, n, h, *([] if uniform is None else [uniform])):
        return None
    out = np.empty(h.shape, np.float32)
    mask = _NO_MASK if uniform is None else np.empty(h.shape, np.float32)
    draws = _NO_MASK if uniform is None else uniform.numpy()
    _gru_output(z.numpy(), n.numpy(), h.numpy(), draws, np.float32(p), out, mask)
    return torch.from_numpy(out), None if uniform is None else torch.from_numpy(mask)


def gru_backward(
    grad_out: torch.Tensor,
    mask: torch.Tensor | None,
    r: torch.Tensor,
    z: torch.Tensor,
    n: torch.Tensor,
    hn: torch.Tensor,
    h_prev: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One GRU layer's backward through its gates in one loop (fused._gru_backward's
    formulas): the gradients of gi and gh (B, 3H) and of the two biases (3H,) (their column
    sums) from that of the layer's output (B, H), its dropout mask, gates r, z, candidate n,
    recurrent candidate part hn and previous state (all (B, H), any strides). None when the
    tensors are not float32 CPU tensors."""
    tensors = [grad_out, r, z, n, hn, h_prev] + ([] if mask is None else [mask])
    if not _float32_cpu(*tensors):
        return None
    batch, hidden = grad_out.shape
    g_gi = np.empty((batch, 3 * hidden), np.float32)
    g_gh = np.empty((batch, 3 * hidden), np.float32)
    g_bi = np.empty(3 * hidden, np.float32)
    g_bh = np.empty(3 * hidden, np.float32)
    m = _NO_MASK if mask is None else mask.detach().numpy()
    arrays = (t.detach().numpy() for t in (grad_out, r, z, n, hn, h_prev))
    go, r_, z_, n_, hn_, h_ = arrays
    _gru_backward(go, m, r_, z_, n_, hn_, h_, g_gi, g_gh, g_bi, g_bh)
    return tuple(torch.from_numpy(a) for a in (g_gi, g_gh, g_bi, g_bh))


def sampled_softmax(
    scores: torch.Tensor, target_pos: torch.Tensor, log_q: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """fused.FusedStep._cross_entropy in two loops and two tensor operations (the exp and
    the row sums, vectorised) instead of twenty operations: scores (B, U) float32,
    overwritten with the gradient. Returns (summed loss, gradient (B, U) times `scale`, its
    column sums (U,), which columns are targets (U,) bool), or None where the compiled loops
    do not apply."""
    tensors = [scores, target_pos] + ([] if log_q is None else [log_q])
    if not usable(*tensors):
        return None
    batch, n_unique = scores.shape
    positive, top = np.empty(batch, np.float32), np.empty(batch, np.float32)
    column_sum, scored = np.empty(n_unique, np.float32), np.empty(n_unique, np.bool_)
    q = _NO_LOG_Q if log_q is None else log_q.numpy()
    positions = target_pos.numpy()
    _add_column_weights(scores.numpy(), positions, q, positive, top, scored)
    exp_logits = scores.exp_()
    total = exp_logits.sum(dim=1)
    loss = _normalise(
        exp_logits.numpy(), total.numpy(), top, positive, positions, np.float32(scale), column_sum
    )
    return (
        torch.tensor(loss, dtype=torch.float32),
        exp_logits,
        torch.from_numpy(column_sum),
        torch.from_numpy(scored),
    )


_warm = False


def warm_up() -> None:
    """Load every compiled loop now (numba's first call in a process costs about half a
    second, each further loop a few milliseconds), so that a timed epoch does not pay it.
    Once per process."""
    global _warm
    if numba is None or _warm:
        return
    _warm = True
    f32, i64 = torch.float32, torch.int64
    table, grad = torch.zeros(4, 2), torch.zeros(2, 2)
    rows = torch.tensor([1, 3])
    for mom in (table.clone(), None):
        bias = BiasRows(
            table[:, :1].clone(),
            table[:, :1].clone(),
            mom,
            grad[:, :1].clone(),
            torch.tensor([True, False]),
        )
        for with_bias in (None, bias):
            adagrad_rows(table, table.clone(), mom, rows, grad, 0.1, 0.1, 1e-6, with_bias)
    adagrad_dense([table], [table.clone()], [table.clone()], [table.clone()], 0.1, 0.1, 1e-6)
    UniqueRows(4)(rows)
    UniqueRows(4).read(rows, rows, table, table[:, :1].contiguous(), 1)
    UniqueRows(4).read(rows, rows[:0], table, None, 2)
    state = torch.rand(2, 3, dtype=f32)
    gru_output(state, state, state, state, 0.5)
    gru_output(state, state, state, None, 0.0)
    gru_backward(state, state, state, state, state, state, state)
    gru_backward(state, None, state, state, state, state, state)
    positions = torch.tensor([0, 1, 2, 2], dtype=i64)
    sampled_softmax(torch.rand(2, 3), positions, torch.rand(4), 0.5)
    sampled_softmax(torch.rand(2, 3), positions, None, 0.5)


class UniqueRows:
    """torch.unique(index, return_inverse=True) for indices into a table of n rows, in
    O(len(index)) with a scratch array instead of a sort (a fifth of the time at a step's
    ~2,000 indices); the unique rows come in order of first appearance, not sorted."""

    def __init__(self, n_rows: int):
        self.slot = np.full(n_rows, -1, dtype=np.int64)

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not usable(index):
            return torch.unique(index, return_inverse=True)
        unique, inverse = _unique_in_order(index.numpy(), self.slot)
        return torch.from_numpy(unique), torch.from_numpy(inverse)

    def read(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        table: torch.Tensor,
        bias: torch.Tensor | None,
        n_gather: int,
    ) -> tuple[torch.Tensor, ...] | None:
        """The unique rows of the lookups first then second (int64 (L1,), (L2,)) and their
        values, in one pass: (unique (U,), inverse (L1 + L2,), table[unique] (U, D),
        bias[unique] (U, 1) or None, the rows of the first n_gather lookups (n_gather, D)).
        None where the compiled loops do not apply (the caller takes tensor operations)."""
        tensors = [first, second, table] + ([] if bias is None else [bias])
        if not usable(*tensors):
            return None
        b = _NO_BIAS[0] if bias is None else bias.detach().numpy()
        arrays = _read_rows(
            first.numpy(), second.numpy(), table.detach().numpy(), b, self.slot, n_gather
        )
        unique, inverse, values, bias_values, gathered = (torch.from_numpy(a) for a in arrays)
        return unique, inverse, values, None if bias is None else bias_values, gathered


@dataclass
class BiasRows:
    """An output bias (N, 1) updated in the same pass as the weights' rows: where mask (U,)
    is set, row rows[i] of the bias with grad[i] (U, 1). The reference leaves the bias of an
    item alone in a step where the item is only an input (a shared embedding)."""

    bias: torch.Tensor
    acc: torch.Tensor
    mom: torch.Tensor | None
    grad: torch.Tensor
    mask: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.bias, self.acc, self.mom, self.grad, self.mask) if t is not None]


_NO_BIAS = (np.zeros((0, 1), np.float32), np.zeros(0, np.bool_))
_NO_MASK = np.zeros((0, 1), np.float32)
_NO_LOG_Q = np.zeros(0, np.float32)


def adagrad_rows(
    weight: torch.Tensor,
    acc: torch.Tensor,
    mom: torch.Tensor | None,
    rows: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    momentum: float,
    eps: float,
    bias: BiasRows | None = None,
) -> None:
    """In place, for each i: with g = grad[i] and r = rows[i] (unique),
    acc[r] += g^2; mom[r] = momentum * mom[r] - lr * g / sqrt(acc[r] + eps); weight[r] +=
    mom[r] (without momentum: weight[r] -= lr * g / sqrt(acc[r] + eps)); and the same for
    the bias rows that `bias` selects, in the same pass over memory.

    weight, acc, mom (N, D) float32; rows (U,) int64; grad (U, D) float32. A 1-d parameter
    is passed as (1, n) with rows = [0]."""
    f32 = np.float32
    w, a, r, g = (t.detach().numpy() for t in (weight, acc, rows, grad))
    if bias is None:
        b = b_acc = b_mom = b_grad = _NO_BIAS[0]
        b_mask = _NO_BIAS[1]
    else:
        b, b_acc, b_grad, b_mask = (
            t.detach().numpy() for t in (bias.bias, bias.acc, bias.grad, bias.mask)
        )
        b_mom = None if bias.mom is None else bias.mom.detach().numpy()
    if mom is None:
        _rows_plain(w, a, r, g, f32(lr), f32(eps), b, b_acc, b_grad, b_mask)
    else:
        m = mom.detach().numpy()
        args = (f32(lr), f32(momentum), f32(eps), b, b_acc, b_mom, b_grad, b_mask)
        _rows_with_momentum(w, a, m, r, g, *args)


def adagrad_dense(
    params: list[torch.Tensor],
    accs: list[torch.Tensor],
    moms: list[torch.Tensor] | None,
    grads: list[torch.Tensor],
    lr: float,
    momentum: float,
    eps: float,
    views: dict | None = None,
) -> None:
    """The same update on whole parameters, all in one call (a step's GRU weights and biases
    are a few small tensors: one call each cost more than the arithmetic). `views`, a dict
    the caller keeps for as long as the parameters live, holds their numpy views (and the
    state's) from step to step: making them was most of the call's time."""
    views = {} if views is None else views

    def flat(t: torch.Tensor) -> np.ndarray:
        key = (t.data_ptr(), t.numel())  # the view keeps its tensor alive, so no reuse
        if key not in views:
            views[key] = t.detach().view(-1).numpy()
        return views[key]

    w, a = tuple(flat(t) for t in params), tuple(flat(t) for t in accs)
    g = tuple(t.view(-1).numpy() for t in grads)
    # without momentum the loop never reads moms: hand it the accumulators as stand-ins
    m = a if moms is None else tuple(flat(t) for t in moms)
    f32 = np.float32
    _dense(w, a, m, g, f32(lr), f32(momentum), f32(eps))
