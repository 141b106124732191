"""An exported GRU4Rec run with onnxruntime: what the service knows about the model.

    model = ExportedModel.load("runs/demo/export", device="auto")
    state = model.zero_state(1)                                   # (1, S) float32
    top_scores, top_items, state = model.top_k(np.array([7]), state, k=20)

The export directory (written by `python -m training export`) holds
  model.onnx      inputs  items (B,) int64, state (B, S) float32, k (1,) int64;
                  outputs scores (B, N) float32 raw logits, new_state (B, S) float32,
                          top_scores (B, k) float32 and top_items (B, k) int64, best first
                          (the graph's TopK puts the lower index first among equal scores);
                  S is the sum of the GRU layer sizes, the layers' states side by side.
  items.txt       the N item ids, one a line, in index order.
  popularity.npy  (N,) int64 training click counts, for the popularity fallback.
  metadata.json   format_version, model_version, config, training data and evaluation.
This module imports neither torch nor the training package, so the serving image needs
neither.
"""

from __future__ import annotations

import ctypes
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
ITEMS_FILE = "items.txt"
POPULARITY_FILE = "popularity.npy"
METADATA_FILE = "metadata.json"
# graph input and output names, shared with training/export.py
INPUT_ITEMS, INPUT_STATE, INPUT_K = "items", "state", "k"
OUTPUT_SCORES, OUTPUT_STATE = "scores", "new_state"
OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS = "top_scores", "top_items"

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(RuntimeError):
    """The export directory is missing, incomplete or inconsistent; the message says which."""


def cuda_device_count() -> int:
    """CUDA devices the NVIDIA driver reports; 0 when there is no driver or no device.

    Asked of the driver library directly (no torch), so that onnxruntime is only told to
    try CUDA when it can work: asking for it on a machine without a GPU makes onnxruntime
    log an alarming error about missing libraries before falling back."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def choose_providers(device: str) -> list[str]:
    """Execution providers to ask for: CUDA first only when it is built in and a device is
    usable. device: "auto", "cpu" or "cuda" (raises ModelLoadError when CUDA is unusable)."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} must be one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    built_in = CUDA in ort.get_available_providers()
    usable = built_in and cuda_device_count() > 0
    if device == "cuda" and not usable:
        why = "no CUDA device is visible" if built_in else "this onnxruntime has no CUDA provider"
        raise ModelLoadError(f"device=cuda was asked for but {why}; use --device auto or cpu")
    return [CUDA, CPU] if usable else [CPU]


@dataclass(frozen=True)
class ExportInfo:
    """metadata.json, with the fields the service relies on pulled out."""

    model_version: str
    n_items: int
    state_size: int
    raw: dict[str, Any]


class ExportedModel:
    """onnxruntime session, item vocabulary and popularity of one export directory.

    Thread-safe: onnxruntime sessions may run concurrently and nothing here mutates."""

    def __init__(
        self,
        session: ort.InferenceSession,
        item_ids: list[str],
        popularity: np.ndarray,
        info: ExportInfo,
    ):
        self.session = session
        self.item_ids = item_ids
        self.index = {item: i for i, item in enumerate(item_ids)}
        self.popularity = popularity
        # most popular first, ties by index: the fallback ranking
        self.popularity_order = np.argsort(-popularity, kind="stable")
        self.info = info
        self.provider = session.get_providers()[0]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def state_size(self) -> int:
        return self.info.state_size

    @property
    def model_version(self) -> str:
        return self.info.model_version

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "auto", threads: int = 0) -> ExportedModel:
        """Read an export directory; threads: onnxruntime intra-op threads (0 = its default).

        Raises ModelLoadError naming the file at fault."""
        root = Path(export_dir)
        info = _read_metadata(root)
        item_ids = _read_items(root / ITEMS_FILE, info.n_items)
        popularity = _read_popularity(root / POPULARITY_FILE, info.n_items)
        providers = choose_providers(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # a GRU step is a chain: nothing to run side by side
        try:
            session = ort.InferenceSession(str(root / MODEL_FILE), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own unrelated exception types
            raise ModelLoadError(
                f"{root / MODEL_FILE}: onnxruntime {ort.__version__} cannot load it ({err}); "
                "re-export it with this project's `python -m training export`"
            ) from err
        got = session.get_providers()[0]
        if device == "cuda" and got != CUDA:
            raise ModelLoadError(
                "device=cuda was asked for but onnxruntime could not start its CUDA provider "
                "(CUDA or cuDNN libraries missing?); see the log above, or use --device auto"
            )
        if providers[0] == CUDA and got != CUDA:
            log.warning("a CUDA device is present but onnxruntime could not use it; on CPU")
        log.info(
            "model %s: %d items, state %d, onnxruntime %s on %s",
            info.model_version,
            info.n_items,
            info.state_size,
            ort.__version__,
            got,
        )
        return cls(session, item_ids, popularity, info)

    def zero_state(self, batch: int = 1) -> np.ndarray:
        """The state of a session before its first click, (batch, S) float32."""
        return np.zeros((batch, self.state_size), dtype=np.float32)

    def advance(self, items: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Feed one click per row: items (B,) int64, state (B, S) -> new state (B, S)."""
        return self._run([OUTPUT_STATE], items, state, 1)[0]

    def scores(self, items: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed one click per row -> (scores (B, N) raw logits for the next click, new state)."""
        scores, new_state = self._run([OUTPUT_SCORES, OUTPUT_STATE], items, state, 1)
        return scores, new_state

    def top_k(
        self, items: np.ndarray, state: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feed one click per row -> (top scores (B, k'), top item indices (B, k'), new state),
        best first, with k' = min(k, N)."""
        k = max(1, min(k, self.n_items))
        top_scores, top_items, new_state = self._run(
            [OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS, OUTPUT_STATE], items, state, k
        )
        return top_scores, top_items, new_state

    def _run(self, outputs: list[str], items: np.ndarray, state: np.ndarray, k: int) -> list:
        feeds = {
            INPUT_ITEMS: np.ascontiguousarray(items, dtype=np.int64),
            INPUT_STATE: np.ascontiguousarray(state, dtype=np.float32),
            INPUT_K: np.array([k], dtype=np.int64),
        }
        return self.session.run(outputs, feeds)


def _read_metadata(root: Path) -> ExportInfo:
    if not root.is_dir():
        raise ModelLoadError(
            f"model directory {root} does not exist; point --model (RECSYS_MODEL_DIR) at the "
            "output of `python -m training export`"
        )
    for name in (MODEL_FILE, ITEMS_FILE, POPULARITY_FILE, METADATA_FILE):
        if not (root / name).is_file():
            raise ModelLoadError(
                f"{root / name} is missing; {root} must be a `python -m training export` output"
            )
    try:
        meta = json.loads((root / METADATA_FILE).read_text())
        version = meta["format_version"]
        info = ExportInfo(
            str(meta["model_version"]), int(meta["n_items"]), int(meta["state_size"]), meta
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{root / METADATA_FILE} is unreadable or incomplete: {err}") from err
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{root / METADATA_FILE}: export format {version} is not {FORMAT_VERSION}, the one "
            "this service reads; re-export the model with this version of the project"
        )
    return info


def _read_items(path: Path, n_items: int) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")  # no newline translation: ids are verbatim
    except UnicodeDecodeError as err:
        raise ModelLoadError(f"{path}: not UTF-8 text ({err})") from err
    # split on "\n" only: str.splitlines would also split ids at form feeds and the like
    items = text.removesuffix("\n").split("\n") if text else []
    if len(items) != n_items or len(set(items)) != n_items:
        raise ModelLoadError(
            f"{path}: expected {n_items} distinct item ids, one a line, found {len(items)} "
            f"lines ({len(set(items))} distinct)"
        )
    return items


def _read_popularity(path: Path, n_items: int) -> np.ndarray:
    try:
        popularity = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ModelLoadError(f"{path}: not a numpy array file ({err})") from err
    if popularity.shape != (n_items,) or popularity.dtype.kind not in "iu":
        raise ModelLoadError(
            f"{path}: expected ({n_items},) integer click counts, found {popularity.shape} "
            f"{popularity.dtype}"
        )
    return popularity.astype(np.int64)
