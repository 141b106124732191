"""An int8 output layer for the exported step graph (`python -m training export --quantize
int8`): the scores' matrix product, (B, S) x (S, N), the step's largest cost at tens of
thousands of items, runs on int8 weights; the GRU and everything else stays float32.

The product node (the MatMul or Gemm with the largest constant weight outside the state's
computation) becomes
    QuantizeLinear(x, 2/255, 128) -> x_q uint8 (B, S)
    MatMulIntegerToFloat(x_q, W_q int8 (S, N), ..., bias) -> scores float32 (B, N)
MatMulIntegerToFloat is onnxruntime's own operator (domain com.microsoft, one fused kernel;
the service runs onnxruntime only). Weights are symmetric int8 with one scale per item
column, so an item's score keeps its own resolution however large other items' weights are.

The activations, the last GRU layer's state, lie in (-1, 1) (a GRU's state is a blend of
tanh outputs and its zero start; an HRNN's start state is a tanh too), so one fixed scale
covers them: a row's scores do not depend on the rows batched beside it, which a per-run
scale (DynamicQuantizeLinear) would make them do, at the same speed in onnxruntime 1.31.1.

What it costs: an item's score is off by at most s_w / 2 * sum|x| + s_x * sum(|w| + s_w / 2)
(s_w = max|w| / 127 of its column, s_x = 2/255; tests/training/test_export_quantize.py).
scripts/bench_quantize.py measures what that does to Recall@20 and MRR@20; the float32
graph stays the default.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QUANTIZE_CHOICES = ("int8",)
INT8_MAX = 127
# the state in (-1, 1) onto uint8 0..255: x ~= (q - 128) * 2/255
STATE_SCALE, STATE_ZERO = 2.0 / 255.0, 128
CONTRIB_DOMAIN = "com.microsoft"
# names the rewrite adds; checked unused by the graph it rewrites
_PREFIX = "int8_output_"


def quantize_output_layer(graph: onnx.ModelProto, exact: set[str]) -> dict:
    """Rewrite graph's output-layer product to int8 in place; returns what metadata.json
    records under "quantization". exact: the values that must stay float32 (the new state
    and all it depends on: with a one-hot input the GRU's input product is larger still).

    Raises ValueError when the graph has no MatMul/Gemm with a constant weight outside
    `exact`, or the product is a Gemm with alpha/beta other than 1 or a transposed first
    operand."""
    g = graph.graph
    node, weight, bias = _output_product(g, exact)
    used = {name for n in g.node for name in (*n.input, *n.output)}
    used |= {t.name for t in g.initializer}
    if any(name.startswith(_PREFIX) for name in used):
        raise ValueError(f"the graph already uses names starting {_PREFIX!r}; cannot rewrite it")
    w_q, w_scale = quantize_columns(weight)
    names = {k: _PREFIX + k for k in ("x_q", "x_scale", "x_zero", "w_q", "w_scale", "bias")}
    names["scaled"] = _PREFIX + "scaled"
    x, out = node.input[0], node.output[0]
    constants = {t.name: t for t in g.initializer}
    # the kernel adds a (N,) bias itself; any other bias gets an Add of its own
    fused_bias = bias in constants and _size(constants[bias]) == weight.shape[1]
    new_nodes = [
        helper.make_node("QuantizeLinear", [x, names["x_scale"], names["x_zero"]], [names["x_q"]]),
        helper.make_node(
            "MatMulIntegerToFloat",
            [names["x_q"], names["w_q"], names["x_scale"], names["w_scale"], names["x_zero"]]
            + (["", names["bias"]] if fused_bias else []),
            [out if bias is None or fused_bias else names["scaled"]],
            domain=CONTRIB_DOMAIN,
        ),
    ]
    if bias is not None and not fused_bias:
        new_nodes.append(helper.make_node("Add", [names["scaled"], bias], [out]))
    for i, new in enumerate(new_nodes):
        new.name = f"{_PREFIX}{i}_{new.op_type}"
    position = list(g.node).index(node)
    del g.node[position]
    for offset, new in enumerate(new_nodes):
        g.node.insert(position + offset, new)
    added = {
        names["w_q"]: w_q,
        names["w_scale"]: w_scale,
        names["x_scale"]: np.array(STATE_SCALE, dtype=np.float32),
        names["x_zero"]: np.array(STATE_ZERO, dtype=np.uint8),
    }
    if fused_bias:
        added[names["bias"]] = numpy_helper.to_array(constants[bias]).astype(np.float32).ravel()
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in added.items())
    if not any(o.domain == CONTRIB_DOMAIN for o in graph.opset_import):
        graph.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    _drop_unused(g)
    onnx.checker.check_model(graph, full_check=True)
    return {
        "output_layer": "int8",
        "weights": f"int8, symmetric, one scale per item column {list(w_q.shape)}",
        "activations": f"uint8, fixed scale {STATE_SCALE:.6g} and zero point {STATE_ZERO}",
        "replaced_node": node.name,
    }


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column: weight (S, N) float -> (int8 (S, N), float32 scale (N,))
    with weight ~= q * scale. An all-zero column gets scale 1 (its q are 0 either way)."""
    weight = np.asarray(weight, dtype=np.float32)
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def int8_output_weights(graph: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 weights (S, N), float32 scales (N,)) of a graph quantize_output_layer()
    rewrote, None for a float32 graph."""
    constants = {t.name: t for t in graph.graph.initializer}
    q, scale = constants.get(_PREFIX + "w_q"), constants.get(_PREFIX + "w_scale")
    if q is None or scale is None:
        return None
    return numpy_helper.to_array(q), numpy_helper.to_array(scale)


def score_error_bound(x: np.ndarray, w_q: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """(B, N): how far each int8 score may lie from the float32 one, x (B, S) the output
    layer's input (the last GRU layer's state, in [-1, 1]) and w_q, w_scale as
    int8_output_weights() gives them. With w ~= q * s_w (rounding error <= s_w / 2) and x's
    step s_x (error <= s_x / 2, up to s_x where 1 saturates): s_w / 2 * sum|x| + s_x *
    sum(|w| + s_w / 2) <= s_w / 2 * sum|x| + s_x * (sum|q * s_w| + S * s_w)."""
    s_w = w_scale.astype(np.float64)
    weights = np.abs(w_q.astype(np.float64)).sum(axis=0) * s_w + w_q.shape[0] * s_w
    return s_w / 2 * np.abs(x).sum(axis=1, keepdims=True) + STATE_SCALE * weights


def _output_product(
    g: onnx.GraphProto, exact: set[str]
) -> tuple[onnx.NodeProto, np.ndarray, str | None]:
    """The largest product outside `exact`: (the node, its weight as (S, N) float32, its
    bias input name or None)."""
    constants = {t.name: t for t in g.initializer}
    transposed = {  # Transpose of an initializer, as the exporter writes x @ W.T
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Transpose" and n.input[0] in constants and _is_2d_swap(n)
    }
    best = None
    for node in g.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if exact.intersection(node.output):
            continue
        name = node.input[1]
        if name in constants:
            weight = numpy_helper.to_array(constants[name])
        elif name in transposed:
            weight = numpy_helper.to_array(constants[transposed[name]]).T
        else:
            continue
        if weight.ndim == 2 and (best is None or weight.size > best[1].size):
            best = (node, weight)
    if best is None:
        raise ValueError(
            "the graph has no MatMul or Gemm with a constant weight outside the state's "
            "computation to quantize"
        )
    node, weight = best
    bias = None
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
            raise ValueError(f"cannot quantize Gemm {node.name}: alpha, beta or transA are set")
        if attrs.get("transB"):
            weight = weight.T
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return node, np.ascontiguousarray(weight, dtype=np.float32), bias


def _size(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _is_2d_swap(node: onnx.NodeProto) -> bool:
    perm = [list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"]
    return not perm or perm[0] == [1, 0]


def _drop_unused(g: onnx.GraphProto) -> None:
    """Remove nodes and initializers nothing reads any more (the replaced Transpose)."""
    outputs = {v.name for v in g.output}
    while True:
        read = {name for n in g.node for name in n.input} | outputs
        dead = [n for n in g.node if not read.intersection(n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {name for n in g.node for name in n.input}
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep)
