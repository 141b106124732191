"""Generate the news and shop profiles at full size and compare their statistics with the
real logs' (training.data.profile_stats); writes docs/results/profiles.json.

    .venv/bin/python scripts/profile_stats.py              # 6 days, seed 0, scale 1 (~1 min)
    .venv/bin/python scripts/profile_stats.py --scale 0.1 --out /tmp/profiles.json

JSON: {"machine", "versions", "settings", "seconds": {profile: generation s},
"profiles": {"news": [{"statistic", "target", "generated", "relative_difference",
"within_20pct"}, ...], "shop": [...]}}. A target is null where the real log gives none
(most shop rows); count rows are compared with target * scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data.profile_stats import (  # noqa: E402
    COUNT_ROWS,
    NEWS_TARGETS,
    SHOP_TARGETS,
    compare,
    format_rows,
    profile_statistics,
)
from training.data.profiles import PROFILES, generate_profile  # noqa: E402


def scaled(targets: dict, scale: float) -> dict:
    """Targets for a log `scale` times the size: the count rows scale, the rest do not."""
    return {k: v * scale if k in COUNT_ROWS else v for k, v in targets.items()}


def run(days: float, seed: int, scale: float) -> tuple[dict, dict]:
    """({profile: compare() rows}, {profile: generation seconds})."""
    targets = {"news": NEWS_TARGETS, "shop": SHOP_TARGETS}
    top = (max(round(20 * scale), 1), max(round(100 * scale), 1))
    rows, seconds = {}, {}
    for name in PROFILES:
        started = time.perf_counter()
        events, _, _ = generate_profile(name, days, seed, scale)
        seconds[name] = round(time.perf_counter() - started, 2)
        stats = profile_statistics(events, top=top)
        rows[name] = compare(stats, scaled(targets[name], scale))
        print(f"\n{name}: {len(events):,} clicks, generated in {seconds[name]} s")
        print(format_rows(rows[name]))
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "docs/results/profiles.json"))
    args = parser.parse_args()
    rows, seconds = run(args.days, args.seed, args.scale)
    sys.path.insert(0, str(ROOT / "scripts"))
    from provenance import record

    payload = {"settings": {"days": args.days, "seed": args.seed, "scale": args.scale}}
    result = record("profiles", {**payload, "seconds": seconds, "profiles": rows})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
