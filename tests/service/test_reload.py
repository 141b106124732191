"""Hot model reload: a new export swapped in under load without a failed call, and a broken
one rejected while the old model keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from service.tools.client import RecommenderClient
from training.config import Config
from training.data.logs import ItemVocab
from training.export import export_model
from training.fit.train import save_model
from training.models.architectures import build_model


@pytest.fixture(scope="module")
def second_export(tmp_path_factory: pytest.TempPathFactory, tiny) -> Path:
    """Another model over the same items plus two new ones (as an hourly update makes)."""
    root = tmp_path_factory.mktemp("second")
    torch.manual_seed(1)
    cfg = Config(layers=(8, 6), n_epochs=0)
    ids = tiny.item_ids + ["new-1", "new-2"]
    model = build_model(len(ids), cfg).eval()
    popularity = np.ones(len(ids), dtype=np.int64)
    save_model(root / "model", model, cfg, ItemVocab(ids), popularity, {})
    return export_model(root / "model", root / "export")


def point(link: Path, target: Path) -> None:
    """Swap a symlink atomically, as an operator's rollout script would."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def version_of(export: Path) -> str:
    return json.loads((export / "metadata.json").read_text())["model_version"]


class Caller:
    """Calls Recommend in a loop from a thread until stopped; records versions and errors."""

    def __init__(self, target: str, clicks: list[str]):
        self.client = RecommenderClient(target)
        self.clicks = clicks
        self.versions: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        for n in range(100_000):  # bounded
            if self.stop.is_set():
                break
            try:
                reply = self.client.recommend(f"r{n % 50}", self.clicks, top_k=5)
                self.versions.append(reply.model_version)
            except grpc.RpcError as err:
                self.errors.append(err.code().name)

    def wait_for_version(self, version: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.02)
        raise AssertionError(f"never answered with {version}; last {self.versions[-1:]}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()


def test_a_new_export_is_swapped_in_under_load_without_a_failed_call(
    start_server, tiny, second_export, tmp_path
):
    link = tmp_path / "current"
    point(link, tiny.export_dir)
    running = start_server(model_dir=link, reload_poll_s=0.1)
    callers = [Caller(running.target, tiny.item_ids[:4]) for _ in range(3)]
    try:
        callers[0].wait_for_version(version_of(tiny.export_dir))
        point(link, second_export)
        for caller in callers:
            caller.wait_for_version(version_of(second_export))
        reply = running.client.recommend("after", ["new-1"], top_k=3)  # a new item is known
        # to the model, which takes part: SOURCE_BLEND (the shipped online layer is on), not
        # the popularity or online ranking that answers clicks the model does not know
        assert reply.source == 4 and list(reply.unknown_clicks) == []
    finally:
        for caller in callers:
            caller.close()
    for caller in callers:
        assert caller.errors == []
        versions = caller.versions
        first_new = versions.index(version_of(second_export))
        assert set(versions[:first_new]) == {version_of(tiny.export_dir)}
        assert set(versions[first_new:]) == {version_of(second_export)}  # no flapping back
    status = running.client.status()
    assert status.model_version == version_of(second_export)
    assert status.model_dir == str(second_export.resolve())
    assert (
        running.server.metrics.registry.get_sample_value(
            "recsys_model_reloads_total", {"result": "ok"}
        )
        == 2
    )  # the first load and the swap


def test_a_broken_export_is_rejected_and_the_old_model_keeps_serving(
    start_server, tiny, tmp_path, caplog
):
    link = tmp_path / "current"
    point(link, tiny.export_dir)
    running = start_server(model_dir=link, reload_poll_s=0.1)
    broken = tmp_path / "broken"
    shutil.copytree(tiny.export_dir, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    caller = Caller(running.target, tiny.item_ids[:3])
    try:
        point(link, broken)
        deadline = time.monotonic() + 20
        while running.client.status().last_reload_result == "ok":
            assert time.monotonic() < deadline, "the broken export was never tried"
            time.sleep(0.05)
        time.sleep(0.3)  # several more polls: the same broken export is not retried
    finally:
        caller.close()
    assert caller.errors == [] and len(caller.versions) > 0
    assert set(caller.versions) == {version_of(tiny.export_dir)}
    status = running.client.status()
    assert status.model_version == version_of(tiny.export_dir)
    assert "model.onnx" in status.last_reload_result
    metrics = running.server.metrics.registry
    assert metrics.get_sample_value("recsys_model_reloads_total", {"result": "failed"}) == 1
    assert metrics.get_sample_value("recsys_model_last_reload_ok") == 0
    assert any("model reload rejected" in r.getMessage() for r in caplog.records)
    assert running.server.reload() is False  # asked for explicitly: tried again, refused


def test_an_export_it_may_not_read_is_named_so_and_loaded_once_made_readable(
    start_server, tiny, second_export, tmp_path, monkeypatch
):
    """The server runs as a user that may not read the new export's graph (tests run as
    root, so the check is told so): the refusal says permission denied, not re-export, and
    a chmod alone, which leaves every mtime as it was, gets the export loaded."""
    link = tmp_path / "current"
    point(link, tiny.export_dir)
    running = start_server(model_dir=link, reload_poll_s=0.1)
    locked = tmp_path / "locked"
    shutil.copytree(second_export, locked)
    graph = locked / "model.onnx"
    graph.chmod(0o600)
    denied = {str(graph)}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in denied and real_access(p, mode))
    point(link, locked)
    deadline = time.monotonic() + 20
    while running.client.status().last_reload_result == "ok":
        assert time.monotonic() < deadline, "the export was never tried"
        time.sleep(0.05)
    result = running.client.status().last_reload_result
    assert "permission denied" in result and "chmod" in result and "re-export" not in result
    denied.clear()
    graph.chmod(0o644)
    while running.client.status().model_version != version_of(second_export):
        assert time.monotonic() < deadline, "the readable export was never loaded"
        time.sleep(0.05)
    assert running.client.status().last_reload_result == "ok"


def test_a_reload_asked_for_during_the_first_load_starts_no_second_first_load(start_server):
    """A SIGHUP while the first model loads (request_reload, as the signal handler does):
    one model watcher afterwards, not one per first load."""
    running = start_server(load=False, reload_poll_s=0.1)
    server = running.server
    server.request_reload()
    server.load_model()
    server.reload()  # after the one the SIGHUP asked for

    async def watchers() -> int:
        return sum(t.get_coro().__name__ == "_watch" for t in asyncio.all_tasks())

    assert asyncio.run_coroutine_threadsafe(watchers(), server._loop).result(5) == 1
    assert running.client.status().last_reload_result == "ok"


def test_reload_on_request_picks_up_files_replaced_in_place(
    start_server, tiny, second_export, tmp_path
):
    served_dir = tmp_path / "model"
    shutil.copytree(tiny.export_dir, served_dir)
    running = start_server(model_dir=served_dir, reload_poll_s=0)  # no polling: SIGHUP only
    for name in ("model.onnx", "prefix.onnx", "items.txt", "popularity.npy", "metadata.json"):
        if (second_export / name).exists():
            shutil.copy(second_export / name, served_dir / name)
    assert running.client.status().model_version == version_of(tiny.export_dir)
    assert running.server.reload() is True
    assert running.client.status().model_version == version_of(second_export)


def _mixed(tmp_path: Path, lists_from: Path, graph_from: Path, checksums: bool) -> Path:
    """An export directory with the lists and metadata of one export and the graphs of
    another; without checksums, as an export older than them would be."""
    mixed = tmp_path / f"mixed-{graph_from.parent.name}-{checksums}"
    shutil.copytree(lists_from, mixed)
    for name in ("model.onnx", "prefix.onnx"):
        if (graph_from / name).exists():
            shutil.copy(graph_from / name, mixed / name)
    if not checksums:
        meta = json.loads((mixed / "metadata.json").read_text())
        meta.pop("files")
        meta["onnx"].pop("sha256")
        (mixed / "metadata.json").write_text(json.dumps(meta))
    return mixed


@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("graph", ["larger", "smaller"])
def test_an_export_whose_graph_and_lists_disagree_is_refused_over_a_live_server(
    start_server, tiny, second_export, tmp_path, caplog, graph, checksums
):
    # the graph of a model with two more (or two fewer) items than items.txt and metadata
    lists_from, graph_from = (
        (tiny.export_dir, second_export) if graph == "larger" else (second_export, tiny.export_dir)
    )
    link = tmp_path / "current"
    point(link, tiny.export_dir)
    running = start_server(model_dir=link, reload_poll_s=0)
    point(link, _mixed(tmp_path, lists_from, graph_from, checksums))
    assert running.server.reload() is False
    status = running.client.status()
    assert status.model_version == version_of(tiny.export_dir)  # the old model still serves
    reason = "sha256" if checksums else "different exports"
    assert "model.onnx" in status.last_reload_result and reason in status.last_reload_result
    metrics = running.server.metrics.registry
    assert metrics.get_sample_value("recsys_model_reloads_total", {"result": "failed"}) == 1
    assert any("model reload rejected" in r.getMessage() for r in caplog.records)
    last = tiny.item_ids[-1]
    reply = running.client.recommend("after-mixed", [last], top_k=len(tiny.item_ids))
    assert reply.model_version == version_of(tiny.export_dir) and len(reply.items) > 0
    assert {item.item_id for item in reply.items} <= set(tiny.item_ids)


def test_an_export_copied_in_place_is_loaded_once_its_last_file_lands(
    start_server, tiny, second_export, tmp_path
):
    """A poll that sees the copy half-way refuses the mix; the files copied after it make
    the directory new again, so a later poll tries the whole export."""
    served_dir = tmp_path / "model"
    shutil.copytree(tiny.export_dir, served_dir)
    running = start_server(model_dir=served_dir, reload_poll_s=0.05)

    def wait_for(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not done():
            assert time.monotonic() < deadline, running.client.status()
            time.sleep(0.05)

    for name in ("model.onnx", "prefix.onnx", "metadata.json"):  # the graphs first
        shutil.copy(second_export / name, served_dir / name)
    wait_for(lambda: running.client.status().last_reload_result != "ok")  # the mix: refused
    time.sleep(0.3)  # more polls
    for name in ("items.txt", "popularity.npy"):
        shutil.copy(second_export / name, served_dir / name)
    wait_for(lambda: running.client.status().model_version == version_of(second_export))
    assert running.client.status().last_reload_result == "ok"


def test_reloads_of_retrained_vocabularies_leave_the_online_table_its_size(start_server, tmp_path):
    """Each export holds its items in the online layer's table while it serves; a reload
    lets the old one's go, so retrained models with new ids do not pile up there."""
    exports = []
    for gen in range(4):
        ids = [f"gen{gen}-item-{i}" for i in range(30)]
        torch.manual_seed(gen)
        cfg = Config(layers=(8,), n_epochs=0)
        root = tmp_path / f"gen{gen}"
        save_model(root / "model", build_model(len(ids), cfg).eval(), cfg, ItemVocab(ids),
                   np.ones(len(ids), dtype=np.int64), {})  # fmt: skip
        exports.append((export_model(root / "model", root / "export"), ids))
    link = tmp_path / "current"
    point(link, exports[0][0])
    running = start_server(model_dir=link, reload_poll_s=0)
    table = running.server.online.table
    sizes = []
    for export, ids in exports * 2:
        point(link, export)
        assert running.server.reload() is True
        running.client.recommend("s", ids[:2], top_k=5)  # its first call takes the indices
        sizes.append(len(table))
    # the serving vocabulary and the items learnt (at most the 2 clicks of each call); held
    # for good, the vocabularies took 30, 60, 90, 120
    assert max(sizes) <= 30 + 2 * len(sizes), sizes
