"""The frozen demo model through the service's own code, with and without `exclude_clicked`:
the table in docs/service.md ("Clicked items are allowed by default").

    .venv/bin/python -m training generate --out data/demo
    .venv/bin/python -m training train --train data/demo/train.tsv --config synthetic_demo \\
        --out runs/demo
    .venv/bin/python -m training export --model runs/demo --out runs/demo-export
    .venv/bin/python scripts/replay_demo.py [--model runs/demo-export] [--data data/demo] \\
        [--results replay]

Each variant is `python -m service.tools.replay --no-online` (progressive replay of test.tsv after
train.tsv, every next click counted); the default request is also scored by
`python -m training evaluate` on the torch model beside the export (--torch-model), which it
equals. --results NAME writes docs/results/NAME.json for scripts/render_results.py (docs/service.md:
--results replay).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import write_results  # noqa: E402

from service.tools.replay import build_engine, read_clicks, replay  # noqa: E402


def evaluate_torch(model_dir: Path, data: Path) -> dict[str, float]:
    """Recall/MRR@20 of `python -m training evaluate` for the model the export came from."""
    from training.data.logs import Sessions, read_events
    from training.evaluate import GRUScorer, evaluate
    from training.fit.train import load_model

    trained = load_model(model_dir)
    test = Sessions.from_events(read_events(data / "test.tsv"), trained.vocab)
    return evaluate(GRUScorer(trained.model), test, (20,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo-export"), help="export dir")
    ap.add_argument("--torch-model", type=Path, default=Path("runs/demo"), help="'' to skip")
    ap.add_argument("--data", type=Path, default=Path("data/demo"))
    ap.add_argument("--results", help="also write docs/results/NAME.json (docs/service.md: replay)")
    args = ap.parse_args()
    history = read_clicks(args.data / "train.tsv")
    test = read_clicks(args.data / "test.tsv")
    rows = {}
    for name, exclude in (("default", False), ("exclude_clicked", True)):
        engine = build_engine(args.model, online=False)
        rows[name] = replay(engine, history, test, [20], exclude_clicked=exclude)
        print(f"{name}: {rows[name]}")
    payload: dict = {"data": str(args.data), "model": str(args.model), "rows": rows}
    if str(args.torch_model):
        payload["evaluate"] = evaluate_torch(args.torch_model, args.data)
        print(f"training evaluate: {payload['evaluate']}")
    if args.results:
        write_results(args.results, payload)


if __name__ == "__main__":
    main()
