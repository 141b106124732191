"""Export a trained model for the service: ONNX graph, vocabulary, popularity, metadata.

    python -m training export --model runs/demo --out runs/demo/export
    python -m training parity --model runs/demo --export runs/demo/export

The graph is one GRU4Rec step (service/runtime.py documents the files):
    items (B,) int64, state (B, S) float32, k (1,) int64
 -> scores (B, N), new_state (B, S), top_scores (B, k), top_items (B, k)
where the state is the per-layer hidden states side by side (S = sum of layer sizes) and B
is dynamic. Ranking runs in the graph (ONNX TopK) rather than in numpy: at 40,000 items and
100 hidden units, one step with TopK took 0.33-0.37 ms on this 2-core machine against
0.68-0.77 ms for the step plus numpy argpartition over the returned score row
(scripts/bench_service.py reproduces the comparison).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from service import runtime as rt

from .train import load_model

DEFAULT_OPSET = 18  # what torch's exporter writes natively; onnxruntime 1.31.1 reads up to 25
# onnxruntime 1.31.1 refuses IR versions above 13 (onnx 1.23 writes up to 14); opset 18
# needs only IR 8, and 10 keeps the file loadable by older runtimes too
MAX_IR_VERSION = 10
PARITY_RTOL = 1e-5  # float32 kernels differ in summation order; seen: below 1e-7
PARITY_ATOL = 1e-5
PARITY_TOP = 20


class StepGraph(nn.Module):
    """One recurrent step with the hidden state as a single (B, S) tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        hidden = model.init_hidden(1, "cpu")  # type: ignore[operator]  # GRU4Rec and variants
        self.sizes = [int(h.shape[1]) for h in hidden]

    def forward(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = list(torch.split(state, self.sizes, dim=1))
        scores, new_hidden = self.model(items, hidden, None)  # (B, N), per layer (B, H_i)
        return scores, torch.cat(new_hidden, dim=1)


def export_model(model_dir: str | Path, out_dir: str | Path, *, opset: int | None = None) -> Path:
    """Write model.onnx, items.txt, popularity.npy and metadata.json to out_dir; returns it.

    Raises ValueError for item ids that cannot go one a line, FileNotFoundError for a
    missing model."""
    trained = load_model(model_dir, device="cpu")
    ids = [str(i) for i in trained.vocab.ids]
    bad = next((i for i in ids if "\n" in i or "\r" in i), None)
    if bad is not None:
        raise ValueError(f"item id {bad!r} contains a line break; items.txt holds one id a line")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = StepGraph(trained.model).eval()
    graph = _to_onnx(step, opset or DEFAULT_OPSET)
    data = graph.SerializeToString()
    (out / rt.MODEL_FILE).write_bytes(data)
    (out / rt.ITEMS_FILE).write_bytes(("\n".join(ids) + "\n").encode("utf-8"))
    np.save(out / rt.POPULARITY_FILE, np.asarray(trained.popularity, dtype=np.int64))
    meta = _metadata(trained, step, graph, hashlib.sha256(data).hexdigest())
    (out / rt.METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _to_onnx(step: StepGraph, opset: int) -> onnx.ModelProto:
    items = torch.zeros(2, dtype=torch.long)  # batch 2, not 1: a 1 would be specialised
    state = torch.zeros(2, sum(step.sizes))
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # the exporter warns that the two inputs' batch axes, one and the same Dim, share a
        # name, and narrates its passes on stdout
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        path = Path(tmp) / rt.MODEL_FILE
        with redirect_stdout(io.StringIO()):
            torch.onnx.export(
                step,
                (items, state),
                path,
                dynamo=True,
                opset_version=opset,
                input_names=[rt.INPUT_ITEMS, rt.INPUT_STATE],
                output_names=[rt.OUTPUT_SCORES, rt.OUTPUT_STATE],
                dynamic_shapes={"items": {0: batch}, "state": {0: batch}},
            )
        graph = onnx.load(path)  # weights inline again, whatever the exporter chose
    _append_top_k(graph)
    graph.ir_version = min(graph.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(graph, full_check=True)
    return graph


def _append_top_k(graph: onnx.ModelProto) -> None:
    """Add input k (1,) int64 and outputs top_scores/top_items = TopK(scores, k), best first."""
    g = graph.graph
    g.input.append(helper.make_tensor_value_info(rt.INPUT_K, TensorProto.INT64, [1]))
    g.node.append(
        helper.make_node(
            "TopK",
            [rt.OUTPUT_SCORES, rt.INPUT_K],
            [rt.OUTPUT_TOP_SCORES, rt.OUTPUT_TOP_ITEMS],
            axis=1,
            largest=1,
            sorted=1,
            name="rank_top_k",
        )
    )
    g.output.append(
        helper.make_tensor_value_info(rt.OUTPUT_TOP_SCORES, TensorProto.FLOAT, ["batch", "k"])
    )
    g.output.append(
        helper.make_tensor_value_info(rt.OUTPUT_TOP_ITEMS, TensorProto.INT64, ["batch", "k"])
    )


def _metadata(trained: Any, step: StepGraph, graph: onnx.ModelProto, digest: str) -> dict:
    meta = dict(trained.meta)
    training = {k: v for k, v in meta.items() if k != "evaluation"}
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "format_version": rt.FORMAT_VERSION,
        "model_version": f"gru4rec-{digest[:12]}",  # same weights, same version
        "n_items": len(trained.vocab),
        "state_size": sum(step.sizes),
        "state_layers": step.sizes,
        "scores": "raw logits, higher is better; ties ranked by lower item index",
        "onnx": {"opset": opset, "ir_version": graph.ir_version, "sha256": digest},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_version": torch.__version__,
        "config": trained.config.to_dict(),
        "training": training,
        "evaluation": meta.get("evaluation"),
    }


@torch.no_grad()
def check_parity(
    model_dir: str | Path,
    export_dir: str | Path,
    n_sessions: int = 64,
    seed: int = 0,
    n_steps: int = 8,
) -> dict[str, Any]:
    """Run random sessions (all n_sessions as one batch, n_steps clicks each) through PyTorch
    and onnxruntime side by side.

    ok when at every step the scores agree within rtol=PARITY_RTOL, atol=PARITY_ATOL, the
    states likewise, and each row's top-20 items are the same in the same order, both from
    the scores and from the graph's TopK."""
    trained = load_model(model_dir, device="cpu")
    exported = rt.ExportedModel.load(export_dir, device="cpu")
    if exported.item_ids != [str(i) for i in trained.vocab.ids]:
        raise ValueError(f"{export_dir} holds another item vocabulary than {model_dir}")
    step = StepGraph(trained.model).eval()
    rng = np.random.default_rng(seed)
    clicks = rng.integers(0, exported.n_items, size=(n_steps, n_sessions))
    state = torch.zeros(n_sessions, sum(step.sizes))
    ort_state = exported.zero_state(n_sessions)
    top = min(PARITY_TOP, exported.n_items)
    worst = {"scores": 0.0, "state": 0.0, "abs": 0.0}
    top_mismatches = graph_top_mismatches = 0
    for items in clicks:
        scores, state = step(torch.as_tensor(items), state)
        ort_scores, ort_state_next = exported.scores(items, ort_state)
        top_scores, top_items, _ = exported.top_k(items, ort_state, top)
        ort_state = ort_state_next
        worst["scores"] = max(worst["scores"], _excess(ort_scores, scores.numpy()))
        worst["state"] = max(worst["state"], _excess(ort_state, state.numpy()))
        worst["abs"] = max(worst["abs"], float(np.max(np.abs(ort_scores - scores.numpy()))))
        reference = scores.numpy()
        torch_top = np.argsort(-reference, axis=1, kind="stable")[:, :top]
        ort_top = np.argsort(-ort_scores, axis=1, kind="stable")[:, :top]
        top_mismatches += _rank_disagreements(reference, torch_top, ort_top)
        graph_top_mismatches += _rank_disagreements(reference, ort_top, top_items)
    ok = worst["scores"] <= 1.0 and worst["state"] <= 1.0 and top_mismatches == 0
    return {
        "ok": bool(ok and graph_top_mismatches == 0),
        "sessions": n_sessions,
        "steps": n_steps,
        "rtol": PARITY_RTOL,
        "atol": PARITY_ATOL,
        "max_abs_score_diff": worst["abs"],
        "worst_score_error_vs_tolerance": worst["scores"],
        "worst_state_error_vs_tolerance": worst["state"],
        f"top{top}_mismatched_rows": top_mismatches,
        f"graph_top{top}_mismatched_rows": graph_top_mismatches,
        "provider": exported.provider,
    }


def _excess(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / (atol + rtol |e|): at most 1 means allclose(a, e, rtol, atol) holds."""
    bound = PARITY_ATOL + PARITY_RTOL * np.abs(expected)
    return float(np.max(np.abs(actual - expected) / bound))


def _rank_disagreements(scores: np.ndarray, expected: np.ndarray, got: np.ndarray) -> int:
    """Rows whose top lists differ at a position where the items' scores do not tie.

    Items with equal scores (Bloom items sharing all their bits, say) may come in either
    order on either side without that being a disagreement."""
    a = np.take_along_axis(scores, expected, axis=1)
    b = np.take_along_axis(scores, np.asarray(got, dtype=np.int64), axis=1)
    same = (expected == got) | np.isclose(a, b, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    return int((~same).any(axis=1).sum())
