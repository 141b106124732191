"""The PNG plots of training.evaluation.report (matplotlib, Agg: files only, no display). Each
function writes one file into `out` and returns its name, for an <img src> beside the HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bucket_bars(results: dict[str, dict[str, Any]], key: str, xlabel: str, out: Path) -> str:
    """Recall@20 and MRR@20 per bucket, one bar per model: where each model wins."""
    labels = list(next(iter(results.values()))[key])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    width = 0.8 / len(results)
    for ax, metric in zip(axes, ("recall", "mrr"), strict=True):
        for m, (name, r) in enumerate(results.items()):
            xs = [i + (m - (len(results) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, [r[key][b][metric] for b in labels], width, label=name)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{'Recall' if metric == 'recall' else 'MRR'}@20")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = f"{key}.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def training_curve(epochs: list[dict[str, Any]], out: Path) -> str:
    """Mean training loss per epoch, from the model file's history."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss per example")
    fig.tight_layout()
    fig.savefig(out / "training.png")
    plt.close(fig)
    return "training.png"


def tuning_curve(summary: dict[str, Any], out: Path) -> str:
    """Validation metric of each trial (pruned and failed trials left out) and the best so
    far; trial 0 is the base configuration."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    values = summary["curve"]
    done = [(i, v) for i, v in enumerate(values) if v is not None]
    ax.scatter([i for i, _ in done], [v for _, v in done], s=14, label="trial")
    ax.step(range(len(values)), summary["running_best"], where="post", label="best so far")
    if summary.get("base_value") is not None:
        ax.axhline(summary["base_value"], color="grey", ls="--", lw=1, label="base config")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{summary['metric']} (validation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tuning.png")
    plt.close(fig)
    return "tuning.png"
