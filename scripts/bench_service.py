"""Throughput and latency of the service against its ceiling and a plain baseline, one run.

    .venv/bin/python scripts/bench_service.py [--items 40000] [--layers 100] [--duration-s 10]

1. builds a GRU4Rec with random weights (speed does not depend on what the weights learnt)
   and exports it with `training.export` twice: with the int8 output layer, which `export`
   chooses by default for a trained model of 5,000 items or more once its check passes
   (training/quantize_check.py; random weights give it nothing to check on), served in every
   "service" row, and in float32 (`--quantize none`) for one row;
2. times the model alone: one batched step against its matrix product alone (numpy, one
   thread), and a cold session's prefix in one run against click by click;
3. drives, one after the other and with the same load generator (`python -m service.tools.loadgen`,
   sessions replayed click by click, closed loop): the gRPC echo ceiling and the plain
   per-request PyTorch server (scripts/baseline_servers.py), and `python -m service` with its
   defaults in one worker (--workers 1), in two worker processes (--workers 2), without
   batching (--max-batch 1), without the batching wait (--max-wait-ms 0), and cold
   sessions; every row from --channels connections (the kernel spreads connections, not
   calls, over workers);
4. measures the online layer's cost: the service with its defaults against `--online 0`, both
   running, taken in turn for --rounds rounds at 32 callers (order swapped every round), as
   two rows measured minutes apart differ by more than the cost on a shared machine; then
   the same with the float32 export;
   With --against DIR (another checkout of this repository, e.g. `git worktree add
   /tmp/before HEAD~1`), also this tree's service against that one's, with and without the
   online layer, all four up and taken in turn for --rounds rounds at 1 and 32 callers: a
   change's effect, free of the drift between runs minutes apart;
5. prints where the service's time goes (its per-stage metrics and its process CPU per call),
   the CPU per call the goal (GOAL_SHARE of echo's calls/s) leaves server and load generator
   together against what the service takes (every row records the load generator's CPU
   too), and markdown rows for the README, each with its share of the echo ceiling's calls/s;
   --results NAME writes every figure to docs/results/NAME.json, from which
   scripts/render_results.py renders the README table (--results service).
Server and load generator share the machine's cores: every figure is what one small box does
end to end, and the rows are comparable because they ran back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.runtime import ExportedModel  # noqa: E402
from training.config import Config  # noqa: E402
from training.data.logs import ItemVocab  # noqa: E402
from training.export import export_model  # noqa: E402
from training.fit.train import save_model  # noqa: E402
from training.models.architectures import build_model  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TICKS = os.sysconf("SC_CLK_TCK")
# the serving goal (README, "What the table says"): this share of the echo row's calls/s
GOAL_SHARE = 0.6


def build_export(root: Path, n_items: int, layers: tuple[int, ...]) -> Path:
    torch.manual_seed(0)
    cfg = Config(layers=layers)
    vocab = ItemVocab([f"item{i}" for i in range(n_items)])
    # Zipf-like counts, so the popularity file looks like a real one
    popularity = (1e6 / np.arange(1, n_items + 1)).astype(np.int64)
    save_model(root / "model", build_model(n_items, cfg).eval(), cfg, vocab, popularity, {})
    return export_model(root / "model", root / "export")


def _median_us(fn, reps: int) -> float:
    for _ in range(max(10, reps // 10)):
        fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e6


def time_model(
    export_dir: Path, float32_dir: Path, batches: tuple[int, ...] = (1, 8, 32, 64)
) -> dict:
    """The batched step (GRU, scores over all items, TopK) of the served export and of the
    float32 one against the float32 (B, H) x (H, N) product alone (torch, one thread, like
    onnxruntime here), and a cold 29-click prefix in one run against click by click. Prints
    them; returns the medians in us."""
    model = ExportedModel.load(export_dir, "cpu", threads=1)
    float32 = ExportedModel.load(float32_dir, "cpu", threads=1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    state_size = model.state_size
    weights = torch.randn(state_size, model.n_items)
    print(f"model alone, {model.n_items:,} items, state {state_size}, 1 thread (median us):")
    out: dict = {"items": model.n_items, "batches": {}}
    for b in batches:
        items = rng.integers(0, model.n_items, b)
        state = rng.standard_normal((b, state_size)).astype(np.float32)
        hidden = torch.from_numpy(state)
        step = _median_us(lambda i=items, s=state: model.step(i, s, 20), 200)
        plain = _median_us(lambda i=items, s=state: float32.step(i, s, 20), 200)
        product = _median_us(lambda h=hidden: h @ weights, 200)
        out["batches"][b] = {"step_us": step, "float32_step_us": plain, "product_us": product}
        print(
            f"  batch {b:>3}: step {step:7.0f} us ({step / b:6.1f} per call), float32 "
            f"{plain:7.0f} us; float32 matrix product alone {product:7.0f} us: the step takes "
            f"{step / product:.2f}x as long"
        )
    clicks = rng.integers(0, model.n_items, 29)
    zero = model.zero_state(1)

    def each() -> None:
        row = zero
        for item in clicks:
            row = model.advance(item[None], row)

    many = _median_us(lambda: model.advance_many([clicks], zero), 100)
    one_by_one = _median_us(each, 50)
    print(f"  cold session, 29 earlier clicks: one prefix run {many:.0f} us, "
          f"click by click {one_by_one:.0f} us")  # fmt: skip
    return {**out, "cold_29": {"prefix_run_us": many, "click_by_click_us": one_by_one}}


def time_prefix(export_dir: Path, clicks: int = 29, k: int = 20, reps: int = 300) -> dict:
    """Median us at batch 1, 1 thread: a cold session's clicks in one advance_many run
    (prefix.onnx) against one advance call per click, and one top_k step for scale.
    Prints one line; returns the figures."""
    model = ExportedModel.load(export_dir, "cpu", threads=1)
    sequence = np.random.default_rng(0).integers(0, model.n_items, clicks)
    zero = model.zero_state(1)

    def each() -> None:
        row = zero
        for item in sequence:
            row = model.advance(item[None], row)

    out = {
        "advance_many": _median_us(lambda: model.advance_many([sequence], zero), reps),
        "advance_each": _median_us(each, reps),
        "top_k": _median_us(lambda: model.top_k(sequence[:1], zero, k), reps),
    }
    how = "prefix graph" if model.has_prefix_graph else "no prefix graph: step by step"
    print(f"cold session, {clicks} clicks ({how}): advance_many {out['advance_many']:.0f} us, "
          f"{clicks} advance calls {out['advance_each']:.0f} us; one top_k(k={k}) step "
          f"{out['top_k']:.0f} us (medians of {reps}, batch 1, 1 thread)")  # fmt: skip
    return out


class Server:
    """A server process; its port from its log line, its CPU time from /proc."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        ready: str,
        cpus: set[int] | None = None,
        tree: Path = ROOT,
    ):
        """tree: the checkout whose code the process runs (its working directory and path)."""
        self.name = name
        env = {**ENV, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(argv, cwd=tree, env=env, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_pinned(cpus))  # fmt: skip
        self.port = 0
        self.metrics_port = 0
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if found := re.search(r"gRPC on 127\.0\.0\.1:(\d+)(?:, metrics on port (\d+))?", line):
                self.port = int(found[1])  # with workers: the supervisor's line, then theirs
                self.metrics_port = int(found[2] or self.metrics_port)
            if re.search(ready, line):
                break
        else:
            raise RuntimeError(f"{name} did not start; run it by hand to see why")
        # keep reading, so a chatty server never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def cpu_s(self) -> float:
        """CPU seconds of the server process and its children (a supervisor's workers)."""
        stats = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        tree, ticks = {self.proc.pid}, 0
        for pid, (parent, _) in sorted(stats.items()):  # children have higher pids, mostly
            if parent in tree:
                tree.add(pid)
        for pid in tree:
            ticks += stats.get(pid, (0, 0))[1]  # utime + stime
        return ticks / TICKS

    def metrics(self) -> dict[str, float]:
        if not self.metrics_port:
            return {}
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _pinned(cpus: set[int] | None):
    """A preexec_fn that keeps the child (and its children) on these CPUs; None: all."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


def _cpu_list(text: str) -> set[int]:
    return {int(c) for c in text.split(",")}


def load(port: int, items_file: Path, concurrency: int, args, cold: bool) -> dict:
    """The same light client for every row: service.tools.loadgen (one asyncio loop)."""
    argv = [sys.executable, "-m", "service.tools.loadgen", "--target", f"127.0.0.1:{port}",
            "--items-file", str(items_file), "--calls", "1000000", "--concurrency",
            str(concurrency), "--duration-s", str(args.duration_s), "--deadline-ms", "5000",
            "--channels", str(args.channels), "--json"]  # fmt: skip
    if cold:
        argv += ["--cold", "--cold-clicks", "30"]
    out = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True,
                         preexec_fn=_pinned(args.client_cpus))  # fmt: skip
    return json.loads(out.stdout)


def machine_ticks() -> tuple[int, int]:
    """All CPUs' clock ticks since boot: (total, idle or waiting on I/O), from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def children_cpu_s() -> float:
    """CPU seconds of this script's finished children: the load generators (servers are
    reaped only when stopped, after their rows)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, items_file: Path, concurrency: int, args, cold=False) -> dict:
    before_cpu, before, before_ticks = server.cpu_s(), server.metrics(), machine_ticks()
    before_client = children_cpu_s()
    result = load(server.port, items_file, concurrency, args, cold)
    calls = max(result["calls"], 1)
    result["cpu_us_per_call"] = (server.cpu_s() - before_cpu) / calls * 1e6
    # the load generator's own CPU: on shared cores what it takes, the server cannot have
    result["client_cpu_us_per_call"] = (children_cpu_s() - before_client) / calls * 1e6
    # how much of the machine server and client kept busy together: a serial path (one
    # event loop, the model waiting on it) leaves cores idle that a pure RPC would use
    (total, idle), (total0, idle0) = machine_ticks(), before_ticks
    result["machine_busy"] = 1 - (idle - idle0) / max(total - total0, 1)
    after = server.metrics()
    result["metrics"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
    label = f"{server.name}{', cold 30 clicks' if cold else ''}"
    print(f"  {label:<34} conc {concurrency:>3}: {result['calls_per_s']:7.0f} calls/s, "
          f"p50 {result['p50_ms']:6.2f} ms, p99 {result['p99_ms']:6.2f} ms, "
          f"errors {result['error_codes'] or 0}, server CPU {result['cpu_us_per_call']:.0f} "
          f"us/call, client CPU {result['client_cpu_us_per_call']:.0f} us/call, machine busy "
          f"{result['machine_busy']:.0%}", flush=True)  # fmt: skip
    return {"server": label, "concurrency": concurrency, **result}


def cpu_budget(rows: list[dict], share: float = GOAL_SHARE) -> dict | None:
    """What CPU per call the goal leaves server and client together: at `share` of the echo
    row's calls/s, with the cores as busy as the echo row kept them, against what the
    service spends (server + load generator) at the echo row's concurrency. None without
    both rows."""
    echo = next((r for r in rows if r["server"] == "gRPC echo (ceiling)"), None)
    if echo is None:
        return None
    service = next((r for r in rows if r["server"] == "service"
                    and r["concurrency"] == echo["concurrency"]), None)  # fmt: skip
    if service is None:
        return None
    cores = len(os.sched_getaffinity(0))
    goal = share * echo["calls_per_s"]
    budget = cores * echo["machine_busy"] / goal * 1e6
    spent = service["cpu_us_per_call"] + service["client_cpu_us_per_call"]
    figures = {"share": share, "cores": cores, "goal_calls_per_s": goal, "budget_us": budget,
               "service_us": spent, "service_server_us": service["cpu_us_per_call"],
               "service_client_us": service["client_cpu_us_per_call"],
               "echo_server_us": echo["cpu_us_per_call"],
               "echo_client_us": echo["client_cpu_us_per_call"],
               "within_reach_calls_per_s": cores * echo["machine_busy"] / spent * 1e6}  # fmt: skip
    print(f"CPU budget: {share:.0%} of echo is {goal:,.0f} calls/s; with the {cores} cores as busy "
          f"as echo kept them ({echo['machine_busy']:.0%}) that leaves {budget:,.0f} us of CPU "
          f"per call for server and client together; the service takes "
          f"{service['cpu_us_per_call']:,.0f} + {service['client_cpu_us_per_call']:,.0f} = "
          f"{spent:,.0f} us, so the cores alone allow it {figures['within_reach_calls_per_s']:,.0f}"
          " calls/s", flush=True)  # fmt: skip
    return figures


def online_cost(service: list[str], items_file: Path, args, label: str = "") -> dict:
    """Calls/s of the service against the same with `--online 0`, both servers up, measured
    in turn for args.rounds rounds (32 callers): the medians and the cost, 1 - on / off.
    label: what the servers serve, for the printed line."""
    servers = [Server("service", service, "serving model", args.server_cpus),
               Server("service, online layer off", [*service, "--online", "0"],
                      "serving model", args.server_cpus)]  # fmt: skip
    runs: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for r in range(args.rounds):
            for server in servers if r % 2 == 0 else servers[::-1]:
                runs[server.name].append(measure(server, items_file, 32, args)["calls_per_s"])
    finally:
        for server in servers:
            server.stop()
    on, off = (float(np.median(runs[s.name])) for s in servers)
    print(f"online layer's cost{label} over {args.rounds} rounds: {on:,.0f} against {off:,.0f} "
          f"calls/s (medians), {1 - on / off:.1%} fewer", flush=True)  # fmt: skip
    return {"rounds": args.rounds, "concurrency": 32, "on": runs["service"],
            "off": runs["service, online layer off"], "on_median": on, "off_median": off,
            "cost": 1 - on / off}  # fmt: skip


def against(service: list[str], items_file: Path, args) -> dict:
    """This tree's service (defaults, and --online 0) against args.against's, all four up and
    measured in turn for args.rounds rounds at 1 and 32 callers (the order reversed every
    round): per tree, setting and concurrency the calls/s and p50 of every round and their
    medians."""
    trees = {"this": ROOT, "against": args.against.resolve()}
    settings = {"on": [], "off": ["--online", "0"]}
    servers = [Server(f"{t}, online {o}", [*service, *extra], "serving model",
                      args.server_cpus, tree)
               for t, tree in trees.items() for o, extra in settings.items()]  # fmt: skip
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {s.name: {} for s in servers}
    try:
        for r in range(args.rounds):
            for server in servers if r % 2 == 0 else servers[::-1]:
                for concurrency in (1, 32):
                    row = measure(server, items_file, concurrency, args)
                    runs[server.name].setdefault(concurrency, []).append(
                        (row["calls_per_s"], row["p50_ms"])
                    )
    finally:
        for server in servers:
            server.stop()
    out: dict = {"against": str(trees["against"]), "rounds": args.rounds, "servers": {}}
    for name, by_level in runs.items():
        out["servers"][name] = {
            str(c): {"calls_per_s": [v for v, _ in rows], "p50_ms": [p for _, p in rows],
                     "calls_per_s_median": float(np.median([v for v, _ in rows])),
                     "p50_ms_median": float(np.median([p for _, p in rows]))}
            for c, rows in by_level.items()
        }  # fmt: skip
        one, many = out["servers"][name]["1"], out["servers"][name]["32"]
        print(f"  {name:<22} 1 caller p50 {one['p50_ms_median']:.2f} ms; 32 callers "
              f"{many['calls_per_s_median']:,.0f} calls/s (medians of {args.rounds})")  # fmt: skip
    for t in trees:
        on = out["servers"][f"{t}, online on"]["32"]["calls_per_s_median"]
        off = out["servers"][f"{t}, online off"]["32"]["calls_per_s_median"]
        print(f"  {t}: the online layer's cost {1 - on / off:.1%}")
    return out


def profile(row: dict) -> dict:
    """Where a call's time goes in the service, from its own metrics for one load row.
    Prints it; returns us per call by stage (wall) and the batching figures."""
    m, calls = row["metrics"], max(row["calls"], 1)
    stages = {k.split('"')[1]: v for k, v in m.items() if k.startswith("recsys_stage_seconds")}
    batches = m.get("recsys_batches_total", 0)
    run_s = m.get("recsys_batch_run_seconds_total", 0)
    queue_s = m.get("recsys_batch_queue_seconds_total", 0)
    print(f"where the time goes ({row['server']}, concurrency {row['concurrency']}):")
    handler = sum(stages.values()) - stages.get("model", 0.0)
    for stage, seconds in stages.items():
        print(f"  {stage:<8} {seconds / calls * 1e6:7.1f} us per call (wall, from the handler)")
    if batches:
        size = m.get("recsys_batched_calls_total", 0) / batches
        print(f"  batches: {batches:.0f}, mean size {size:.1f}, "
              f"model run {run_s / batches * 1e6:.0f} us per batch, "
              f"{run_s / calls * 1e6:.1f} us per call; queue wait {queue_s / calls * 1e6:.0f} us "
              "per call")  # fmt: skip
    print(f"  server process CPU {row['cpu_us_per_call']:.0f} us per call: handler code "
          f"{handler / calls * 1e6:.0f} us, model {run_s / calls * 1e6:.0f} us, the rest is "
          "gRPC and the event loop")  # fmt: skip
    return {
        "server": row["server"],
        "concurrency": row["concurrency"],
        "stage_us": {stage: seconds / calls * 1e6 for stage, seconds in stages.items()},
        "mean_batch": m.get("recsys_batched_calls_total", 0) / batches if batches else None,
        "model_us": run_s / calls * 1e6,
        "queue_us": queue_s / calls * 1e6,
        "cpu_us": row["cpu_us_per_call"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--layers", type=int, nargs="+", default=[100])
    parser.add_argument("--duration-s", type=float, default=10.0, help="per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--channels", type=int, default=8, help="client connections, every row")
    parser.add_argument(
        "--only", nargs="+", help='run only the rows of these servers ("online cost": step 4)'
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the online layer's cost (0: skip it)"
    )
    parser.add_argument("--server-cpus", type=_cpu_list,
                        help="pin the servers to these CPUs (0,1) and the load generator to the "
                             "others: does a second worker help when the client leaves it a "
                             "core?")  # fmt: skip
    parser.add_argument("--against", type=Path,
                        help="another checkout of this repository: its service against this "
                             "one's, interleaved (step 4)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--results", help="also write docs/results/NAME.json (README: service)")
    args = parser.parse_args()
    args.client_cpus = None
    if args.server_cpus:
        args.client_cpus = os.sched_getaffinity(0) - args.server_cpus
        if not args.client_cpus or not args.server_cpus <= os.sched_getaffinity(0):
            parser.error(f"--server-cpus must leave the load generator one of the CPUs "
                         f"{sorted(os.sched_getaffinity(0))}")  # fmt: skip
    if args.against and not (args.against / "service" / "__main__.py").is_file():
        parser.error(f"--against {args.against} is not a checkout of this repository (no "
                     "service/__main__.py); make one with git worktree add DIR COMMIT")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float32_dir = build_export(Path(tmp), args.items, tuple(args.layers))
        # what `export` chooses for a trained model this size (module docstring)
        export_dir = export_model(Path(tmp) / "model", Path(tmp) / "export-int8", quantize="int8")
        items_file = export_dir / "items.txt"
        model_times = time_model(export_dir, float32_dir)
        prefix_times = time_prefix(export_dir)
        py, base = sys.executable, str(ROOT / "scripts" / "baseline_servers.py")
        service = [py, "-m", "service", "--model", str(export_dir), "--host", "127.0.0.1",
                   "--port", "0", "--metrics-port", "0", "--drain-s", "0",
                   "--workers", "1"]  # fmt: skip
        ready_all = "all 2 workers have loaded the model: serving"
        plans = [
            ("gRPC echo (ceiling)", [py, base, "echo"], "gRPC on", [32]),
            ("PyTorch per request", [py, base, "torch", "--model", f"{tmp}/model"], "gRPC on",
             [1, 32]),
            ("service", service, "serving model", args.concurrency),
            ("service, 2 workers", [*service, "--workers", "2"], ready_all, [32]),
            ("service, no batching", [*service, "--max-batch", "1"], "serving model", [32]),
            ("service, no batching wait", [*service, "--max-wait-ms", "0"], "serving model",
             [32]),
            ("service, online layer off", [*service, "--online", "0"], "serving model", [32]),
            ("service, float32 output layer",
             [*service[:4], str(float32_dir), *service[5:]], "serving model", [32]),
        ]  # fmt: skip
        print("load (closed loop, sessions replayed click by click):")
        for name, argv, ready, levels in plans:
            if args.only and name not in args.only:
                continue
            server = Server(name, argv, ready, args.server_cpus)
            try:
                for concurrency in levels:
                    rows.append(measure(server, items_file, concurrency, args))
                if name == "service":
                    for concurrency in (1, 32):
                        rows.append(measure(server, items_file, concurrency, args, cold=True))
            finally:
                server.stop()
        cost = cost_float32 = None
        if args.rounds > 0 and (not args.only or "online cost" in args.only):
            print("the online layer's cost (both servers up, measured in turn):")
            cost = online_cost(service, items_file, args)
            # and with the float32 step, the one the layer's cost was first measured against:
            # the cheaper the rest of a call, the larger the layer's share of it
            print("the same with the float32 output layer:")
            service_float32 = [*service[:4], str(float32_dir), *service[5:]]
            cost_float32 = online_cost(service_float32, items_file, args, ", float32")
        compared = None
        if args.against:
            print(f"this tree against {args.against} (all four up, measured in turn):")
            compared = against(service, items_file, args)
    main_row = next((r for r in rows if r["server"] == "service" and r["concurrency"] == 32), None)
    where = profile(main_row) if main_row else {}
    budget = cpu_budget(rows)
    echo = next((r["calls_per_s"] for r in rows if r["server"] == "gRPC echo (ceiling)"), None)
    for r in rows:  # the echo ceiling ran at 32 callers: the share compares like with like there
        r["echo_share"] = r["calls_per_s"] / echo if echo else None
    print("\n| server | concurrency | calls/s | share of echo | p50 ms | p99 ms | errors | "
          "server CPU us/call |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = f"{r['echo_share']:.0%}" if r["echo_share"] is not None else "-"
        print(f"| {r['server']} | {r['concurrency']} | {r['calls_per_s']:.0f} | {share} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
              f"{r['cpu_us_per_call']:.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.results:
        sys.path.insert(0, str(ROOT / "scripts"))
        from provenance import write_results

        kept = [{k: v for k, v in r.items() if k != "metrics"} for r in rows]  # metrics: raw
        figures = {"model": model_times, "prefix": prefix_times, "profile": where,
                   "budget": budget, "online_cost": cost, "online_cost_float32": cost_float32,
                   "against": compared}  # fmt: skip
        settings = {"items": args.items, "layers": args.layers, "duration_s": args.duration_s,
                    "channels": args.channels,
                    "server_cpus": sorted(args.server_cpus or []) or None}  # fmt: skip
        write_results(args.results, {"settings": settings, **figures, "rows": kept})


if __name__ == "__main__":
    main()
