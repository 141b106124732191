"""--workers: N processes on one port (workers/supervisor.py) sharing what they learn (link.py),
one summed /metrics; checked over real connections to `python -m service --workers 2`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from service.clickbus import SharedClick
from service.learning.catalogue import CatalogueConfig
from service.learning.guard import GuardConfig
from service.metrics import sum_expositions
from service.pipeline.decode import Limits
from service.pipeline.recommender import Recommender
from service.pipeline.sessions import SessionCache
from service.pipeline.user_store import RedisUserStore, connect, user_key
from service.pipeline.users import UserEntry, UserSessions
from service.proto import recommender_pb2 as pb
from service.proto import recommender_pb2_grpc as pb_grpc
from service.runtime import ExportedModel
from service.workers import link as workerlink
from service.workers.link import WorkerLink, encode
from service.workers.supervisor import default_workers
from tests.tools import require_module, require_tool

from .conftest import TinyModel
from .pipeline import test_users
from .test_clickbus import RedisServer
from .test_main import ENV, ROOT, ServiceProcess
from .test_shutdown import _check, _stop_under_retries

hrnn = test_users.hrnn  # the tiny HRNN export (user.onnx), for ForgetUser with user states

# --- the default count ---


def test_the_default_is_the_cpus_the_cgroup_quota_allows(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5 CPU limit
    assert default_workers(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert default_workers(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no limit: the affinity decides
    assert default_workers(tmp_path) == len(os.sched_getaffinity(0))


def test_the_default_reads_cgroup_v1_and_no_cgroup_at_all(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert default_workers(tmp_path) == 1
    assert default_workers(tmp_path / "missing") >= 1


# --- metrics ---

WORKER_A = """# TYPE recsys_requests_total counter
recsys_requests_total{method="Recommend",code="OK"} 3.0
# TYPE recsys_request_duration_seconds histogram
recsys_request_duration_seconds_bucket{method="Recommend",le="0.001"} 2.0
recsys_request_duration_seconds_bucket{method="Recommend",le="+Inf"} 3.0
recsys_request_duration_seconds_count{method="Recommend"} 3.0
recsys_request_duration_seconds_sum{method="Recommend"} 0.5
# TYPE recsys_model_loaded gauge
recsys_model_loaded 1.0
# TYPE recsys_session_cache_entries gauge
recsys_session_cache_entries 10.0
"""
WORKER_B = WORKER_A.replace(" 3.0", " 4.0").replace("loaded 1.0", "loaded 0.0")


def test_counters_and_histograms_are_summed_and_gauges_combined_by_meaning():
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in sum_expositions([WORKER_A, WORKER_B])
        for s in family.samples
    }
    ok = (("code", "OK"), ("method", "Recommend"))
    assert samples[("recsys_requests_total", ok)] == 7.0
    inf = (("le", "+Inf"), ("method", "Recommend"))
    assert samples[("recsys_request_duration_seconds_bucket", inf)] == 7.0
    assert samples[("recsys_request_duration_seconds_sum", (("method", "Recommend"),))] == 1.0
    assert samples[("recsys_model_loaded", ())] == 0.0  # 1 only when every worker serves
    assert samples[("recsys_session_cache_entries", ())] == 20.0  # each its own


# --- the guard's rules across workers, in one process ---


def _linked_pair(settings: GuardConfig) -> tuple[list, list]:
    """Two workers' guards and links, the records of each handed to the other by hand."""
    links = [WorkerLink(None, learn_clicks=False) for _ in range(2)]  # type: ignore[arg-type]
    guards = [link.guard(settings, CatalogueConfig()) for link in links]
    outboxes: list[list] = [[], []]
    for link, outbox in zip(links, outboxes, strict=True):
        link.send = outbox.append  # type: ignore[method-assign]
    return [guards, links], outboxes


def _deliver(links: list[WorkerLink], outboxes: list[list]) -> None:
    for sender, outbox in enumerate(outboxes):
        for message in outbox:
            links[1 - sender]._apply_learnt(message)
        outbox.clear()


def test_a_session_teaches_a_transition_once_whichever_worker_it_reaches():
    (guards, links), outboxes = _linked_pair(GuardConfig())
    known = {"a", "b", "c"}
    assert guards[0].select("s1", ["a", "b"], "", 1.0, known) == [(1, "s1")]
    _deliver(links, outboxes)
    assert guards[1].select("s1", ["a", "b"], "", 2.0, known) == []  # the same call again
    assert guards[1].select("s1", ["c", "a", "b"], "", 3.0, known) == []  # a -> b again
    assert guards[1].stats.not_learnt["repeat_transition"] == 1


def test_a_clients_cap_counts_what_it_taught_on_every_worker():
    (guards, links), outboxes = _linked_pair(GuardConfig(client_clicks=2))
    known = {f"i{k}" for k in range(10)}
    assert guards[0].select("s1", ["i0", "i1"], "client", 1.0, known)
    assert guards[1].select("s2", ["i2", "i3"], "client", 1.0, known)  # before any record
    _deliver(links, outboxes)
    assert guards[0].select("s3", ["i4", "i5"], "client", 2.0, known) == []
    assert guards[1].select("s4", ["i6", "i7"], "client", 2.0, known) == []
    assert guards[0].stats.not_learnt["client_cap"] == 1
    assert guards[1].stats.not_learnt["client_cap"] == 1


def test_a_record_carries_the_clicks_the_other_layer_learns(monkeypatch):
    (guards, links), outboxes = _linked_pair(GuardConfig())
    guards[0].select("s1", ["a", "b", "c", "d"], "", 1.0, {"a", "b", "c", "d"})
    (message,) = outboxes[0]
    assert message["w"] == [[3, True, ["b", "c", "d"]]]  # one click, the last: a new session
    learnt: list[SharedClick] = []
    links[1].learn_clicks, links[1].layer = True, object()  # type: ignore[assignment]
    monkeypatch.setattr(workerlink, "learn_shared", lambda _layer, click: learnt.append(click))
    _deliver(links, outboxes)
    assert learnt == [SharedClick("s1", 4, ("b", "c", "d"), 1.0)]


def test_items_announced_and_users_forgotten_on_one_worker_are_on_every_worker():
    (guards, links), outboxes = _linked_pair(GuardConfig())
    guards[0].catalogue.put([("new-item", 0.0)], 1.0)
    forgotten: list[str] = []

    class Engine:
        def forget_user(self, user_id: str) -> None:
            forgotten.append(user_id)

    engines = [Engine(), Engine()]
    for link, engine in zip(links, engines, strict=True):
        link.share_forgetting(engine)
    engines[0].forget_user("u1")
    for sender, outbox in enumerate(outboxes):
        for message in outbox:
            asyncio.run(links[1 - sender]._apply(message))
        outbox.clear()
    assert guards[1].catalogue.admits("new-item", 2.0)
    assert forgotten == ["u1", "u1"]  # here, then there; not sent back again
    assert outboxes == [[], []]


# --- python -m service --workers 2 ---


def _channel(target: str) -> grpc.Channel:
    # a connection of its own (gRPC would share one between channels to the same target)
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _ok_calls(text: str) -> float:
    found = re.search(r'recsys_requests_total\{code="OK",method="Recommend"\} (\S+)', text)
    if found is None:
        found = re.search(r'recsys_requests_total\{method="Recommend",code="OK"\} (\S+)', text)
    return float(found[1]) if found else 0.0


class Pod:
    """`python -m service --workers 2` and what its log says about it."""

    def __init__(self, tiny: TinyModel, *extra: str):
        self.service = ServiceProcess(
            "--model", str(tiny.export_dir), "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--workers", "2", "--drain-s", "0.5", *extra,
        )  # fmt: skip
        found = self.service.wait_for(r"gRPC on 127\.0\.0\.1:(\d+), metrics on port (\d+)")
        self.target, self.metrics_port = f"127.0.0.1:{found[1]}", int(found[2])
        self.service.wait_for("all 2 workers have loaded the model: serving")
        self.workers: dict[int, int] = {}  # private metrics port -> pid
        for line in list(self.service.lines):
            own = re.search(r"pid (\d+)\].*this worker's own metrics on 127\.0\.0\.1:(\d+)", line)
            if own:
                self.workers[int(own[2])] = int(own[1])
        assert len(self.workers) == 2, "".join(self.service.lines)

    def worker_of(self, channel: grpc.Channel, clicks: list[str]) -> int:
        """The private metrics port of the worker that answers this channel's calls."""
        before = {port: _ok_calls(_scrape(port)) for port in self.workers}
        pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(clicks=clicks), timeout=10)
        after = {port: _ok_calls(_scrape(port)) for port in self.workers}
        (port,) = [p for p in self.workers if after[p] > before[p]]
        return port

    def channels_on_both(self, clicks: list[str]) -> dict[int, grpc.Channel]:
        """A channel to each worker (connections are spread by the kernel: try a few)."""
        found: dict[int, grpc.Channel] = {}
        for _ in range(40):
            channel = _channel(self.target)
            port = self.worker_of(channel, clicks)
            if port in found:
                channel.close()
            else:
                found[port] = channel
            if len(found) == 2:
                return found
        raise AssertionError("40 connections all reached one worker")


@pytest.fixture
def pod(tiny: TinyModel) -> Iterator[Pod]:
    running = Pod(tiny)
    yield running
    running.service.close()


def test_two_workers_answer_on_one_port_and_metrics_sum_both(pod, tiny):
    channels = pod.channels_on_both(tiny.item_ids[:2])
    for channel in channels.values():
        stub = pb_grpc.RecommenderStub(channel)
        for _ in range(5):
            stub.Recommend(pb.RecommendRequest(clicks=tiny.item_ids[:3]), timeout=10)
    per_worker = {port: _ok_calls(_scrape(port)) for port in pod.workers}
    assert all(n >= 6 for n in per_worker.values())
    summed = _scrape(pod.metrics_port)
    assert _ok_calls(summed) == sum(per_worker.values())
    assert 'recsys_workers{state="scraped"} 2.0' in summed
    assert "recsys_model_loaded 1.0" in summed
    for channel in channels.values():
        channel.close()


def test_a_click_learnt_on_one_worker_changes_the_others_answer(pod, tiny):
    a, b = tiny.item_ids[10], tiny.item_ids[11]
    (teacher, learner) = pod.channels_on_both([a]).values()
    ask = pb.RecommendRequest(clicks=[a], top_k=len(tiny.item_ids))

    def rank_of_b() -> int:
        answer = pb_grpc.RecommenderStub(learner).Recommend(ask, timeout=10)
        return [item.item_id for item in answer.items].index(b)

    before = rank_of_b()
    teach = pb_grpc.RecommenderStub(teacher)
    for k in range(30):  # 30 sessions click a then b: the online layer learns a -> b
        teach.Recommend(pb.RecommendRequest(session_id=f"s{k}", clicks=[a, b]), timeout=10)
    deadline = time.monotonic() + 10
    while rank_of_b() >= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rank_of_b() < before
    text = _scrape(pod.metrics_port)
    applied = re.search(r'recsys_worker_shared_total\{what="applied"\} (\S+)', text)
    assert applied and float(applied[1]) >= 30
    teacher.close()
    learner.close()


def test_sigterm_drains_both_workers_and_cancels_no_call(tiny):
    pod = Pod(tiny, "--grace-s", "10")
    try:
        stops = []

        def terminate() -> None:
            pod.service.proc.send_signal(signal.SIGTERM)
            assert pod.service.proc.wait(timeout=30) == 0

        stops.append(_stop_under_retries(pod.target, tiny.item_ids[:3], terminate))
        _check(stops, {"OK", "UNAVAILABLE"})
        assert sum(1 for line in pod.service.lines if "still taking calls" in line) == 2
    finally:
        pod.service.close()


def test_sighup_reloads_every_worker(pod):
    assert sum("serving model" in line for line in pod.service.lines) == 2
    pod.service.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while sum("serving model" in line for line in pod.service.lines) < 4:
        assert time.monotonic() < deadline, "".join(pod.service.lines)
        time.sleep(0.05)


def test_workers_stop_when_the_supervisor_is_killed(tiny):
    pod = Pod(tiny)
    try:
        pod.service.proc.kill()
        pod.service.proc.wait()
        deadline = time.monotonic() + 30
        for pid in pod.workers.values():
            while _alive(pid):
                assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
                time.sleep(0.05)
    finally:
        pod.service.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its new parent reaps it


def test_a_worker_that_dies_is_reported_and_the_pod_exits_1(tiny):
    pod = Pod(tiny)
    try:
        pid = next(iter(pod.workers.values()))
        os.kill(pid, signal.SIGKILL)
        assert pod.service.proc.wait(timeout=30) == 1
        pod.service.wait_for(rf"worker \d \(pid {pid}\) exited with signal SIGKILL")
    finally:
        pod.service.close()


def test_a_model_that_cannot_load_exits_1_with_workers(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(tmp_path / "none"), "--host",
         "127.0.0.1", "--port", "0", "--metrics-port", "0", "--workers", "2"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "at start" in done.stderr


def test_a_second_pod_on_the_port_fails_to_start(pod, tiny):
    port = pod.target.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(tiny.export_dir), "--host",
         "127.0.0.1", "--port", port, "--metrics-port", "0", "--workers", "2"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


# --- ForgetUser with the shared user store (--user-store redis) ---

SECRET = b"0123456789abcdef0123456789abcdef"  # the user store's HMAC key
SECRET_USER = "carol.secret@example.com"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_tool("redis-server"), tmp_path)
    require_module("redis")
    server.start()
    yield server
    server.stop()


def test_a_relayed_forget_asks_redis_nothing_and_the_link_logs_no_records_content(hrnn, caplog):
    """The worker that took ForgetUser deleted the user in Redis: the relay must not delete
    again (here Redis is down: that raised StoreUnavailable), and a record that cannot be
    applied is logged by its kind, never by what it holds (user ids, clicks)."""
    caplog.set_level(logging.DEBUG)
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"  # nothing listens
    store = RedisUserStore(connect(down, 0.05), SECRET, model, 100, 3600.0)
    cache = SessionCache(100, 60.0)
    engine = Recommender(model, cache, Limits(), users=UserSessions(model, store, 60.0, cache))
    ours, theirs = socket.socketpair()
    link = WorkerLink(ours)
    link.share_forgetting(engine)
    # a record whose error quotes it: float() of a user id
    bad = {"k": "learnt", "s": "s1", "c": "", "n": 1, "l": "x", "t": SECRET_USER, "w": []}

    async def relay() -> None:
        await link.start()
        theirs.sendall(encode({"k": "forget", "u": SECRET_USER}) + encode(bad))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "cannot apply" not in caplog.text:
            await asyncio.sleep(0.01)
        await link.stop()

    try:
        asyncio.run(relay())
    finally:
        theirs.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "worker link: cannot apply a learnt record (ValueError)" in logged
    assert SECRET_USER not in logged and "StoreUnavailable" not in logged
    assert "forget record" not in logged  # the relay was applied


def test_forget_user_on_a_pod_deletes_in_redis_once_and_the_other_worker_forgets_its_own(
    hrnn, redis_server, tmp_path
):
    """python -m service --workers 2 --user-store redis: the worker that takes ForgetUser
    deletes the user in Redis; the other reads the forgotten sessions (its subscription)
    and deletes nothing: one DEL in Redis's command counts."""
    secret_file = tmp_path / "user-store-secret"
    secret_file.write_bytes(SECRET)
    model = ExportedModel.load(hrnn.export_dir, "cpu")
    client = connect(redis_server.url, 1.0)
    state = UserEntry(np.zeros((1, model.user_size), np.float32), "s1", None, used=time.time())
    RedisUserStore(client, SECRET, model, 100, 3600.0).put(SECRET_USER, state)
    key = f"recsys:users:u:{user_key(SECRET, SECRET_USER)}"
    assert client.exists(key) == 1
    pod = Pod(hrnn, "--user-store", "redis", "--redis-url", redis_server.url,  # type: ignore[arg-type]
              "--user-store-secret-file", str(secret_file), "--online", "0",
              "--catalogue-token", test_users.TOKEN)  # fmt: skip
    try:
        with _channel(pod.target) as channel:
            pb_grpc.RecommenderStub(channel).ForgetUser(
                pb.ForgetUserRequest(user_id=SECRET_USER),
                metadata=[("authorization", f"Bearer {test_users.TOKEN}")],
                timeout=10,
            )
        assert client.exists(key) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the other worker has applied the relay
            counts = client.info("commandstats")
            if "cmdstat_subscribe" in counts or counts["cmdstat_del"]["calls"] > 1:
                break
            time.sleep(0.02)
        assert counts["cmdstat_del"]["calls"] == 1
        assert counts["cmdstat_subscribe"]["calls"] == 1
        assert SECRET_USER not in "".join(pod.service.lines)
    finally:
        pod.service.close()


# --- signals early in the start, a hung worker ---


def _starting(tiny: TinyModel) -> ServiceProcess:
    """The pod of Pod, not waited for."""
    return ServiceProcess(
        "--model", str(tiny.export_dir), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--workers", "2", "--drain-s", "0.5",
    )  # fmt: skip


def _minds(pid: int, signum: int) -> bool:
    """Whether the process has a handler for signum, or blocks it (its /proc status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = re.findall(r"Sig(?:Cgt|Blk):\s*([0-9a-f]+)", status)
    return any(int(mask, 16) >> (signum - 1) & 1 for mask in masks)


def _wait_until_it_minds(service: ServiceProcess, signum: int) -> None:
    deadline = time.monotonic() + 30
    while not _minds(service.proc.pid, signum):
        assert time.monotonic() < deadline and service.proc.poll() is None, service.lines
        time.sleep(0.002)


@pytest.mark.parametrize("when", ["supervisor importing", "workers importing"])
def test_sigterm_early_in_the_start_is_a_clean_stop(tiny, when):
    """SIGTERM as soon as the supervisor minds it (while it imports), or right after it forked
    the workers (while they import the server): exit 0, no worker killed by it."""
    service = _starting(tiny)
    try:
        if when == "supervisor importing":
            _wait_until_it_minds(service, signal.SIGTERM)
        else:
            service.wait_for(r"gRPC on 127\.0\.0\.1:\d+, metrics on port \d+, 2 workers")
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=30) == 0, "".join(service.lines)
        assert not [line for line in service.lines if "exited with" in line]
    finally:
        service.close()


def test_sighup_early_in_the_start_is_harmless_and_reloads_once_loaded(tiny):
    """SIGHUP while the supervisor imports (no model anywhere: nothing to reload), then right
    after the fork (the workers import the server): each worker reloads once it has loaded."""
    service = _starting(tiny)
    try:
        _wait_until_it_minds(service, signal.SIGHUP)
        service.proc.send_signal(signal.SIGHUP)
        service.wait_for(r"gRPC on 127\.0\.0\.1:\d+, metrics on port \d+, 2 workers")
        service.proc.send_signal(signal.SIGHUP)
        service.wait_for("all 2 workers have loaded the model: serving")
        deadline = time.monotonic() + 30
        while sum("serving model" in line for line in service.lines) < 4:  # loaded, reloaded
            assert time.monotonic() < deadline, "".join(service.lines)
            time.sleep(0.05)
        assert service.proc.poll() is None
        assert not [line for line in service.lines if "exited with" in line]
    finally:
        service.close()


def test_a_hung_worker_is_killed_and_the_pod_exits_1(tiny):
    """A worker that stops (SIGSTOP here; a stuck event loop alike) answers nothing: the
    supervisor kills it once it has not heard from it for HUNG_AFTER_S, as it would a worker
    that died. A pause well under that (a GC, a long load) is not a hang."""
    pod = Pod(tiny)
    pid = next(iter(pod.workers.values()))
    try:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2)
        os.kill(pid, signal.SIGCONT)
        time.sleep(1)
        assert pod.service.proc.poll() is None
        os.kill(pid, signal.SIGSTOP)
        assert pod.service.proc.wait(timeout=20) == 1
        pod.service.wait_for(rf"worker \d \(pid {pid}\) has not been heard from for \d")
        pod.service.wait_for(rf"worker \d \(pid {pid}\) exited with signal SIGKILL")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        pod.service.close()
