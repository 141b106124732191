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
  prefix.onnx     inputs  items (T, B) int64, mask (T, B) bool, state (B, S) float32;
                  output  new_state (B, S) float32: column b's clicks at the rows where
                          mask is true, fed in time order (false rows leave it unchanged).
                  Optional: older exports, and models it cannot express, lack it.
  user.onnx       HRNN exports only (metadata.json "user_graph"): inputs user_state (B, U),
                  state (B, S) float32; outputs new_user_state (B, U) and start_state (B, S),
                  the state the user's next session starts from (training/export_user.py).
  items.txt       the N item ids, one a line, in index order.
  popularity.npy  (N,) int64 training click counts, for the popularity fallback.
  metadata.json   format_version, model_version, config, training data and evaluation.
This module imports neither torch nor the training package, so the serving image needs
neither.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
PREFIX_FILE = "prefix.onnx"
ITEMS_FILE = "items.txt"
POPULARITY_FILE = "popularity.npy"
METADATA_FILE = "metadata.json"
# graph input and output names, shared with training/export.py
INPUT_ITEMS, INPUT_STATE, INPUT_K = "items", "state", "k"
INPUT_MASK = "mask"  # prefix.onnx only
OUTPUT_SCORES, OUTPUT_STATE = "scores", "new_state"
OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS = "top_scores", "top_items"
USER_FILE = "user.onnx"  # and its names, shared with training/export_user.py
INPUT_USER_STATE, INPUT_FINAL_STATE = "user_state", "state"
OUTPUT_USER_STATE, OUTPUT_START_STATE = "new_user_state", "start_state"

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
        prefix: ort.InferenceSession | None = None,
        user: ort.InferenceSession | None = None,
    ):
        self.session = session
        self.prefix = prefix  # prefix.onnx, None for exports without it
        self.user = user  # user.onnx (HRNN), None for session models
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

    @property
    def has_prefix_graph(self) -> bool:
        """Whether advance_many runs prefix.onnx (else one step graph run per click)."""
        return self.prefix is not None

    @property
    def has_user_graph(self) -> bool:
        """Whether the model carries a user state across a user's sessions (HRNN)."""
        return self.user is not None

    @property
    def user_size(self) -> int:
        """U, the user state's width; 0 without a user graph."""
        return int((self.info.raw.get("user_graph") or {}).get("user_size", 0))

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
        session = _session(root / MODEL_FILE, options, providers)
        prefix = None
        if (root / PREFIX_FILE).is_file():
            prefix = _session(root / PREFIX_FILE, options, providers)
        user = _user_session(root, info, options, providers)
        got = session.get_providers()[0]
        if device == "cuda" and got != CUDA:
            raise ModelLoadError(
                "device=cuda was asked for but onnxruntime could not start its CUDA provider "
                "(CUDA or cuDNN libraries missing?); see the log above, or use --device auto"
            )
        if providers[0] == CUDA and got != CUDA:
            log.warning("a CUDA device is present but onnxruntime could not use it; on CPU")
        model = cls(session, item_ids, popularity, info, prefix, user)
        _check_integrity(root, model)
        log.info(
            "model %s: %d items, state %d, onnxruntime %s on %s, %s",
            info.model_version,
            info.n_items,
            info.state_size,
            ort.__version__,
            got,
            "prefix graph" if prefix is not None else f"no {PREFIX_FILE}: prefixes step by step",
        )
        return model

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

    def step(
        self, items: np.ndarray, state: np.ndarray, k: int, with_scores: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One click per row -> (top scores (B, k'), top items (B, k'), new state (B, S),
        the full scores (B, N) when with_scores else None), in one graph run."""
        k = max(1, min(k, self.n_items))
        outputs = [OUTPUT_TOP_SCORES, OUTPUT_TOP_ITEMS, OUTPUT_STATE]
        if with_scores:
            outputs.append(OUTPUT_SCORES)
        got = self._run(outputs, items, state, k)
        return got[0], got[1], got[2], (got[3] if with_scores else None)

    def end_session(
        self, user_state: np.ndarray, final_state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A user's session ended: user_state (B, U) and the session's last state (B, S) ->
        (the new user state (B, U), the state the user's next session starts from (B, S)).
        Only for models with a user graph (has_user_graph)."""
        assert self.user is not None, "no user graph: check has_user_graph"
        feeds = {
            INPUT_USER_STATE: np.ascontiguousarray(user_state, dtype=np.float32),
            INPUT_FINAL_STATE: np.ascontiguousarray(final_state, dtype=np.float32),
        }
        new_user, start = self.user.run([OUTPUT_USER_STATE, OUTPUT_START_STATE], feeds)
        return new_user, start

    def advance_many(self, sequences: Sequence[np.ndarray], state: np.ndarray) -> np.ndarray:
        """Feed each row its own clicks: sequences[b] (L_b,) int64 item indices in [0, N),
        oldest first, possibly empty; state (B, S) with B = len(sequences).

        Returns the new states (B, S) float32, a new array; row b is state[b] when L_b is 0.
        One prefix.onnx run for the whole batch, or, for exports without it, one `advance`
        per time step. Equal to feeding the clicks through `advance` one by one within
        float32 rounding, not bit for bit. Raises ValueError when B != len(sequences)."""
        state = np.ascontiguousarray(state, dtype=np.float32)
        if state.ndim != 2 or len(state) != len(sequences):
            raise ValueError(
                f"state {state.shape} must have one row per sequence ({len(sequences)})"
            )
        items, mask = _time_major(sequences)
        if len(items) == 0:  # no clicks at all: nothing to run
            return state.copy()
        if self.prefix is None:
            return self._advance_stepwise(items, mask, state)
        feeds = {INPUT_ITEMS: items, INPUT_MASK: mask, INPUT_STATE: state}
        return self.prefix.run([OUTPUT_STATE], feeds)[0]

    def _advance_stepwise(
        self, items: np.ndarray, mask: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """advance_many without prefix.onnx: items, mask (T, B), state (B, S)."""
        for t in range(len(items)):
            stepped = self.advance(items[t], state)
            state = np.where(mask[t][:, None], stepped, state)  # finished rows keep theirs
        return state

    def _run(self, outputs: list[str], items: np.ndarray, state: np.ndarray, k: int) -> list:
        feeds = {
            INPUT_ITEMS: np.ascontiguousarray(items, dtype=np.int64),
            INPUT_STATE: np.ascontiguousarray(state, dtype=np.float32),
            INPUT_K: np.array([k], dtype=np.int64),
        }
        return self.session.run(outputs, feeds)


def _time_major(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged sequences -> items (T, B) int64 and mask (T, B) bool, T = the longest length.

    Padding is item 0, a valid index, so the graph's lookups stay in range; the mask drops
    what it computes. Raises ValueError for a sequence that is not 1-D."""
    rows = [np.asarray(s, dtype=np.int64) for s in sequences]
    if any(r.ndim != 1 for r in rows):
        raise ValueError("each sequence must be a 1-D array of item indices")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    mask = np.arange(lengths.max(initial=0))[:, None] < lengths  # (T, B)
    items = np.zeros(mask.shape, dtype=np.int64)
    if rows:
        # through the transposed views, boolean assignment walks row by row: b, then t
        items.T[mask.T] = np.concatenate(rows)
    return items, mask


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own unrelated exception types
        raise ModelLoadError(
            f"{path}: onnxruntime {ort.__version__} cannot load it ({err}); "
            "re-export it with this project's `python -m training export`"
        ) from err


def _user_session(
    root: Path, info: ExportInfo, options: ort.SessionOptions, providers: list[str]
) -> ort.InferenceSession | None:
    """user.onnx when metadata.json names one (HRNN); ModelLoadError when it is missing."""
    entry = info.raw.get("user_graph")
    if not entry:
        return None
    path = root / str(entry.get("file", USER_FILE))
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; {METADATA_FILE} says the model has a user graph")
    return _session(path, options, providers)


def _check_user_graph(root: Path, model: ExportedModel) -> None:
    """The user graph must map (1, U), (1, S) to (1, U), (1, S)."""
    if model.user is None:
        return
    u, s = model.user_size, model.state_size
    try:
        user, start = model.end_session(np.zeros((1, u), np.float32), model.zero_state(1))
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"{root / USER_FILE}: cannot run it on a user of {u} ({err})") from err
    if user.shape != (1, u) or start.shape != (1, s):
        raise ModelLoadError(
            f"{root / USER_FILE}: it returns states {user.shape} and {start.shape}, but "
            f"{METADATA_FILE} says a user state of {u} and a session state of {s}"
        )


def _check_integrity(root: Path, model: ExportedModel) -> None:
    """Refuse an export whose files were not written together: each file's sha256 must be
    the one metadata.json recorded at export (`files`, and `onnx.sha256` for model.onnx),
    and the graph must score exactly the items of items.txt. A graph of another size beside
    the right lists would answer with wrong ids or fail on every call that reaches past it."""
    recorded = {MODEL_FILE: (model.info.raw.get("onnx") or {}).get("sha256")}
    recorded.update(model.info.raw.get("files") or {})
    for name, digest in recorded.items():
        path = root / name
        if digest is None or not path.is_file():
            continue
        if _sha256(path) != digest:
            raise ModelLoadError(
                f"{path}: its sha256 is not the one {METADATA_FILE} recorded at export; the "
                "directory mixes files of different exports: export the model again into an "
                "empty directory"
            )
    last = np.array([model.n_items - 1], dtype=np.int64)
    try:
        scores, state = model.scores(last, model.zero_state(1))
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelLoadError(
            f"{root / MODEL_FILE}: the graph cannot score item {model.n_items - 1}, the last of "
            f"the {model.n_items} in {ITEMS_FILE} ({err}); the graph and the lists come from "
            "different exports"
        ) from err
    if scores.shape != (1, model.n_items) or state.shape != (1, model.state_size):
        raise ModelLoadError(
            f"{root / MODEL_FILE}: the graph scores {scores.shape[-1]} items with a state of "
            f"{state.shape[-1]}, but {ITEMS_FILE} and {METADATA_FILE} say {model.n_items} items "
            f"and {model.state_size}; the graph and the lists come from different exports"
        )
    _check_user_graph(root, model)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    unreadable = [name for name in (MODEL_FILE, ITEMS_FILE, POPULARITY_FILE, METADATA_FILE)
                  if not os.access(root / name, os.R_OK)]  # fmt: skip
    if unreadable:
        raise ModelLoadError(
            f"{root}: this server (uid {os.getuid()}) may not read {', '.join(unreadable)} "
            "(permission denied); make the export readable to it (chmod a+r) and it is loaded "
            "at the next poll"
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
