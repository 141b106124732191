"""Export a trained model for the service: ONNX graph, vocabulary, popularity, metadata.

    python -m training export --model runs/demo --out runs/demo/export
    python -m training export --model runs/demo --out runs/demo/export-int8 --quantize int8
    python -m training parity --model runs/demo --export runs/demo/export

The graph is one GRU4Rec step (service/runtime.py reads the files; the names below are
the contract between the two, kept here so that an install with only the `train` extra can
export; tests/training/test_export.py checks they match the service's):
    items (B,) int64, state (B, S) float32, k (1,) int64
 -> scores (B, N), new_state (B, S), top_scores (B, k), top_items (B, k)
where the state is the per-layer hidden states side by side (S = sum of layer sizes) and B
is dynamic. Ranking runs in the graph (ONNX TopK) rather than in numpy: at 40,000 items and
100 hidden units, one step with TopK took 0.33-0.37 ms on this 2-core machine against
0.68-0.77 ms for the step plus numpy argpartition over the returned score row
(scripts/bench_service.py reproduces the comparison).

Beside it, prefix.onnx advances many sessions through whole click prefixes in one run:
    items (T, B) int64, mask (T, B) bool, state (B, S) float32 -> new_state (B, S)
It is the step graph pruned to the nodes new_state depends on (no scores, no TopK), made
the body of an ONNX Scan over T; a Where keeps the state of rows whose mask is false.

An HRNN export adds user.onnx, the step between a user's sessions (export_user.py):
    user_state (B, U), state (B, S) -> new_user_state (B, U), start_state (B, S)

--quantize int8 runs model.onnx's output-layer product on int8 weights (export_quantize.py;
same inputs and outputs, metadata.json "quantization", model_version gru4rec-int8-...);
--quantize auto, the CLI's default, does so where the catalogue is large enough for it to
pay and the int8 graph ranks the model's clicks within 0.5% as well as float32
(quantize_check.py); none keeps float32. The parity check holds an int8 export to the
quantisation's error bound; scripts/bench_quantize.py compares its Recall@20 and MRR@20
with the float32 export's.
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
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from . import quantize_check
from .data.batching import Step
from .data.logs import ITEM, SESSION, TIME
from .export_quantize import (
    QUANTIZE_CHOICES,
    int8_output_weights,
    quantize_output_layer,
    score_error_bound,
)
from .export_user import (
    INPUT_FINAL_STATE,
    INPUT_USER_STATE,
    USER_FILE,
    UserStepGraph,
    user_graph,
    user_metadata,
)
from .fit.train import load_model
from .quantize_check import OutputLayerChoice, choose_output_layer

# --- the export format: file, input and output names (service/runtime.py reads them) ---
FORMAT_VERSION = 1
MODEL_FILE, PREFIX_FILE = "model.onnx", "prefix.onnx"
ITEMS_FILE, POPULARITY_FILE, METADATA_FILE = "items.txt", "popularity.npy", "metadata.json"
INPUT_ITEMS, INPUT_STATE, INPUT_K, INPUT_MASK = "items", "state", "k", "mask"
OUTPUT_SCORES, OUTPUT_STATE = "scores", "new_state"
OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS = "top_scores", "top_items"

DEFAULT_OPSET = 18  # what torch's exporter writes natively; onnxruntime 1.31.1 reads up to 25
# the step graph needs 18 (Split with num_outputs: 16 and 17 fail the checker), and torch's
# exporter wrote 18 for any value outside its range (5, 99) without a word
OPSETS = range(18, 26)
# onnxruntime 1.31.1 refuses IR versions above 13 (onnx 1.23 writes up to 14); opset 18
# needs only IR 8, and 10 keeps the file loadable by older runtimes too
MAX_IR_VERSION = 10
PARITY_RTOL = 1e-5  # float32 kernels differ in summation order; seen: below 1e-7
PARITY_ATOL = 1e-5
# A score sums products h_j * w_ij, so its rounding grows with the terms, not with the sum:
# an item scored near 0 carries rounding as large as the top item's. Scores are compared
# within PARITY_ATOL + PARITY_RTOL * (the row's largest |score|); an Adam-trained model
# (scores up to 26) differed by up to 1.2e-6 of that, 1.7e-5 in absolute terms.
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


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    quantize: str | None = None,
    check_clicks: str | Path | None = None,
    check_columns: tuple[str, str, str] = (SESSION, ITEM, TIME),
    progress: bool = False,
) -> Path:
    """Write model.onnx, prefix.onnx, items.txt, popularity.npy and metadata.json to
    out_dir; returns it. prefix.onnx is left out (metadata.json says why) for a step graph
    it cannot be built from. An HRNN also gets user.onnx, its user step (export_user.py).
    quantize="int8" runs model.onnx's output-layer product on int8 weights
    (export_quantize.py; metadata.json "quantization" says so); None keeps it float32;
    "auto" (the CLI's default) chooses int8 where quantize_check.py's rule allows it, checked
    on check_clicks (default: the training file the model records; check_columns: its
    session, item and time columns), and records the choice
    and its figures in metadata.json "output_layer_choice". prefix.onnx computes no scores
    and stays float32 either way.

    Raises ValueError for item ids that cannot go one a line or an unknown quantize,
    FileNotFoundError for a missing model."""
    if quantize is not None and quantize not in (*QUANTIZE_CHOICES, "auto"):
        raise ValueError(
            f"unknown quantize {quantize!r}; use auto, none or one of {', '.join(QUANTIZE_CHOICES)}"
        )
    if opset is not None and opset not in OPSETS:
        raise ValueError(
            f"opset {opset} cannot be written: the step graph needs {OPSETS[0]} or later and "
            f"onnxruntime reads up to {OPSETS[-1]}; give {OPSETS[0]}-{OPSETS[-1]} or leave it out "
            f"({DEFAULT_OPSET})"
        )
    trained = load_model(model_dir, device="cpu")
    ids = [str(i) for i in trained.vocab.ids]
    bad = next((i for i in ids if "\n" in i or "\r" in i), None)
    if bad is not None:
        raise ValueError(f"item id {bad!r} contains a line break; items.txt holds one id a line")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = StepGraph(trained.model).eval()
    graph = _to_onnx(step, opset or DEFAULT_OPSET)
    prefix, skipped = _prefix_or_reason(graph)  # from the float32 step: same states
    quantization = choice = None
    state_values = {v for n in _nodes_computing(graph.graph, OUTPUT_STATE) for v in n.output}
    if quantize == "int8":
        quantization = quantize_output_layer(graph, exact=state_values)
    elif quantize == "auto":
        choice, quantization = _choose_output_layer(
            trained, graph, state_values, check_clicks, check_columns, progress
        )
    data = graph.SerializeToString()
    (out / MODEL_FILE).write_bytes(data)
    (out / ITEMS_FILE).write_bytes(("\n".join(ids) + "\n").encode("utf-8"))
    np.save(out / POPULARITY_FILE, np.asarray(trained.popularity, dtype=np.int64))
    if prefix is None:
        # a prefix.onnx left from an earlier export would hold other weights
        (out / PREFIX_FILE).unlink(missing_ok=True)
    else:
        (out / PREFIX_FILE).write_bytes(prefix.SerializeToString())
    user = user_graph(trained.model, opset or DEFAULT_OPSET, MAX_IR_VERSION)  # HRNN only
    if user is None:
        (out / USER_FILE).unlink(missing_ok=True)  # one left from an earlier export
    else:
        (out / USER_FILE).write_bytes(user.SerializeToString())
    meta = _metadata(trained, step, graph, hashlib.sha256(data).hexdigest(), quantization)
    meta["output_layer_choice"] = None if choice is None else choice.record()
    meta["prefix_graph"] = None if prefix is None else PREFIX_FILE
    meta["user_graph"] = user_metadata(trained.model)
    # the service refuses a directory whose files were not written together (a graph of
    # another model beside these lists would serve wrong ids)
    written = [ITEMS_FILE, POPULARITY_FILE] + ([] if prefix is None else [PREFIX_FILE])
    written += [] if user is None else [USER_FILE]
    meta["files"] = {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in written
    }
    if skipped:
        meta["prefix_graph_skipped"] = f"{skipped}; the service feeds clicks one step at a time"
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _choose_output_layer(
    trained: Any,
    graph: onnx.ModelProto,
    state_values: set[str],
    check_clicks: str | Path | None,
    check_columns: tuple[str, str, str],
    progress: bool,
) -> tuple[OutputLayerChoice, dict | None]:
    """quantize="auto": (the OutputLayerChoice, the quantisation record or None); graph is
    rewritten to int8 in place when int8 is chosen."""
    n_items = len(trained.vocab)
    int8 = quantization = None
    if n_items >= quantize_check.AUTO_MIN_ITEMS:
        int8 = onnx.ModelProto()
        int8.CopyFrom(graph)
        try:
            quantization = quantize_output_layer(int8, exact=state_values)
        except ValueError:
            int8 = None
        weights = None if int8 is None else int8_output_weights(int8)
        if weights is None or weights[0].shape[1] != n_items:
            int8 = None  # a Bloom output's product has a column per bit, not per item
    clicks = check_clicks if check_clicks is not None else trained.meta.get("train_file")
    asked = check_clicks is not None
    choice = choose_output_layer(
        graph, int8, n_items, clicks, trained.vocab, GraphScorer, progress, check_columns, asked
    )
    if not choice.int8:
        return choice, None
    assert int8 is not None
    graph.CopyFrom(int8)
    return choice, quantization


def _to_onnx(step: StepGraph, opset: int) -> onnx.ModelProto:
    items = torch.zeros(2, dtype=torch.long)  # batch 2, not 1: a 1 would be specialised
    state = torch.zeros(2, sum(step.sizes))
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # the exporter warns that the two inputs' batch axes, one and the same Dim, share a
        # name, and narrates its passes on stdout
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        path = Path(tmp) / MODEL_FILE
        with redirect_stdout(io.StringIO()):
            torch.onnx.export(
                step,
                (items, state),
                path,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_ITEMS, INPUT_STATE],
                output_names=[OUTPUT_SCORES, OUTPUT_STATE],
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
    g.input.append(helper.make_tensor_value_info(INPUT_K, TensorProto.INT64, [1]))
    g.node.append(
        helper.make_node(
            "TopK",
            [OUTPUT_SCORES, INPUT_K],
            [OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS],
            axis=1,
            largest=1,
            sorted=1,
            name="rank_top_k",
        )
    )
    g.output.append(
        helper.make_tensor_value_info(OUTPUT_TOP_SCORES, TensorProto.FLOAT, ["batch", "k"])
    )
    g.output.append(
        helper.make_tensor_value_info(OUTPUT_TOP_ITEMS, TensorProto.INT64, ["batch", "k"])
    )


# value names prefix.onnx adds around the step's nodes; checked unused by the step graph
_MASK_COLUMN, _MASK_AXES = "prefix_mask_column", "prefix_mask_axes"
_BODY_STATE, _BODY_ITEMS, _BODY_MASK = "scan_state", "scan_items", "scan_mask"
_BODY_STEPPED, _BODY_NEW_STATE = "scan_stepped", "scan_new_state"
_ADDED_NAMES = {INPUT_MASK, _MASK_COLUMN, _MASK_AXES, _BODY_STATE, _BODY_ITEMS, _BODY_MASK}
_ADDED_NAMES |= {_BODY_STEPPED, _BODY_NEW_STATE}
_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


class _Unsupported(Exception):
    """The step graph holds something the prefix graph cannot be built around."""


def _prefix_or_reason(step: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str]:
    """(prefix graph, "") or (None, why it was left out)."""
    try:
        return _prefix_graph(step), ""
    except _Unsupported as err:
        return None, str(err)


def _prefix_graph(step: onnx.ModelProto) -> onnx.ModelProto:
    """prefix.onnx from the step graph: items (T, B) int64, mask (T, B) bool, state (B, S)
    float32 -> new_state (B, S), the state after each column's clicks where mask is true.

    Raises _Unsupported for graphs with local functions or nested graphs (the pruning would
    miss what they use) or that already use a name the Scan wrapper adds."""
    g = step.graph
    if step.functions or any(a.type in _GRAPH_ATTRIBUTES for n in g.node for a in n.attribute):
        raise _Unsupported("the step graph has local functions or nested graphs")
    used = {name for n in g.node for name in (*n.input, *n.output)}
    if clash := sorted(used & _ADDED_NAMES):
        raise _Unsupported(f"the step graph already uses the names {clash}")
    state = next(v for v in g.input if v.name == INPUT_STATE)
    size = state.type.tensor_type.shape.dim[1].dim_value
    scan = helper.make_node(
        "Scan",
        [INPUT_STATE, INPUT_ITEMS, _MASK_COLUMN],  # loop state first, then scanned
        [OUTPUT_STATE],
        body=_scan_body(g, size),
        num_scan_inputs=2,
        name="prefix_scan",
    )
    # the mask as (T, B, 1) once here, so each step's slice broadcasts over the state
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), _MASK_AXES)
    unsqueeze = helper.make_node("Unsqueeze", [INPUT_MASK, _MASK_AXES], [_MASK_COLUMN])
    graph = helper.make_graph(
        [unsqueeze, scan],
        "gru4rec_prefix",
        [
            helper.make_tensor_value_info(INPUT_ITEMS, TensorProto.INT64, ["time", "batch"]),
            helper.make_tensor_value_info(INPUT_MASK, TensorProto.BOOL, ["time", "batch"]),
            helper.make_tensor_value_info(INPUT_STATE, TensorProto.FLOAT, ["batch", size]),
        ],
        [helper.make_tensor_value_info(OUTPUT_STATE, TensorProto.FLOAT, ["batch", size])],
        initializer=[axes],
    )
    prefix = helper.make_model(graph, opset_imports=step.opset_import)
    prefix.ir_version = min(prefix.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(prefix, full_check=True)
    return prefix


def _scan_body(step: onnx.GraphProto, size: int) -> onnx.GraphProto:
    """One masked step: scan_state (B, S), scan_items (B,), scan_mask (B, 1) -> scan_new_state
    (B, S), the step's new state where the mask is true and scan_state elsewhere.

    Holds the nodes new_state depends on and their weights. Weights in the body rather than
    read from the outer scope: onnxruntime 1.31.1 ran 29 steps of a 40,000-item, 100-unit
    model 15-18% faster that way on this 2-core machine (0.52 against 0.64 ms)."""
    nodes = _nodes_computing(step, OUTPUT_STATE)
    # the step's own input and output names are the outer graph's; the body gets its own
    rename = {
        INPUT_ITEMS: _BODY_ITEMS,
        INPUT_STATE: _BODY_STATE,
        OUTPUT_STATE: _BODY_STEPPED,
    }
    body = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(name, name) for name in node.input]
        copy.output[:] = [rename.get(name, name) for name in node.output]
        body.append(copy)
    keep = helper.make_node("Where", [_BODY_MASK, _BODY_STEPPED, _BODY_STATE], [_BODY_NEW_STATE])
    read = {name for n in nodes for name in n.input}
    return helper.make_graph(
        [*body, keep],
        "masked_step",
        [
            helper.make_tensor_value_info(_BODY_STATE, TensorProto.FLOAT, ["batch", size]),
            helper.make_tensor_value_info(_BODY_ITEMS, TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info(_BODY_MASK, TensorProto.BOOL, ["batch", 1]),
        ],
        [helper.make_tensor_value_info(_BODY_NEW_STATE, TensorProto.FLOAT, ["batch", size])],
        initializer=[t for t in step.initializer if t.name in read],
    )


def _nodes_computing(graph: onnx.GraphProto, output: str) -> list[onnx.NodeProto]:
    """The nodes `output` depends on, in graph order (ONNX graphs are topologically sorted)."""
    wanted, kept = {output}, []
    for node in reversed(graph.node):
        if wanted.intersection(node.output):
            kept.append(node)
            wanted.update(name for name in node.input if name)
    return kept[::-1]


def _metadata(
    trained: Any, step: StepGraph, graph: onnx.ModelProto, digest: str, quantization: dict | None
) -> dict:
    meta = dict(trained.meta)
    training = {k: v for k, v in meta.items() if k != "evaluation"}
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    # the version names the int8 output layer, so Status and the metrics' labels show it
    kind = "gru4rec" if quantization is None else f"gru4rec-{quantization['output_layer']}"
    return {
        "format_version": FORMAT_VERSION,
        "model_version": f"{kind}-{digest[:12]}",  # same weights, same version
        "quantization": quantization,  # None: float32 throughout
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

    ok when at every step the scores agree within PARITY_ATOL + PARITY_RTOL * the row's
    largest |score| (plus, for an int8 output layer, each score's quantisation bound,
    export_quantize.score_error_bound), the states within rtol=PARITY_RTOL,
    atol=PARITY_ATOL, and each row's top-20 items are the same in the same order (but for
    items whose scores lie within those tolerances), both from the scores and from the
    graph's TopK; and when the states after ragged prefixes of the sessions (0 to n_steps clicks),
    all in one `advance_many`, agree likewise; and for an HRNN when user.onnx agrees
    likewise with UserStepGraph on n_sessions random states."""
    trained = load_model(model_dir, device="cpu")
    exported = _OnnxRunner(Path(export_dir))
    if exported.item_ids != [str(i) for i in trained.vocab.ids]:
        raise ValueError(f"{export_dir} holds another item vocabulary than {model_dir}")
    step = StepGraph(trained.model).eval()
    rng = np.random.default_rng(seed)
    clicks = rng.integers(0, exported.n_items, size=(n_steps, n_sessions))
    lengths = rng.integers(0, n_steps + 1, size=n_sessions)  # of the prefixes, some empty
    state = torch.zeros(n_sessions, sum(step.sizes))
    states = [state.numpy()]  # PyTorch's, after 0, 1, ... clicks
    ort_state = exported.zero_state(n_sessions)
    top = min(PARITY_TOP, exported.n_items)
    int8 = int8_output_weights(onnx.load(Path(export_dir) / MODEL_FILE))
    if int8 is not None and int8[0].shape[1] != exported.n_items:
        int8 = None  # not the scores' own product (a Bloom output): no bound per item
    worst = {"scores": 0.0, "state": 0.0, "abs": 0.0}
    top_mismatches = graph_top_mismatches = 0
    for items in clicks:
        scores, state = step(torch.as_tensor(items), state)
        ort_scores, ort_state_next = exported.scores(items, ort_state)
        top_scores, top_items, _ = exported.top_k(items, ort_state, top)
        ort_state = ort_state_next
        states.append(state.numpy())
        reference = scores.numpy()
        size = np.abs(reference).max(axis=1, keepdims=True)  # of the row's terms; see PARITY_
        slack = np.zeros_like(reference)
        if int8 is not None:  # the output layer's input: the last layer's state
            slack = score_error_bound(state.numpy()[:, -int8[0].shape[0] :], *int8)
        worst["scores"] = max(worst["scores"], _excess(ort_scores, reference, size, slack))
        worst["state"] = max(worst["state"], _excess(ort_state, state.numpy()))
        worst["abs"] = max(worst["abs"], float(np.max(np.abs(ort_scores - reference))))
        torch_top = np.argsort(-reference, axis=1, kind="stable")[:, :top]
        ort_top = np.argsort(-ort_scores, axis=1, kind="stable")[:, :top]
        top_mismatches += _rank_disagreements(reference, torch_top, ort_top, size, slack)
        graph_top_mismatches += _rank_disagreements(reference, ort_top, top_items, size, slack)
    prefixes = [clicks[:n, b] for b, n in enumerate(lengths)]
    after = exported.advance_many(prefixes, exported.zero_state(n_sessions))
    expected = np.stack([states[n][b] for b, n in enumerate(lengths)])
    worst["prefix"] = _excess(after, expected)
    worst["user"] = _user_step_excess(trained.model, exported, rng, n_sessions)
    ok = worst["scores"] <= 1.0 and worst["state"] <= 1.0 and worst["prefix"] <= 1.0
    ok = ok and worst["user"] <= 1.0
    ok = ok and top_mismatches == 0
    return {
        "ok": bool(ok and graph_top_mismatches == 0),
        "sessions": n_sessions,
        "steps": n_steps,
        "rtol": PARITY_RTOL,
        "atol": PARITY_ATOL,
        "score_tolerance": "atol + rtol * the row's largest |score|"
        + ("" if int8 is None else " + the int8 output layer's error bound per score"),
        "max_abs_score_diff": worst["abs"],
        "worst_score_error_vs_tolerance": worst["scores"],
        "worst_state_error_vs_tolerance": worst["state"],
        "worst_prefix_state_error_vs_tolerance": worst["prefix"],
        "prefix_graph": exported.prefix is not None,
        "user_graph": exported.user is not None,
        "worst_user_step_error_vs_tolerance": worst["user"],
        f"top{top}_mismatched_rows": top_mismatches,
        f"graph_top{top}_mismatched_rows": graph_top_mismatches,
        "provider": exported.provider,
        "quantization": exported.quantization,
    }


class GraphScorer:
    """A step graph (in memory) under onnxruntime as the evaluation's Scorer, its state in
    numpy: what `--quantize auto` checks the int8 graph with (quantize_check.py)."""

    def __init__(self, graph: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            graph.SerializeToString(), options, ["CPUExecutionProvider"]
        )
        state = next(v for v in graph.graph.input if v.name == INPUT_STATE)
        self.state_size = int(state.type.tensor_type.shape.dim[1].dim_value)
        self.state = np.zeros((1, self.state_size), np.float32)

    def start(self, batch_size: int) -> None:
        self.state = np.zeros((batch_size, self.state_size), np.float32)

    def advance(self, step: Step) -> torch.Tensor:
        state = self.state
        if step.keep is not None:
            state = state[step.keep.numpy()]
        if step.reset is not None:
            state = np.where(step.reset.numpy()[:, None], np.float32(0.0), state)
        feeds = {INPUT_ITEMS: step.inputs.numpy().astype(np.int64), INPUT_STATE: state,
                 INPUT_K: np.array([1], np.int64)}  # fmt: skip
        scores, self.state = self.session.run([OUTPUT_SCORES, OUTPUT_STATE], feeds)
        return torch.from_numpy(scores)


class _OnnxRunner:
    """The exported graphs under onnxruntime on the CPU, for the parity check only (the
    service has its own runtime). onnxruntime is not part of the `train` extra: install
    `sessionrec[serve-cpu]` or `pip install onnxruntime` to check parity."""

    def __init__(self, root: Path):
        try:
            import onnxruntime as ort  # optional: exporting does not need it
        except ImportError as err:
            raise RuntimeError(
                "the parity check runs the export under onnxruntime, which is not installed; "
                "`pip install onnxruntime` (or the serve-cpu extra)"
            ) from err
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(root / MODEL_FILE), options, ["CPUExecutionProvider"]
        )
        prefix = root / PREFIX_FILE
        self.prefix = (
            ort.InferenceSession(str(prefix), options, ["CPUExecutionProvider"])
            if prefix.is_file()
            else None
        )
        user = root / USER_FILE
        self.user = (
            ort.InferenceSession(str(user), options, ["CPUExecutionProvider"])
            if user.is_file()
            else None
        )
        self.provider = self.session.get_providers()[0]
        self.item_ids = (
            (root / ITEMS_FILE).read_bytes().decode("utf-8").removesuffix("\n").split("\n")
        )
        self.n_items = len(self.item_ids)
        meta = json.loads((root / METADATA_FILE).read_text())
        self.state_size = int(meta["state_size"])
        self.quantization = meta.get("quantization")

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.state_size), dtype=np.float32)

    def _run(self, outputs: list[str], items: np.ndarray, state: np.ndarray, k: int) -> list:
        feeds = {
            INPUT_ITEMS: np.asarray(items, dtype=np.int64),
            INPUT_STATE: np.asarray(state, dtype=np.float32),
            INPUT_K: np.array([k], dtype=np.int64),
        }
        return self.session.run(outputs, feeds)

    def scores(self, items: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, new_state = self._run([OUTPUT_SCORES, OUTPUT_STATE], items, state, 1)
        return scores, new_state

    def top_k(self, items: np.ndarray, state: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        outputs = [OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS, OUTPUT_STATE]
        return tuple(self._run(outputs, items, state, k))

    def advance_many(self, prefixes: list[np.ndarray], state: np.ndarray) -> np.ndarray:
        """Each row's own clicks (possibly none), by prefix.onnx or step by step."""
        lengths = np.array([len(p) for p in prefixes])
        mask = np.arange(lengths.max(initial=0))[:, None] < lengths  # (T, B)
        items = np.zeros(mask.shape, dtype=np.int64)  # padding 0: a valid index, masked out
        for b, prefix in enumerate(prefixes):
            items[: len(prefix), b] = prefix
        if not len(items):
            return state.copy()
        if self.prefix is not None:
            feeds = {INPUT_ITEMS: items, INPUT_MASK: mask, INPUT_STATE: state}
            return self.prefix.run([OUTPUT_STATE], feeds)[0]
        for t in range(len(items)):
            stepped = self._run([OUTPUT_STATE], items[t], state, 1)[0]
            state = np.where(mask[t][:, None], stepped, state)
        return state


def _user_step_excess(model: nn.Module, exported: _OnnxRunner, rng: Any, n: int) -> float:
    """user.onnx against UserStepGraph on n random (user, state) rows, as _excess; 0 when
    neither side has a user graph, inf when only one has."""
    if (exported.user is None) != (user_metadata(model) is None):
        return float("inf")
    if exported.user is None:
        return 0.0
    step = UserStepGraph(model).eval()  # type: ignore[arg-type]  # an HRNN: checked above
    user = rng.normal(size=(n, step.sizes[-1])).astype(np.float32)
    state = rng.normal(size=(n, sum(step.sizes))).astype(np.float32)
    got = exported.user.run(None, {INPUT_USER_STATE: user, INPUT_FINAL_STATE: state})
    expected = step(torch.from_numpy(user), torch.from_numpy(state))
    return max(_excess(g, e.numpy()) for g, e in zip(got, expected, strict=True))


def _excess(
    actual: np.ndarray,
    expected: np.ndarray,
    size: np.ndarray | None = None,
    slack: np.ndarray | float = 0.0,
) -> float:
    """max |a - e| / (atol + rtol * size + slack), size |e| unless given (the row's largest
    |score| for scores), slack what an int8 output layer may add: at most 1 means
    allclose(a, e, rtol, atol) holds, beyond the slack."""
    bound = PARITY_ATOL + PARITY_RTOL * (np.abs(expected) if size is None else size) + slack
    return float(np.max(np.abs(actual - expected) / bound))


def _rank_disagreements(
    scores: np.ndarray,
    expected: np.ndarray,
    got: np.ndarray,
    size: np.ndarray,
    slack: np.ndarray | None = None,
) -> int:
    """Rows whose top lists differ at a position where the items' scores do not tie
    (within the score tolerance; size: (B, 1), the row's largest |score|).

    Items with equal scores (Bloom items sharing all their bits, say) may come in either
    order on either side without that being a disagreement. With an int8 output layer's
    slack (B, N), a row disagrees when no scores within tolerance and slack of `scores`
    would rank its `got` list so."""
    if slack is not None and slack.any():
        return _inconsistent_rows(scores, np.asarray(got, dtype=np.int64),
                                  PARITY_ATOL + PARITY_RTOL * size + slack)  # fmt: skip
    a = np.take_along_axis(scores, expected, axis=1)
    b = np.take_along_axis(scores, np.asarray(got, dtype=np.int64), axis=1)
    same = (expected == got) | (np.abs(a - b) <= PARITY_ATOL + PARITY_RTOL * size)
    return int((~same).any(axis=1).sum())


def _inconsistent_rows(scores: np.ndarray, got: np.ndarray, tolerance: np.ndarray) -> int:
    """Rows (of scores (B, N)) whose top list got (B, t) ranks an item above one whose
    score is higher by more than both items' tolerances (B, N) together, counting every
    item it leaves out as ranked below its last."""
    low, high = scores - tolerance, scores + tolerance
    t = got.shape[1]
    bad = 0
    for lows, highs, top in zip(low, high, got.tolist(), strict=True):
        # the t + 1 highest lower ends hold the highest outside any prefix of the t
        ahead = np.argsort(-lows, kind="stable")[: t + 1].tolist()
        taken: set[int] = set()
        for item in top:
            taken.add(item)
            rival = next((i for i in ahead if i not in taken), None)  # None: all taken
            if rival is not None and lows[rival] > highs[item]:
                bad += 1
                break
    return bad
