"""Which output layer `python -m training export` writes by default (`--quantize auto`): the
int8 one (export_quantize.py) where the catalogue is large enough for it to pay and it ranks
the check clicks as well as float32 does, float32 everywhere else.

    choice = choose_output_layer(fp32_graph, int8_graph, n_items, clicks, vocab, scorer)
    choice.int8, choice.why, choice.record()   # record() goes into metadata.json

The rule, both parts measured on this project's 2-core machine:
- at least AUTO_MIN_ITEMS items. `python scripts/bench_quantize.py` times the step (GRU,
  scores, TopK) of random-weight models of several sizes in both forms (README, "Cheaper
  scoring"): from 5,000 items int8 took 0.5-0.8x float32's time at batches of 1, 8 and 32
  in two runs; at 2,000 items 1.1-1.2x for one call, the product being too small to
  outweigh the state's quantisation.
- Recall@20 and MRR@20 of the int8 graph, every click of the check sessions ranked against
  all items (ties against the model, as training/evaluate.py counts them), at most 0.5%
  below float32's: the bar issue 21 set. The check sessions are the last CHECK_SESSIONS of
  the clicks given (`export --check-clicks`, by default the file the model was trained on):
  the comparison is between two forms of one model, so clicks it has seen serve as well as
  unseen ones. Without clicks to check on, or without onnxruntime, float32 is kept and the
  reason says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .data.logs import ITEM, SESSION, TIME, DataError, ItemVocab, Sessions, read_events
from .evaluate import Scorer, collect_ranks, metrics_from_ranks

AUTO_MIN_ITEMS = 5_000
CHECK_SESSIONS = 2_000
TOLERANCE = 0.005  # relative: int8's Recall@20 and MRR@20 at most 0.5% below float32's
CUTOFF = 20
METRICS = (f"recall@{CUTOFF}", f"mrr@{CUTOFF}")


@dataclass
class OutputLayerChoice:
    """What `--quantize auto` chose and why; check: the metrics behind it, if measured."""

    int8: bool
    why: str
    check: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"asked": "auto", "output_layer": "int8" if self.int8 else "float32",
                "why": self.why, "check": self.check or None}  # fmt: skip


def check_sessions(
    path: str | Path,
    vocab: ItemVocab,
    columns: tuple[str, str, str] = (SESSION, ITEM, TIME),
    limit: int = CHECK_SESSIONS,
) -> Sessions:
    """The last `limit` sessions (by start time) of a click log with these session, item and
    time columns, clicks on items outside the vocabulary dropped. Raises
    training.data.logs.DataError for a missing or bad file."""
    sessions = Sessions.from_events(read_events(path, *columns), vocab, "drop", str(path))
    first = max(0, sessions.n_sessions - limit)
    start = sessions.offsets[first]
    return Sessions(
        sessions.items[start:], sessions.offsets[first:] - start, sessions.session_ids[first:]
    )


GraphRunner = Callable[[onnx.ModelProto], Scorer]  # a step graph as the evaluation's Scorer


def compare(
    fp32: onnx.ModelProto, int8: onnx.ModelProto, sessions: Sessions, scorer: GraphRunner,
    batch: int = 64, progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Recall@20 and MRR@20 of both graphs on `sessions`, each run by scorer(graph), int8's
    relative difference from float32's per metric, and `within`: both differences at least
    -TOLERANCE."""
    out: dict[str, Any] = {"sessions": sessions.n_sessions}
    ranks = {}
    for kind, graph in (("float32", fp32), ("int8", int8)):
        run = scorer(graph)
        ranks[kind] = collect_ranks(run, sessions, batch, progress=progress, desc=f"check {kind}")
        metrics = metrics_from_ranks(ranks[kind], (CUTOFF,))
        out[kind] = {m: metrics[m] for m in METRICS}
    out["targets"] = int(len(ranks["float32"]))
    out["relative_diff"] = {
        m: (out["int8"][m] - out["float32"][m]) / out["float32"][m] if out["float32"][m] else 0.0
        for m in METRICS
    }
    out["within"] = bool(all(d >= -TOLERANCE for d in out["relative_diff"].values()))
    return out


def choose_output_layer(
    fp32: onnx.ModelProto,
    int8: onnx.ModelProto | None,
    n_items: int,
    clicks: str | Path | None,
    vocab: ItemVocab,
    scorer: GraphRunner,
    progress: bool = False,
    columns: tuple[str, str, str] = (SESSION, ITEM, TIME),
    asked: bool = True,
) -> OutputLayerChoice:
    """The rule of the module docstring. int8: the quantised graph, or None when the graph
    has no product with a column per item to quantise; clicks: the check's click log, None
    for none, with these session, item and time columns; scorer: a graph as a Scorer
    (export.GraphScorer, under onnxruntime). asked: clicks were given (--check-clicks),
    so a file that is missing or cannot be read raises DataError; the model's own training
    file that is gone or cannot be read (other column names, say) only keeps float32,
    saying why."""
    if n_items < AUTO_MIN_ITEMS:
        return OutputLayerChoice(False, f"{n_items:,} items: int8 pays from {AUTO_MIN_ITEMS:,}")
    if int8 is None:
        return OutputLayerChoice(
            False, "the graph has no product with a column per item to quantise (a Bloom "
            "output's has one per bit)"
        )  # fmt: skip
    if clicks is None:
        return OutputLayerChoice(
            False, "no clicks to check int8 on (the model records no training file); give "
            "--check-clicks FILE, or --quantize int8 to skip the check"
        )  # fmt: skip
    if not asked and not Path(clicks).is_file():  # a missing --check-clicks file raises below
        return OutputLayerChoice(
            False, f"no clicks to check int8 on: the model's training file {clicks} is not "
            "a file here; give --check-clicks FILE, or --quantize int8 to skip the check"
        )  # fmt: skip
    try:
        import onnxruntime  # noqa: F401  # optional for training: the check runs the graphs
    except ImportError:
        return OutputLayerChoice(
            False, "onnxruntime is not installed, so int8 could not be checked; install the "
            "serve-cpu extra, or give --quantize int8 to skip the check"
        )  # fmt: skip
    try:
        sessions = check_sessions(clicks, vocab, columns)
    except DataError as err:
        if asked:
            raise
        return OutputLayerChoice(
            False, f"the model's training file could not be read to check int8 on ({err}); "
            "give --check-clicks FILE (and its column names), or --quantize int8 to skip "
            "the check"
        )  # fmt: skip
    if sessions.n_events <= sessions.n_sessions:
        return OutputLayerChoice(False, f"{clicks} holds no click to check int8 on")
    result = compare(fp32, int8, sessions, scorer, progress=progress)
    result["clicks"] = str(clicks)
    diff = result["relative_diff"]
    figures = (
        f"Recall@20 {diff[METRICS[0]]:+.2%}, MRR@20 {diff[METRICS[1]]:+.2%} against float32 on "
        f"{result['targets']:,} clicks of the last {sessions.n_sessions:,} sessions of {clicks}"
    )
    if result["within"]:
        return OutputLayerChoice(True, f"{n_items:,} items; {figures}", result)
    return OutputLayerChoice(
        False, f"{figures}: more than {TOLERANCE:.1%} below; --quantize int8 forces it", result
    )
