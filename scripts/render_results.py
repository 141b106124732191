"""Render the README's result tables and docs/baselines.png from docs/results/*.json.

    .venv/bin/python scripts/render_results.py            # rewrite the blocks and the chart
    .venv/bin/python scripts/render_results.py --check    # exit 1 and print a diff if stale

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in README.md
(or docs/service.md); it is rendered from docs/results/NAME.json, which the benchmark script
named in that file's "command" wrote (scripts/provenance.py). A missing JSON file leaves its
block as it is, with a warning, so a table not yet regenerated stays as typed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from result_blocks import LABELS, RENDERERS, Record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "service.md")
BLOCK = re.compile(r"(<!-- results:([\w-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.DOTALL)


def plot_baselines(record: Record, path: Path, k: int = 20) -> None:
    """Grouped bars: one group per metric@k, one bar per model, values written on top."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = (("recall", "Recall"), ("mrr", "MRR"), ("ndcg", "NDCG"))
    results = record["results"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    width = 0.8 / len(results)
    for m, (name, res) in enumerate(results.items()):
        xs = [i + (m - (len(results) - 1) / 2) * width for i in range(len(metrics))]
        label = {**LABELS, "gru4rec": "GRU4Rec"}.get(name, name)
        bars = ax.bar(xs, [res[f"{key}@{k}"] for key, _ in metrics], width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(range(len(metrics)), [f"{label}@{k}" for _, label in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("Next-click prediction on the synthetic click log (all items ranked)")
    ax.legend(fontsize=8, ncols=len(results), loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)


def wrap(body: str, width: int = 95) -> str:
    """Prose paragraphs and list items filled to the README's width; tables as they are."""
    out = []
    for para in body.strip("\n").split("\n\n"):
        if para.startswith("|"):
            out.append(para)
            continue
        items = para.split("\n- ") if para.startswith("- ") else [para]
        indent = "  " if para.startswith("- ") else ""
        filled = [
            textwrap.fill(
                " ".join(item.split()),
                width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            for item in items
        ]
        out.append(("\n- " if indent else "\n").join(filled))
    return "\n\n".join(out) + "\n"


# --- the files ------------------------------------------------------------------------------


@dataclass
class Notes:
    warnings: list[str] = field(default_factory=list)  # missing JSON: block left as typed
    errors: list[str] = field(default_factory=list)  # JSON that does not render


def load(results_dir: Path, name: str) -> Record | None:
    path = results_dir / f"{name}.json"
    if not path.exists():
        return None
    return {**json.loads(path.read_text()), "_name": name}


def render_text(text: str, results_dir: Path, notes: Notes) -> str:
    """`text` with every known block rendered from its JSON file; the others as they are."""

    def block(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in RENDERERS:
            notes.errors.append(f"results:{name}: no renderer for this block")
            return match.group(0)
        try:
            record = load(results_dir, name)
            if record is None:
                notes.warnings.append(
                    f"docs/results/{name}.json missing: results:{name} left as it is"
                )
                return match.group(0)
            return match.group(1) + wrap(RENDERERS[name](record)) + match.group(4)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            notes.errors.append(f"docs/results/{name}.json does not render: {err!r}")
            return match.group(0)

    return BLOCK.sub(block, text)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--no-plots", action="store_true", help="do not redraw docs/baselines.png")
    args = ap.parse_args(argv)
    notes, stale = Notes(), []
    for doc in DOCS:
        old = doc.read_text()
        new = render_text(old, args.results_dir, notes)
        if new == old:
            continue
        stale.append(_rel(doc))
        if args.check:
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"{_rel(doc)} (as committed)",
                f"{_rel(doc)} (rendered from docs/results)",
            )
            sys.stdout.writelines(diff)
        else:
            doc.write_text(new)
            print(f"rendered {_rel(doc)}")
    record = None if args.check or args.no_plots else load(args.results_dir, "baselines")
    if record is not None:
        plot_baselines(record, ROOT / "docs" / "baselines.png")
        print("drew docs/baselines.png")
    for message in notes.warnings:
        print(f"warning: {message}", file=sys.stderr)
    for message in notes.errors:
        print(f"error: {message}", file=sys.stderr)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python scripts/render_results.py", file=sys.stderr)
    return 1 if notes.errors or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
