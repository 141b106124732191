"""One renderer per docs/results/NAME.json: the markdown of its README block.

Each takes the file's record (its JSON plus "_name") and returns the block's text; prose is
filled to width by scripts/render_results.py. A record lacking a key raises KeyError, which
the caller reports as a file that does not render.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def f4(x: float) -> str:
    return f"{x:.4f}"


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """Markdown table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def bold_best(rows: list[list[str]], columns: list[int]) -> list[list[str]]:
    """The highest value of each column in bold (every row that reaches it; "-" is no value)."""
    for c in columns:
        values = {i: float(r[c].replace(",", "")) for i, r in enumerate(rows) if r[c] != "-"}
        best = max(values.values(), default=None)
        for i, value in values.items():
            if value == best:
                rows[i][c] = f"**{rows[i][c]}**"
    return rows


def machine_text(machine: Any) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    if "cpu" not in machine:  # another layout (not scripts/provenance.py's): its own words
        return ", ".join(f"{key} {value}" for key, value in machine.items())
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    memory = machine.get("memory_gib")
    memory_text = f", {memory:.0f} GiB" if isinstance(memory, int | float) else ""
    return f"{machine.get('cores', '?')} cores of {machine.get('cpu', '?')}{memory_text}, {gpus}"


def versions_text(versions: Any) -> str:
    if not isinstance(versions, dict):
        return str(versions)
    names = {"python": "Python", "torch": "torch", "onnxruntime": "onnxruntime"}
    names |= {"numpy": "numpy", "pandas": "pandas"}
    return ", ".join(
        f"{label} {versions[key]}" for key, label in names.items() if versions.get(key)
    )


def run_line(rec: Record) -> str:
    """Where the figures came from: command, date, machine, versions."""
    parts = []
    if rec.get("command"):
        parts.append(f"`{rec['command']}`")
    if rec.get("date"):
        parts.append(f"run {str(rec['date'])[:10]}")
    if rec.get("machine"):
        parts.append(machine_text(rec["machine"]))
    if rec.get("versions"):
        parts.append(versions_text(rec["versions"]))
    return "Source: " + "; ".join(parts) + f" (`docs/results/{rec['_name']}.json`)."


def num(x: Any) -> str:
    """A statistic as a reader wants it: integers with separators, floats to 3 digits."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int) or abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def median_range(values: list[float], fmt: str = ",.0f", unit: str = "") -> str:
    ordered = sorted(values)
    mid = statistics.median(ordered)
    if len(ordered) == 1:
        return f"{mid:{fmt}}{unit}"
    return f"{mid:{fmt}}{unit} ({ordered[0]:{fmt}}-{ordered[-1]:{fmt}}{unit})"


# --- blocks: one function per docs/results/NAME.json -----------------------------------------

LABELS = {"most-popular": "most-popular", "item-knn": "item-KNN", "v-sknn": "V-SKNN"}


def gru_label(cfg: dict[str, Any]) -> str:
    parts = [cfg.get("loss", "?")]
    if cfg.get("logq"):
        parts.append("logQ")
    if cfg.get("constrained_embedding"):
        parts.append("shared embedding")
    parts += [f"{'/'.join(map(str, cfg['layers']))} units", f"{cfg['n_epochs']} epochs"]
    return f"GRU4Rec ({', '.join(parts)})"


def render_baselines(rec: Record) -> str:
    d = rec["data"]
    intro = (
        f"Data: the default synthetic log (seed {d['seed']}), {d['train_clicks']:,} training "
        f"clicks in {d['train_sessions']:,} sessions over {d['items']:,} items; "
        f"{d['test_clicks']:,} test clicks, which make {d['predictions']:,} next-click "
        "predictions."
    )
    rows = []
    for name, r in rec["results"].items():
        label = gru_label(rec["gru4rec_config"]) if name == "gru4rec" else LABELS.get(name, name)
        rows.append([label, f4(r["recall@20"]), f4(r["mrr@20"]), f4(r["ndcg@20"])])
    body = table(["model", "Recall@20", "MRR@20", "NDCG@20"], bold_best(rows, [1, 2, 3]))
    return f"{intro}\n\n{body}\n\n{run_line(rec)}\n"


# (KNNParams field, label, unit) in the order session-rec writes them
KNN_WEIGHTS = [
    ("lambda_spw", "λ_spw", ""),
    ("lambda_snh", "λ_snh", " d"),
    ("lambda_inh", "λ_inh", ""),
    ("lambda_ipw", "λ_ipw", ""),
    ("lambda_idf", "λ_idf", ""),
]


def knn_label(kind: str, p: dict[str, Any]) -> str:
    parts = [f"k={p['k']}", f"sample {p['sample_size']:,}"]
    parts += [f"{label} {p[key]:g}{unit}" for key, label, unit in KNN_WEIGHTS if p.get(key)]
    return f"{kind.upper()} ({', '.join(parts)})"


METRICS = {"mrr": "MRR", "recall": "Recall", "ndcg": "NDCG"}


def metric_label(metric: str) -> str:
    """The tables' label of a metric key: mrr@20 -> MRR@20."""
    name, _, k = metric.partition("@")
    return f"{METRICS.get(name, name)}@{k}"


def _param_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()
    )


def tuned_paragraph(rec: Record) -> str:
    """The search, the KNN draws and the blend weight, in sentences."""
    text = []
    if s := rec.get("search"):
        base = "-" if s.get("base_value") is None else f"{s['base_value']:.4f}"
        text.append(
            f"The search: {s['trials']} trials, {s['pruned']} pruned; validation "
            f"{metric_label(s['metric'])} "
            f"{base} for the base configuration (trial 0) and {s['best_value']:.4f} for the best "
            f"(trial {s['best_trial']}: {_param_text(s['best_params'])})."
        )
    text.append(
        f"STAN and VSTAN: {rec['knn_trials']} random draws each from "
        "`training/evaluation/knn.py`'s grids."
    )
    if b := rec.get("blend"):
        tried = ", ".join(
            f"{m[b['metric']]:.4f} at {float(w):g}" for w, m in b["by_weight"].items()
        )
        text.append(
            f"The blend of the tuned model with VSTAN got weight {b['weight']:g} from validation "
            f"{metric_label(b['metric'])} ({tried})"
            + (", so it is the tuned model." if b["weight"] == 0 else ".")
        )
    r = rec["results"]
    default, tuned = r["gru4rec-default"], r["gru4rec-tuned"]
    gains = ", ".join(
        f"{label} {100 * (tuned[key] / default[key] - 1):+.1f}%"
        for key, label in (("mrr@20", "MRR@20"), ("recall@20", "Recall@20"))
    )
    text.append(f"Tuned against the preset it started from, on the test set: {gains}.")
    return " ".join(text)


def render_tuned(rec: Record) -> str:
    names = {"gru4rec-default": f"GRU4Rec, `{rec['default']}` preset"}
    names["gru4rec-tuned"] = f"GRU4Rec, tuned (`{Path(rec['tuned']).as_posix()}`)"
    rows = []
    for name, r in rec["results"].items():
        if name in rec["knn_params"]:
            label = knn_label(name, rec["knn_params"][name])
        elif " + " in name:  # the blend
            if rec["blend"]["weight"] == 0:
                continue  # the tuned model itself
            label = f"blend: tuned GRU4Rec + {rec['blend']['weight']:g} x VSTAN"
        else:
            label = names.get(name) or LABELS.get(name, name)
        cells = [f4(r[key]) for key in ("recall@20", "mrr@20", "recall@5", "mrr@5")]
        rows.append([label, *cells])
    body = table(
        ["model", "Recall@20", "MRR@20", "Recall@5", "MRR@5"], bold_best(rows, [1, 2, 3, 4])
    )
    return f"{tuned_paragraph(rec)}\n\n{body}\n\n{run_line(rec)}\n"


def render_train_speed(rec: Record) -> str:
    rows, sources = [], []
    for run in rec["runs"]:
        key, ours, ref = run["key"], run["runs"]["ours"], run["runs"].get("reference", [])
        cells = [f"{key['items']:,} items, {key['events']:,} clicks"]
        cells.append(median_range([r["events_per_s"] for r in ours]))
        cells.append(median_range([r["events_per_s"] for r in ref]) if ref else "-")
        ratios = run.get("paired_ratios") or []
        cells.append(median_range(ratios, ".2f", "x") if ratios else "-")
        walls = [statistics.median(r["wall_s"] for r in x) for x in (ours, ref) if x]
        cells.append(" / ".join(f"{w:.0f} s" for w in walls))
        rows.append(cells)
        sources.append(run_line({**run, "_name": rec["_name"]}))
    header = ["catalogue", "ours, events/s", "reference, events/s", "ours / reference, paired"]
    body = table([*header, "process wall time, ours / reference"], rows)
    return body + "\n\n" + "\n".join(f"- {s}" for s in sources) + "\n"


def render_memory(rec: Record) -> str:
    sizes = ", ".join(f"{r['peak'] / 2**20:,.0f} MiB at {r['events']:,}" for r in rec["runs"])
    return (
        f"Peak RSS of one epoch ({rec['items']:,} items) by training events: {sizes}; "
        f"{rec['bytes_per_event']:.0f} bytes per extra event. {run_line(rec)}\n"
    )


def render_bloom(rec: Record) -> str:
    d, rows = rec["data"], rec["rows"]
    s = rec["settings"]
    intro = (
        f"Data: {d['n_items']:,} generated items with popularity skew {s['zipf']:g}, "
        f"{d['train_events']:,} training clicks, {rows[0]['n_test']:,} test predictions over all "
        f"items; `{s['config']}` parameters, {s['epochs']} epochs, Bloom on input and output."
    )
    cells: list[list[str]] = []
    groups: dict[tuple[float, int], list[list[str]]] = {}  # rows of one size and k
    for r in rows:
        bloom = r["bloom_bits"] != 0
        ratio = str(Fraction(r["bloom_bits"]).limit_denominator(1000)) if bloom else "no Bloom"
        how = (
            "-"
            if not bloom
            else "sum x 1/k (default)"
            if r["item_step"]
            else "plain sum (the paper)"
        )
        row = [ratio, str(r["bloom_hashes"]) if bloom else "-", how]
        row += [f4(r["recall@20"]), f4(r["mrr@20"]), f"{r['params']:,}", f"{r['model_mb']:.1f}"]
        cells.append(row)
        groups.setdefault((r["bloom_bits"], r["bloom_hashes"]), []).append(row)
    for group in groups.values():  # the better of plain and 1/k at the same size, in bold
        if len(group) > 1:
            bold_best(group, [3, 4])
    header = ["m / n_items", "k", "item's k rows", "Recall@20", "MRR@20", "parameters", "model MB"]
    return f"{intro}\n\n{table(header, cells, numeric_from=3)}\n\n{run_line(rec)}\n"


CONTROL = "parallel, simultaneous, features of other items (control)"
PRNN_LABELS = {"parallel, simultaneous, shuffled features": CONTROL}


def render_prnn(rec: Record) -> str:
    rows = []
    for r in rec["rows"]:
        label = PRNN_LABELS.get(r["name"], r["name"])
        if r["strategy"] == "residual":
            label += f" ({r['epochs'] // 2} + {r['epochs'] // 2} epochs)"
        parts = (
            ("all", "recall@20"),
            ("all", "mrr@20"),
            ("rare", "recall@20"),
            ("rare_input", "recall@20"),
        )
        rows.append([label, *(f4(r[part][key]) for part, key in parts)])
    header = ["model", "Recall@20", "MRR@20", "Recall@20, rare target", "Recall@20, rare input"]
    d = rec["data"]
    intro = (
        f"Data: {d['n_items']:,} items, {d['train_events']:,} training clicks; rare = the "
        f"{d['rare_items']:,} items with at most {d['rare_threshold_clicks']:g} training clicks."
    )
    body = table(header, bold_best(rows, [1, 2, 3, 4]))
    return f"{intro}\n\n{body}\n\n{run_line(rec)}\n"


SERVERS = {
    "gRPC echo (ceiling)": "gRPC echo, same stack, no work (the ceiling)",
    "PyTorch per request": "plain PyTorch per request (thread pool, no cache, no batching)",
    "service": "service, 1 worker (int8 output layer, batching, online layer on)",
    "service, 2 workers": "service, 2 workers (`--workers 2`, the default on 2 CPUs)",
    "service, cold 30 clicks": "service, cold sessions (30 clicks each, never seen)",
    "service, no batching": "service, no batching (`--max-batch 1`)",
    "service, 1 ms batching wait": "service, 1 ms batching wait (`--max-wait-ms 1`)",
    "service, no batching wait": "service, no batching wait (`--max-wait-ms 0`)",
    "service, online layer off": "service, online layer off (`--online 0`)",
    "service, float32 output layer": "service, float32 output layer (`export --quantize none`)",
}


def service_figures(rec: Record) -> str:
    """The model alone and where a call's time goes, measured in the same run."""
    batches = rec["model"]["batches"]
    sizes = "/".join(str(b) for b in batches)
    per_call = "/".join(f"{t['step_us'] / int(b):,.0f}" for b, t in batches.items())
    ratios = "/".join(f"{t['step_us'] / t['product_us']:.2f}" for t in batches.values())
    plain = "/".join(f"{t['float32_step_us'] / int(b):,.0f}" for b, t in batches.items())
    cold = rec["model"]["cold_29"]
    p = rec["profile"]
    stages = ", ".join(f"{stage} {us:,.0f} us" for stage, us in p["stage_us"].items())
    batch = f" in batches of {p['mean_batch']:.1f} on average" if p.get("mean_batch") else ""
    text = (
        f"Measured in the same run: the model step (GRU, scores over all {rec['model']['items']:,}"
        f" items, TopK; int8 output layer; 1 thread) at batch {sizes}: {per_call} us per call"
        f" ({plain} in float32), {ratios}x the time of the float32 (B, H) x (H, items) matrix"
        f" product alone; a cold session's 29 earlier clicks in one"
        f" prefix run {cold['prefix_run_us']:,.0f} us against {cold['click_by_click_us']:,.0f} us"
        f" click by click. Per call at concurrency {p['concurrency']} ({p['server']}), wall time in"
        f" each stage: {stages}; the model's run {p['model_us']:,.0f} us{batch}; server process"
        f" CPU {p['cpu_us']:,.0f} us."
    )
    budget = rec.get("budget")
    if budget:
        text += (
            f" The CPU the goal leaves: {budget['share']:.0%} of echo is"
            f" {budget['goal_calls_per_s']:,.0f} calls/s, which with the {budget['cores']} cores as"
            f" busy as echo kept them leaves {budget['budget_us']:,.0f} us of CPU per call for"
            f" server and load generator together (echo itself: {budget['echo_server_us']:,.0f} +"
            f" {budget['echo_client_us']:,.0f} us); the service at the same concurrency takes"
            f" {budget['service_server_us']:,.0f} + {budget['service_client_us']:,.0f} ="
            f" {budget['service_us']:,.0f} us, so these cores could give it at most"
            f" {budget['within_reach_calls_per_s']:,.0f} calls/s however well its work overlapped."
        )
    cost = rec.get("online_cost")
    if cost:
        pairs = ", ".join(
            f"{on:,.0f}/{off:,.0f}" for on, off in zip(cost["on"], cost["off"], strict=True)
        )
        text += (
            f" The online layer's cost, both servers up and measured in turn ({cost['rounds']}"
            f" rounds at {cost['concurrency']} callers, order swapped each round; calls/s on/off:"
            f" {pairs}): medians {cost['on_median']:,.0f} against {cost['off_median']:,.0f},"
            f" {cost['cost']:.1%} fewer calls/s with the layer."
        )
    plain = rec.get("online_cost_float32")
    if plain:
        text += (
            f" The same with the float32 output layer: medians {plain['on_median']:,.0f} against"
            f" {plain['off_median']:,.0f}, {plain['cost']:.1%} fewer."
        )
    return text


def render_service(rec: Record) -> str:
    rows = []
    echo = next((r["calls_per_s"] for r in rec["rows"] if r["server"].startswith("gRPC echo")), 0)
    busy = all("machine_busy" in r for r in rec["rows"])  # runs before it lack the column
    client = all("client_cpu_us_per_call" in r for r in rec["rows"])
    for r in rec["rows"]:
        errors = r.get("error_codes") or {}
        count = sum(errors.values()) if isinstance(errors, dict) else int(errors)
        rows.append(
            [
                SERVERS.get(r["server"], r["server"]),
                str(r["concurrency"]),
                f"{r['calls_per_s']:,.0f}",
                f"{r['calls_per_s'] / echo:.0%}" if echo else "",
            ]
            + [
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                str(count),
                f"{r['cpu_us_per_call']:,.0f}",
            ]
            + ([f"{r['client_cpu_us_per_call']:,.0f}"] if client else [])
            + ([f"{r['machine_busy']:.0%}"] if busy else [])
        )
    header = [
        "server",
        "concurrency",
        "calls/s",
        "of echo",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU us/call",
    ]
    header += (["client CPU us/call"] if client else []) + (["machine busy"] if busy else [])
    return f"{table(header, rows)}\n\n{service_figures(rec)}\n\n{run_line(rec)}\n"


def render_fault(rec: Record) -> str:
    errors = rec.get("errors") or {}
    count = sum(errors.values()) if isinstance(errors, dict) else int(errors)
    around = []
    for w in rec["around_kill"]:
        p99 = "-" if w["p99_ms"] is None else f"{w['p99_ms']:.0f} ms"
        kill = " (the kill)" if w["t_s"] <= rec["kill_at_s"] < w["t_s"] + 1 else ""
        around.append(f"{w['t_s']:g}-{w['t_s'] + 1:g} s {p99}{kill}")
    return (
        f"{rec['calls']:,} calls, {rec['lost']} lost, {rec['retried']:,} retried, {count} errors; "
        f"p99 {rec['p99_ms']:.0f} ms overall, per second around the kill: {', '.join(around)}. "
        f"{run_line(rec)}\n"
    )


def render_freshness(rec: Record) -> str:
    """One row per method, Recall@20 and MRR@20 per data profile (bench_freshness.py)."""
    profiles = list(rec["profiles"])
    methods: dict[str, dict[str, dict[str, float]]] = {}
    for profile in profiles:
        for r in rec["profiles"][profile]["rows"]:
            methods.setdefault(r["method"], {})[profile] = r
    header = ["method"] + [f"{p}, {m}" for p in profiles for m in ("Recall@20", "MRR@20")]
    rows = []
    for method, by_profile in methods.items():
        cells = [method]
        for profile in profiles:
            r = by_profile.get(profile)
            cells += [f4(r["recall@20"]), f4(r["mrr@20"])] if r else ["-", "-"]
        rows.append(cells)
    body = table(header, bold_best(rows, list(range(1, len(header)))))
    return f"{body}\n\n{settings_text(rec)}{run_line(rec)}\n"


def settings_text(rec: Record) -> str:
    """A record's "settings" as a sentence (for files whose command line is not recorded)."""
    settings = rec.get("settings")
    if not isinstance(settings, dict) or rec.get("command"):
        return ""
    return "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ". "


def render_profiles(rec: Record) -> str:
    """Each generated profile's statistics against their targets (profile_stats.py)."""
    rows = []
    for profile in list(rec["profiles"]):
        for r in rec["profiles"][profile]:
            within = {True: "yes", False: "**no**"}.get(r["within_20pct"], "-")  # None: no target
            target = "-" if r["target"] is None else num(r["target"])
            rows.append([profile, str(r["statistic"]), target, num(r["generated"]), within])
    header = ["profile", "statistic", "target", "generated", "within 20%"]
    return f"{table(header, rows, numeric_from=2)}\n\n{settings_text(rec)}{run_line(rec)}\n"


def render_replay(rec: Record) -> str:
    """docs/service.md: the frozen demo model replayed, with and without exclude_clicked."""
    rows = rec["rows"]
    default = rows["default"]
    same = ""
    if ev := rec.get("evaluate"):
        equal = all(f4(ev[k]) == f4(default[k]) for k in ("recall@20", "mrr@20"))
        same = "; equals `python -m training evaluate`" if equal else ""
    body = table(
        ["request", "Recall@20", "MRR@20"],
        [
            [
                f"default (clicked items may come back{same})",
                f4(default["recall@20"]),
                f4(default["mrr@20"]),
            ],
            [
                "`exclude_clicked: true`",
                f4(rows["exclude_clicked"]["recall@20"]),
                f4(rows["exclude_clicked"]["mrr@20"]),
            ],
        ],
    )
    note = ""
    if ev and not same:
        scores = f"{f4(ev['recall@20'])} / {f4(ev['mrr@20'])}"
        note = f"`python -m training evaluate` on the same model: {scores}.\n\n"
    return f"{body}\n\n{note}{run_line(rec)}\n"


def render_users(rec: Record) -> str:
    """Session and user models on synthetic returning users (compare_users.py); the
    reference rows (tastes-oracle, history-tastes), not methods, last and never bold."""

    def row(r: dict) -> list[str]:
        cells = [r["method"]]
        for part in ("overall", "returning", "returning_first"):
            if part in r:
                cells += [f4(r[part]["recall@20"]), f4(r[part]["mrr@20"])]
        return cells

    labels = {
        "tastes-oracle": "tastes-oracle (reference: GRU4Rec + the true taste categories)",
        "history-tastes": "history-tastes (reference: GRU4Rec + the training sessions' categories)",
        "topics-oracle": "topics-oracle (reference: GRU4Rec + the reader's true topics)",
        "history-topics": "history-topics (reference: GRU4Rec + the training sessions' topics)",
    }
    methods = [row(r) for r in rec["rows"] if r["method"] not in labels]
    reference = [row(r) for r in rec["rows"] if r["method"] in labels]
    for cells in reference:
        cells[0] = labels[cells[0]]
    header = ["method", "Recall@20", "MRR@20", "returning, Recall@20", "returning, MRR@20"]
    if all("returning_first" in r for r in rec["rows"]):
        header += ["returning, first click, Recall@20", "returning, first click, MRR@20"]
    columns = list(range(1, len(header)))
    data = rec.get("data", {})
    sizes = ", ".join(f"{num(v)} {k.replace('_', ' ')}" for k, v in data.items())
    lead = f"Data: {sizes}.\n\n" if sizes else ""
    body = table(header, bold_best(methods, columns) + reference)
    return f"{lead}{body}\n\n{run_line(rec)}\n"


def render_news_readers(rec: Record) -> str:
    """GRU4Rec against HRNN on the news log with readers (compare_news_readers.py): the
    means over the seeds, then HRNN-init's gain over GRU4Rec per seed."""
    seeds = rec["seeds"]
    table_part = render_users({**rec, "data": {}}).split("\n\nSource:")[0]
    d = rec["data"]
    lead = (
        f"Means over seeds {', '.join(map(str, seeds))}. Seed {seeds[0]}: "
        f"{d['train_clicks']:,} training clicks, {d['test_clicks']:,} test clicks of "
        f"{d['test_readers']:,} readers on {d['test_stories']:,} stories.\n\n"
    )

    def gains(method: str) -> str:
        parts = []
        for seed, rows in zip(seeds, rec["per_seed"], strict=True):
            by = {r["method"]: r["returning"] for r in rows}
            if method in by and "gru4rec" in by:
                g = {k: by[method][k] / by["gru4rec"][k] - 1 for k in ("recall@20", "mrr@20")}
                parts.append(f"seed {seed} {g['recall@20']:+.1%} / {g['mrr@20']:+.1%}")
        return "; ".join(parts)

    versus = "Against GRU4Rec, returning readers, Recall@20 / MRR@20: HRNN-init " + gains(
        "hrnn-init"
    )
    if any(r["method"] == "hrnn-init, no history" for r in rec["rows"]):
        versus += "; the same HRNN without history " + gains("hrnn-init, no history")
    versus += "."
    return f"{lead}{table_part}\n\n{versus}\n\n{run_line(rec)}\n"


def render_quantize(rec: Record) -> str:
    """float32 against the int8 output layer: accuracy, then the step's time per batch."""
    acc, d = rec["accuracy"], rec["data"]
    rows = [
        [kind, f"{acc[kind]['recall@20']:.4f}", f"{acc[kind]['mrr@20']:.4f}",
         f"{rec['model_onnx_bytes'][kind] / 2**20:.1f}"]
        + [f"{rec['step_us'][b][kind]:,.0f}" for b in rec["step_us"]]
        for kind in ("fp32", "int8")
    ]  # fmt: skip
    header = ["output layer", "Recall@20", "MRR@20", "model.onnx MiB"]
    header += [f"step us, batch {b}" for b in rec["step_us"]]
    verdict = (
        f"not {rec['tolerance']:.1%} below: `export --quantize auto` keeps int8"
        if acc["within_tolerance"]
        else f"MORE than {rec['tolerance']:.1%} below: `export --quantize auto` keeps float32"
    )
    intro = (
        f"{d['n_items']:,} items, {d['test_events']:,} test clicks; int8 against float32: "
        f"Recall@20 {acc['recall@20_relative_diff']:+.2%}, "
        f"MRR@20 {acc['mrr@20_relative_diff']:+.2%}"
        f" ({verdict}), {acc['hits_lost']} hits lost and "
        f"{acc['hits_gained']} gained in the top 20."
    )
    out = f"{intro}\n\n{table(header, rows)}"
    scan = rec.get("step_us_by_items") or {}
    if scan:
        batches = list(next(iter(scan.values())))
        scan_rows = [
            [f"{int(n):,}"]
            + [f"{t[b]['fp32']:,.0f} / {t[b]['int8']:,.0f} ({t[b]['int8'] / t[b]['fp32']:.2f}x)"
               for b in batches]
            for n, t in scan.items()
        ]  # fmt: skip
        header = ["items (random weights)"] + [
            f"step us float32 / int8, batch {b}" for b in batches
        ]
        out += (
            "\n\nBy catalogue size (`export --quantize auto` chooses int8 from 5,000 items):"
            f"\n\n{table(header, scan_rows)}"
        )
    return f"{out}\n\n{run_line(rec)}\n"


RENDERERS: dict[str, Callable[[Record], str]] = {
    "baselines": render_baselines,
    "tuned": render_tuned,
    "train_speed": render_train_speed,
    "memory": render_memory,
    "bloom": render_bloom,
    "prnn": render_prnn,
    "service": render_service,
    "fault": render_fault,
    "freshness": render_freshness,
    "profiles": render_profiles,
    "replay": render_replay,
    "users": render_users,
    "users_short": render_users,
    "news_readers": render_news_readers,
    "quantize": render_quantize,
}
