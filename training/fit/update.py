"""Incremental training: continue a saved model on new clicks, growing its vocabulary.

    python -m training update --model runs/day5 --train data/day6.tsv --out runs/day6 \\
        [--param n_epochs=1] [--features features.npy]

What the updated model takes from its parent:
- vocabulary: the parent's items keep their indices; items first clicked in the new clicks
  are appended in first-click order (`updated_vocabulary`);
- weights: every tensor whose first dimension is the item count (output weights Wy and bias
  By, input embedding E, one-hot input gates, the p-RNN's ID gates, feature-tower output and
  item features, the Bloom position table) grows by rows, old rows copied bit for bit;
  everything else is copied. Bloom tables have m rows, not one per item, so they do not
  grow: new items just get their hashed bits (hashes of their indices, or of their ids
  when the parent hashed ids), and a bloom_bits ratio is pinned to the parent's m;
- new rows (`UpdateOptions.new_rows`): "mean" (default) = the parent's rows averaged with
  its click counts as weights, plus the reference initialisation's draw for that row, so a
  new item starts scored like a typical clicked item and new items do not tie; "init" = the
  reference initialisation alone. The p-RNN's feature rows come from `features` (the
  training format: a .npy with one row per item of the updated vocabulary), standardised
  with the parent items' column statistics; a p-RNN gets no new items without it;
- popularity: the new clicks' counts are added to the parent's;
- optimiser state: continued when the parent file has it (zeros for the new rows), else
  fresh, as for a first training run;
- metadata: "parent" (its directory, the sha256 of its model.pt, its item count and
  training time), "lineage" (every ancestor so, oldest first), "new_clicks" (the file and
  its sha256), "update" (what was used and added) and "trained_at" (the update's time).

The new clicks go through training's preprocessing rule (data.preprocess), with support
counted where it can be: a new item needs `min_item_support` clicks in these clicks (a rarer
one is left out now and joins in a later update once it has them); clicks on known items
always stay, however rare today, since they were supported when they entered the
vocabulary. Sessions left shorter than `min_session_length` are then dropped. Negatives are
sampled from the new clicks' popularity, as `fit` does for any training set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import Config
from ..data.logs import ITEM, SESSION, DataError, ItemVocab, Sessions, item_popularity
from ..evaluate import GRUScorer, collect_ranks, metrics_from_ranks
from ..models.architectures import build_model
from ..models.bloom import BloomGRU4Rec, bloom_positions
from .train import Interrupted, OptimizerState, Trained, fit, load_model, save_model

NEW_ROWS = ("mean", "init")
# settings that fix the shapes of the weights; an update cannot change them
STRUCTURAL = (
    "layers", "constrained_embedding", "embedding", "bloom_bits", "bloom_hashes", "bloom_on",
    "bloom_item_step", "architecture", "feature_layers", "optimizer",
)  # fmt: skip


@dataclass(frozen=True)
class UpdateOptions:
    min_item_support: int = 5  # data.preprocess's default, for items new in these clicks
    min_session_length: int = 2
    new_rows: str = "mean"  # see the module docstring

    def __post_init__(self) -> None:
        if self.new_rows not in NEW_ROWS:
            raise ValueError(f"new_rows={self.new_rows!r} is not one of {', '.join(NEW_ROWS)}")


@dataclass
class Updated:
    """An updated model with what save_model needs; meta holds the lineage."""

    model: nn.Module
    config: Config
    vocab: ItemVocab
    popularity: np.ndarray  # int64 (n_items,)
    optimizer_state: OptimizerState | None
    meta: dict[str, Any]


def select_clicks(
    events: pd.DataFrame, vocab: ItemVocab, options: UpdateOptions
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The new clicks training may use (the module docstring's rule) and what was dropped."""
    known = events[ITEM].isin(vocab.ids)
    support = events.groupby(ITEM)[ITEM].transform("size")
    kept = events[known | (support >= options.min_item_support)]
    length = kept.groupby(SESSION)[SESSION].transform("size")
    kept = kept[length >= options.min_session_length].reset_index(drop=True)
    rare = events[~known & (support < options.min_item_support)]
    stats = {
        "clicks": len(events),
        "clicks_used": len(kept),
        "rare_new_items_left_out": int(rare[ITEM].nunique()),
    }
    return kept, stats


def updated_vocabulary(vocab: ItemVocab, events: pd.DataFrame) -> ItemVocab:
    """The parent's ids in their order, then ids new in `events` in first-click order."""
    new = [i for i in ItemVocab.from_events(events).ids if i not in vocab.index]
    return ItemVocab(list(vocab.ids) + new)


def with_overrides(cfg: Config, params: list[str]) -> Config:
    """cfg with `name=value` overrides (e.g. n_epochs=1); structural settings are refused."""
    values = cfg.to_dict()
    for item in params:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r} must look like name=value, e.g. n_epochs=1")
        if name.strip() in STRUCTURAL:
            raise ValueError(
                f"{name.strip()} fixes the shapes of the weights and cannot change in an "
                "update; train a new model instead"
            )
        if name.strip() == "features" and cfg.architecture == "id":
            continue  # only a p-RNN reads features
        values[name.strip()] = value.strip()
    return Config.from_dict(values)


def grow_model(
    parent: Trained,
    vocab: ItemVocab,
    cfg: Config,
    options: UpdateOptions,
    features: np.ndarray | None = None,
) -> tuple[nn.Module, Config]:
    """The parent's model with item tables grown to len(vocab) rows (module docstring).

    features: raw (len(vocab), d) array for a p-RNN, None otherwise. Returns the model and
    the config to save with it (a Bloom bits ratio pinned to m). Raises ValueError
    when a p-RNN gets new items without features, or on tensors that cannot grow."""
    n_old, n_new = len(parent.vocab), len(vocab)
    cfg = _pin_bloom_bits(cfg, parent.model)
    parent_state = parent.model.state_dict()
    given = _grown_buffers(parent, vocab, features)
    torch.manual_seed(cfg.seed)  # the reference initialisation of the new rows, repeatable
    child = build_model(n_new, cfg, {**parent_state, **given})
    state = child.state_dict()
    weights = torch.as_tensor(np.maximum(parent.popularity, 0), dtype=torch.float64)
    for name, old in parent_state.items():
        fresh = state[name]
        if fresh.shape == old.shape:
            state[name] = old.clone()
        elif fresh.shape[1:] != old.shape[1:] or (old.shape[0], fresh.shape[0]) != (n_old, n_new):
            raise ValueError(f"{name}: cannot grow {tuple(old.shape)} to {tuple(fresh.shape)}")
        elif name in given:
            state[name] = given[name]
        else:
            rows = fresh[n_old:]
            if options.new_rows == "mean" and old.is_floating_point():
                rows = rows + _weighted_mean(old, weights).to(old.dtype)
            state[name] = torch.cat([old, rows])
    child.load_state_dict(state)
    return child, cfg


def _weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(n, ...) rows averaged with (n,) weights (uniformly when they are all zero)."""
    weights = weights if weights.sum() > 0 else torch.ones_like(weights)
    flat = rows.reshape(len(rows), -1).double()
    return (weights @ flat / weights.sum()).reshape(rows.shape[1:])


def _pin_bloom_bits(cfg: Config, model: nn.Module) -> Config:
    """A bloom_bits ratio would give a grown vocabulary another m; keep the parent's."""
    if not isinstance(model, BloomGRU4Rec) or cfg.bloom_bits > 1:
        return cfg
    n_bits = model.n_bits
    if n_bits < 2:
        raise ValueError(f"cannot pin a Bloom filter of {n_bits} bit for an update")
    return dataclasses.replace(cfg, bloom_bits=float(n_bits))


def _grown_buffers(
    parent: Trained, vocab: ItemVocab, features: np.ndarray | None
) -> dict[str, torch.Tensor]:
    """Item buffers that are data, not weights: p-RNN features and Bloom bits of new items."""
    state = parent.model.state_dict()
    added = list(vocab.ids[len(parent.vocab) :])
    grown: dict[str, torch.Tensor] = {}
    if "item_features" in state and added:
        grown["item_features"] = _grown_features(state["item_features"], features, len(vocab))
    if isinstance(parent.model, BloomGRU4Rec) and added:
        old = state["item_positions"]
        n_bits, n_old, k = parent.model.n_bits, len(parent.vocab), old.shape[1]
        # BloomGRU4Rec hashes what it is given: item indices by default, or ids
        if np.array_equal(old.numpy(), bloom_positions(range(n_old), n_bits, k)):
            keys: list[object] = list(range(n_old, len(vocab)))
        elif np.array_equal(old.numpy(), bloom_positions(parent.vocab.ids, n_bits, k)):
            keys = added
        else:
            raise ValueError("the parent's Bloom bits hash neither item indices nor item ids")
        new = torch.as_tensor(bloom_positions(keys, n_bits, k))
        grown["item_positions"] = torch.cat([old, new])
    return grown


def _grown_features(old: torch.Tensor, raw: np.ndarray | None, n_items: int) -> torch.Tensor:
    """(n_items, d): the parent's standardised rows, then the new items' rows standardised
    with the column statistics of the parent's items (as prnn.standardise computed them)."""
    n_old = len(old)
    if raw is None:
        raise ValueError(
            f"this p-RNN model reads item features and the new clicks bring {n_items - n_old} "
            "new items; pass --features FILE: a .npy with one row per item of the updated "
            "vocabulary (the parent's items in order, then the new ones in first-click order)"
        )
    raw_t = torch.as_tensor(np.asarray(raw, dtype=np.float32))
    if raw_t.shape != (n_items, old.shape[1]):
        raise ValueError(
            f"features of shape {tuple(raw_t.shape)}; expected ({n_items}, {old.shape[1]}): one "
            "row per item of the updated vocabulary, the parent's first"
        )
    mean = raw_t[:n_old].mean(dim=0, keepdim=True)
    std = raw_t[:n_old].std(dim=0, keepdim=True)
    scale = torch.where(std > 1e-6, std, torch.ones_like(std))
    if not torch.allclose((raw_t[:n_old] - mean) / scale, old, atol=1e-4):
        raise ValueError(
            "the first rows of the features are not the ones the parent model was trained "
            "with; the file must list the parent's items first, in its vocabulary order"
        )
    return torch.cat([old, (raw_t[n_old:] - mean) / scale])


def grow_optimizer_state(
    saved: OptimizerState | None, model: nn.Module, n_old: int
) -> OptimizerState | None:
    """The parent's optimiser state with zero rows for the new items' rows."""
    if saved is None:
        return None
    params = dict(model.named_parameters())
    grown: OptimizerState = {}
    for name, state in saved.items():
        shape = params[name].shape
        grown[name] = {
            key: torch.cat([v, v.new_zeros(shape[0] - n_old, *shape[1:])])
            if v.dim() and v.shape != shape and len(v) == n_old
            else v
            for key, v in state.items()
        }
    return grown


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def update(
    parent_dir: str | Path,
    events: pd.DataFrame,
    params: list[str] | None = None,
    options: UpdateOptions | None = None,
    features: np.ndarray | str | Path | None = None,
    source: str | Path = "new clicks",
    progress: bool = False,
    check: Callable[[ItemVocab, Config], None] | None = None,
    interruptible: bool = False,
) -> Updated:
    """Load the model in parent_dir, grow it for `events` and train it on them.

    events: SessionId, ItemId, Time (data.read_events); source: the file they came from
    (recorded with its sha256) or a description; params: Config overrides "name=value";
    features: p-RNN item features, an array or a .npy path (then recorded in the config).
    check(vocab, cfg): runs on the updated vocabulary and config before training, and may
    raise (the CLI refuses there what it could only find wrong after the training).
    interruptible: Ctrl-C raises train.Interrupted whose `result` is the Updated of the last
    completed epoch (meta "interrupted"), or None when no epoch completed.
    Raises DataError when no usable clicks are left, ValueError as grow_model does."""
    started = time.perf_counter()
    options = options or UpdateOptions()
    parent = load_model(parent_dir)
    if parent.config.architecture == "hrnn":
        raise ValueError(
            "update continues session-parallel training, which never sets an HRNN's user "
            "state: train the HRNN again on the whole log (`train --param architecture=hrnn`)"
        )
    source = str(source)
    array = np.load(features) if isinstance(features, str | Path) else features
    if isinstance(features, str | Path):  # the model's config names its features file
        params = [*(params or []), f"features={features}"]
    clicks, stats = select_clicks(events, parent.vocab, options)
    if clicks.empty:
        raise DataError(f"{source}: no clicks left after preprocessing ({stats})")
    vocab = updated_vocabulary(parent.vocab, clicks)
    cfg = with_overrides(parent.config, params or [])
    model, cfg = grow_model(parent, vocab, cfg, options, array)
    train = Sessions.from_events(clicks, vocab, source=source)
    if check is not None:
        check(vocab, cfg)
    state = grow_optimizer_state(parent.optimizer_state, model, len(parent.vocab))
    stopped = None
    try:
        model, history = fit(
            train, len(vocab), cfg, progress, model, optimizer_state=state,
            interruptible=interruptible,
        )  # fmt: skip
    except Interrupted as stop:
        if stop.model is None:
            raise
        model, history, stopped = stop.model, stop.history, stop
    popularity = item_popularity(train, len(vocab))
    popularity[: len(parent.vocab)] += parent.popularity
    meta = _lineage(parent_dir, parent, source)
    meta["update"] = {
        **stats,
        "new_items": len(vocab) - len(parent.vocab),
        "new_rows": options.new_rows,
        "optimizer_state_carried": state is not None,
    }
    meta.update({
        # absolute, as train records it: report reads it from any directory
        "train_file": str(Path(source).resolve()) if Path(source).is_file() else source,
        "train_clicks": train.n_events,
        "train_sessions": train.n_sessions,
        "train_seconds": round(time.perf_counter() - started, 2),
        "epochs": [{"epoch": e.epoch, "loss": e.loss} for e in history.epochs],
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip
    updated = Updated(model, cfg, vocab, popularity, history.optimizer_state, meta)
    if stopped is not None:  # the caller saves what the completed epochs made
        meta["interrupted"] = {"epochs_done": len(history.epochs), "n_epochs": stopped.n_epochs}
        stopped.result = updated
        raise stopped
    return updated


def _lineage(parent_dir: str | Path, parent: Trained, source: str) -> dict[str, Any]:
    path = Path(parent_dir).resolve()
    entry = {
        "path": str(path),
        "sha256": file_sha256(path / "model.pt"),
        "n_items": len(parent.vocab),
        "trained_at": parent.meta.get("trained_at"),
    }
    new_clicks = Path(source)
    return {
        "parent": entry,
        "lineage": [*parent.meta.get("lineage", []), entry],
        "new_clicks": {
            "path": str(new_clicks.resolve()) if new_clicks.exists() else source,
            "sha256": file_sha256(new_clicks) if new_clicks.is_file() else None,
        },
    }


def save_update(out_dir: str | Path, updated: Updated) -> Path:
    return save_model(
        out_dir,
        updated.model,
        updated.config,
        updated.vocab,
        updated.popularity,
        updated.meta,
        updated.optimizer_state,
    )


def evaluate_by_target(
    model: nn.Module, test: Sessions, is_new: np.ndarray, cutoffs=(20,), batch_size: int = 512
) -> dict[str, dict[str, float]]:
    """Recall/MRR/NDCG@cutoffs ("recall@20", ...) and "n_events" over all test targets
    ("all"), and split by is_new (bool (n_items,)) into "new" and "known" targets, e.g.
    is_new = np.arange(n_items) >= len(parent.vocab) for the items an update added."""
    scorer = _RecordingScorer(GRUScorer(model))
    ranks = collect_ranks(scorer, test, batch_size)
    targets = np.concatenate(scorer.targets) if scorer.targets else np.zeros(0, np.int64)
    new = np.asarray(is_new, dtype=bool)[targets]
    parts = {"all": ranks, "known": ranks[~new], "new": ranks[new]}
    return {
        name: {**metrics_from_ranks(r, cutoffs), "n_events": int(len(r))}
        for name, r in parts.items()
    }


class _RecordingScorer:
    """A Scorer that remembers each step's targets, in the order collect_ranks meets them."""

    def __init__(self, inner: GRUScorer):
        self.inner = inner
        self.targets: list[np.ndarray] = []

    def start(self, batch_size: int) -> None:
        self.inner.start(batch_size)

    def advance(self, step) -> torch.Tensor:
        self.targets.append(step.targets.cpu().numpy())
        return self.inner.advance(step)
