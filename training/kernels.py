"""Compiled CPU loops for the row-sparse Adagrad update (numba).

Updating U rows of an item table with the reference's Adagrad with momentum takes ten tensor
operations (read acc, mom and the weights at the rows, square, add, sqrt, divide, multiply,
write the three back), each a pass over a (U, D) block and a dispatch; at the RSC15 settings
that was a third of a training step. One compiled loop reads each row once, updates it in
registers and writes it back: about a sixth of the time, with the same float32 arithmetic
(it matches the tensor version to rounding, tests/training/test_kernels.py). The rows are
scattered over tables larger than the cache, so the loop asks for the rows a few iterations
ahead (a prefetch); without that it waits on memory at every row and takes twice as long.

    if kernels.usable(table, grad):
        kernels.adagrad_rows(table, acc, mom, rows, grad, lr, momentum, eps)

CUDA tensors, other dtypes, or an install without numba take the tensor operations
(optim.IndexedAdagrad decides). The loops are compiled once per machine and cached next to
this file (or in numba's user cache when that is read-only).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic
except ImportError:  # an install without the train extra's numba: tensor operations only
    numba = None

AHEAD = 4  # rows prefetched ahead; 2 waits on memory, 8 and 16 were no faster (2-core EPYC)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops can update these tensors in place: numba is installed and
    all are contiguous float32 / int64 CPU tensors."""
    return numba is not None and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype in (torch.float32, torch.int64)
        for t in tensors
    )


if numba is not None:
    _jit = numba.njit(
        cache=True,
        boundscheck=False,
        # numpy's float rules: no zero-division branch in the inner loop, so it vectorises
        error_model="numpy",
    )

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
    def _prefetch_row(table, row):  # pragma: no cover
        row_bytes = table.shape[1] * table.itemsize
        start = table.ctypes.data + row * row_bytes
        for offset in range(0, row_bytes, 64):
            _prefetch(start + offset)

    @_jit
    def _rows_with_momentum(w, acc, mom, rows, grad, lr, momentum, eps):  # pragma: no cover
        n = rows.shape[0]
        for i in range(n):
            if i + AHEAD < n:
                ahead = rows[i + AHEAD]
                _prefetch_row(w, ahead)
                _prefetch_row(acc, ahead)
                _prefetch_row(mom, ahead)
            r = rows[i]
            w_r, acc_r, mom_r, g_r = w[r], acc[r], mom[r], grad[i]
            for d in range(w_r.shape[0]):
                g = g_r[d]
                a = acc_r[d] + g * g
                acc_r[d] = a
                v = momentum * mom_r[d] - lr * g / np.sqrt(a + eps)
                mom_r[d] = v
                w_r[d] += v

    @_jit
    def _rows_plain(w, acc, rows, grad, lr, eps):  # pragma: no cover
        n = rows.shape[0]
        for i in range(n):
            if i + AHEAD < n:
                _prefetch_row(w, rows[i + AHEAD])
                _prefetch_row(acc, rows[i + AHEAD])
            r = rows[i]
            w_r, acc_r, g_r = w[r], acc[r], grad[i]
            for d in range(w_r.shape[0]):
                g = g_r[d]
                a = acc_r[d] + g * g
                acc_r[d] = a
                w_r[d] -= lr * g / np.sqrt(a + eps)


def adagrad_rows(
    weight: torch.Tensor,
    acc: torch.Tensor,
    mom: torch.Tensor | None,
    rows: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    momentum: float,
    eps: float,
) -> None:
    """In place, for each i: with g = grad[i] and r = rows[i] (unique),
    acc[r] += g^2; mom[r] = momentum * mom[r] - lr * g / sqrt(acc[r] + eps); weight[r] +=
    mom[r] (without momentum: weight[r] -= lr * g / sqrt(acc[r] + eps)).

    weight, acc, mom (N, D) float32; rows (U,) int64; grad (U, D) float32. A 1-d parameter
    is passed as (1, n) with rows = [0]."""
    f32 = np.float32
    w, a, r, g = (t.detach().numpy() for t in (weight, acc, rows, grad))
    if mom is None:
        _rows_plain(w, a, r, g, f32(lr), f32(eps))
    else:
        _rows_with_momentum(w, a, mom.detach().numpy(), r, g, f32(lr), f32(momentum), f32(eps))
