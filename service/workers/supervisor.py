"""More than one worker per pod: N processes answering on one port, one /metrics.

    python -m service --model DIR --workers 2      # default: one per CPU the pod may use

`python -m service` with N > 1 runs supervise(): this process (the supervisor) forks N
workers, each a RecommendationServer with its own event loop, model and online layer, all
listening on the same port with SO_REUSEPORT (the kernel spreads new connections over
them). The supervisor serves no calls. It

  - checks the port is free first, without SO_REUSEPORT, so that a second server on the
    port still fails to start (exit 2), as with one worker; port 0 becomes a free port;
  - relays what the workers share (link.py: learnt clicks, the learning guard's
    records, announced items, a reloaded model), and tells them to turn SERVING once every
    one has loaded the model (the pod is ready when all are);
  - forwards SIGTERM and SIGINT (each worker drains as one server does: NOT_SERVING, calls
    still taken for --drain-s, then --grace-s for those in flight) and SIGHUP (reload; to a
    worker still loading the model, once it has loaded). These signals wait, blocked, from
    __main__'s first line until each process has its handlers (signals.py): one that came
    while a worker imported the server killed it, and the pod with it;
  - serves /metrics on --metrics-port: each worker's own endpoint (127.0.0.1, a private
    port) read and summed (metrics.sum_expositions), with recsys_workers{state};
  - exits with the status of a worker that fails to start (2: bad configuration or port in
    use, 1: the model cannot be loaded), after stopping the others; a worker that dies
    later is logged with its status and the others are drained, and the supervisor exits
    1, so that the orchestrator restarts the pod (a worker started afresh would serve with
    empty online statistics and session states beside ones that have them);
  - kills a worker it has not heard from for HUNG_AFTER_S (each beats every link.BEAT_S from
    its event loop), which then counts as one that died: stopped or stuck, it answered
    nothing, and the connections the kernel gave it hung.

--cache-mb is the pod's: each worker's session cache gets 1/N of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import ServiceConfig
from ..metrics import MetricsEndpoint, sum_expositions
from . import signals
from .link import BEAT_S, RELAYED

log = logging.getLogger("service.workers")

SCRAPE_TIMEOUT_S = 2.0  # a worker's /metrics that takes longer is left out of the sum
MAX_BEHIND = 64 * 2**20  # bytes waiting for one worker before records to it are dropped
MAX_LINE = 16 * 2**20  # longest message line: a PutItems of the largest request, and more
STOP_MARGIN_S = 10.0  # after drain + grace, how long workers get to exit before SIGKILL
# a worker not heard from for this long is hung. Its beat comes from its event loop, which a
# model load does not hold (the load runs in a thread, and onnxruntime releases the GIL while
# it builds a session: a 400 MB model's 2 s load held the loop 18 ms); a full GC of a 1.2 GB
# heap held it 1.3 s (the manifests give a pod 2 GiB)
HUNG_AFTER_S = 5.0


def default_workers(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its CPU affinity, lowered to the cgroup's CPU quota
    (a container's CPU limit: cgroup v2 cpu.max, v1 cpu.cfs_quota_us) rounded up; >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup's quota allows (None: no quota, or no cgroup files to read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    return None


def resolve_workers(config: ServiceConfig) -> int:
    return config.workers or default_workers()


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    sock: socket.socket  # the supervisor's end of the link
    writer: asyncio.StreamWriter | None = None
    metrics_port: int = 0
    loaded: bool = False
    reload: bool = False  # a SIGHUP came while it was loading: sent once it has loaded
    heard: float = 0.0  # time.monotonic() of its last line; 0: none yet, or killed as hung
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # set on the loop


class _SummedCollector(Collector):
    """The workers' metrics summed, and the supervisor's own."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        texts, answered = [], 0
        for worker in list(self.supervisor.workers):
            if worker.metrics_port == 0 or not worker.process.is_alive():
                continue
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                    texts.append(response.read().decode())
                answered += 1
            except OSError as err:  # stopping, or stuck: the others are still summed
                log.debug("worker %d's metrics: %s", worker.index, err)
        yield from sum_expositions(texts)
        states = GaugeMetricFamily("recsys_workers", "Worker processes: configured, alive, "
                                   "and those whose metrics are in this sum",
                                   labels=["state"])  # fmt: skip
        workers = self.supervisor.workers
        states.add_metric(["configured"], float(self.supervisor.n))
        states.add_metric(["alive"], float(sum(w.process.is_alive() for w in workers)))
        states.add_metric(["scraped"], float(answered))
        yield states
        exits = CounterMetricFamily("recsys_worker_exits", "Workers that exited unasked")
        exits.add_metric([], float(self.supervisor.crashes))
        yield exits
        dropped = CounterMetricFamily(
            "recsys_worker_relay_dropped", "Records not relayed to a worker that lagged behind"
        )
        dropped.add_metric([], float(self.supervisor.dropped))
        yield dropped


class Supervisor:
    """Starts, links, signals and waits for the workers (module docstring)."""

    def __init__(self, config: ServiceConfig, n: int):
        self.config = config
        self.n = n
        self.workers: list[_Worker] = []
        self.crashes = 0
        self.dropped = 0  # records not relayed to a worker that lagged MAX_BEHIND
        self.metrics = MetricsEndpoint(collector=_SummedCollector(self))
        self._stopping = False
        self._status = 0

    def run(self) -> int:
        """Fork the workers and supervise them until they have all exited; the exit status."""
        cfg = self.config
        try:
            port = _check_port(cfg)
            metrics_port = self.metrics.bind(cfg.metrics_host or cfg.host, cfg.metrics_port)
        except OSError as err:
            log.error("%s", err)
            return 2
        worker_config = replace(
            cfg,
            port=port,
            reuse_port=True,
            metrics_host="127.0.0.1",
            metrics_port=0,
            cache_mb=cfg.cache_mb / self.n,
            workers=1,
        )
        context = multiprocessing.get_context("fork")  # no thread runs in this process yet
        signals.block()  # as __main__ does: until the handlers are in place, here and in workers
        for index in range(1, self.n + 1):
            ours, theirs = socket.socketpair()
            inherited: list[socket.socket | MetricsEndpoint] = [w.sock for w in self.workers]
            inherited += [ours, self.metrics]
            process = context.Process(
                target=_worker_main,
                args=(worker_config, index, self.n, theirs, inherited),
                name=f"worker-{index}",
                daemon=False,
            )
            process.start()
            theirs.close()
            self.workers.append(_Worker(index, process, ours))
        self.metrics.start()
        log.info("gRPC on %s, metrics on port %d, %d workers", _join(cfg.host, port),
                 metrics_port, self.n)  # fmt: skip
        try:
            return asyncio.run(self._supervise())
        finally:
            signals.block()  # asyncio's handlers are gone: stopping already, a signal is moot
            self.metrics.close()
            for worker in self.workers:
                if worker.process.is_alive():
                    worker.process.kill()
                worker.process.join(5)
            log.info("stopped")

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        signals.unblock()
        tasks = [loop.create_task(self._watch())]
        for worker in self.workers:
            loop.add_reader(worker.process.sentinel, self._on_exit, worker)
            reader, worker.writer = await asyncio.open_unix_connection(
                sock=worker.sock, limit=MAX_LINE
            )
            tasks.append(loop.create_task(self._relay(worker, reader)))
        for worker in self.workers:
            await worker.exited.wait()
        for task in tasks:
            task.cancel()
        return self._status

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        worker.process.join(5)  # the sentinel fires as it exits; reaping may lag a little
        code = worker.process.exitcode
        worker.exited.set()
        if self._stopping:
            if code != 0:
                log.error("worker %d exited with %s while stopping", worker.index, _said(code))
                self._status = self._status or 1
            return
        self.crashes += 1
        if not all(w.loaded for w in self.workers):
            # at start: its own status (2 for a port in use, 1 for a model it cannot load)
            log.error("worker %d exited with %s at start; stopping the others", worker.index,
                      _said(code))  # fmt: skip
            self._status = code if code in (1, 2) else 1
        else:
            log.error("worker %d (pid %s) exited with %s; draining the others and exiting 1 "
                      "so that the pod restarts", worker.index, worker.process.pid,
                      _said(code))  # fmt: skip
            self._status = 1
        self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        if not self._stopping:
            log.info("received %s: the workers drain", signal.Signals(signum).name)
        self._stopping = True
        self._forward(signal.SIGTERM)
        limit = self.config.drain_s + self.config.grace_s + STOP_MARGIN_S
        asyncio.get_running_loop().call_later(limit, self._kill_late)

    def _kill_late(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                self._status = self._status or 1

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.info("received SIGHUP: the workers reload the model")
        for worker in self.workers:
            if signum == signal.SIGHUP and not worker.loaded:
                # a reload would race its first load, which may have read the old export
                worker.reload = True
            else:
                _signal(worker, signum)

    async def _watch(self) -> None:
        """Kill a worker not heard from for HUNG_AFTER_S; its exit is then a crash (_on_exit)."""
        last = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(BEAT_S)
            now = time.monotonic()
            late = now - last > 2 * BEAT_S  # this process was the one stopped, or starved
            last = now
            for worker in self.workers:
                if worker.heard and late:
                    worker.heard = now  # its beats may still wait unread
                elif worker.heard and now - worker.heard > HUNG_AFTER_S:
                    log.error("worker %d (pid %s) has not been heard from for %.0f s (stopped, or "
                              "its event loop stuck); killing it", worker.index,
                              worker.process.pid, now - worker.heard)  # fmt: skip
                    worker.heard = 0.0
                    worker.process.kill()

    async def _relay(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """The worker's messages: relayed to the others, or news for the supervisor."""
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError) as err:
                log.error("link to worker %d: %s", worker.index, err)
                return
            if not line:
                return
            worker.heard = time.monotonic()
            kind = _kind(line)
            if kind in RELAYED:
                for other in self.workers:
                    writer = other.writer
                    if other is worker or writer is None or writer.is_closing():
                        continue
                    if writer.transport.get_write_buffer_size() > MAX_BEHIND:
                        self.dropped += 1  # a stuck worker: not all memory for it
                    else:
                        writer.write(line)
            elif kind == "hello":
                worker.metrics_port = int(json.loads(line)["metrics_port"])
            elif kind == "loaded":
                worker.loaded = True
                if worker.reload:
                    worker.reload = False
                    _signal(worker, signal.SIGHUP)
                if all(w.loaded for w in self.workers) and not self._stopping:
                    log.info("all %d workers have loaded the model: serving", self.n)
                    for w in self.workers:
                        if w.writer is not None and not w.writer.is_closing():
                            w.writer.write(b'{"k":"serve"}\n')


def _kind(line: bytes) -> str:
    """The "k" of a message line without parsing all of it (it comes first)."""
    start = line.find(b'"k":"')
    if start < 0:
        return ""
    end = line.find(b'"', start + 5)
    return line[start + 5 : end].decode(errors="replace")


def _signal(worker: _Worker, signum: int) -> None:
    if worker.process.is_alive() and worker.process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signum)


def _said(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _check_port(cfg: ServiceConfig) -> int:
    """The port the workers will share: --port, or a free one for 0. Unless --reuse-port,
    fails (OSError) when anything listens there, as one server's start would."""
    family, _, _, _, address = socket.getaddrinfo(
        cfg.host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
        if cfg.reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except OSError as err:
            where = _join(cfg.host, cfg.port)
            raise OSError(
                f"cannot listen on {where} ({err.strerror}); is the port in use?"
            ) from err
        return int(probe.getsockname()[1])


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_main(
    config: ServiceConfig,
    index: int,
    n: int,
    sock: socket.socket,
    inherited: list[socket.socket | MetricsEndpoint],
) -> None:
    """A forked worker: one RecommendationServer linked to the supervisor by sock."""
    for held in inherited:  # the supervisor's sockets: only it may hold them
        held.close()
    prefix = f"[worker {index}/{n} pid {os.getpid()}] "
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter or logging.Formatter()
        handler.setFormatter(logging.Formatter(prefix + (formatter._fmt or "%(message)s")))
    from ..server import serve  # the server's imports (gRPC) only after the fork
    from .link import WorkerLink

    link = WorkerLink(sock, learn_clicks=config.redis_url is None)
    signals.until_handled()  # blocked since the fork: what came meanwhile is handled now
    signals.unblock()
    sys.exit(serve(config, link))
