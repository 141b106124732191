"""Training configuration: one frozen dataclass whose field names and defaults are the
reference GRU4Rec's (hidasib/GRU4Rec_PyTorch_Official), so its parameter files carry over.

    cfg = Config.from_sources(config_file="rsc15.json", params=["loss=bpr-max", "layers=100/100"])
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
OPTIMIZERS = ("adagrad", "adam")
DEVICES = ("auto", "cpu", "cuda")  # or "cuda:N"
ARCHITECTURES = ("id", "feature", "concat", "parallel", "hrnn")
STRATEGIES = ("simultaneous", "alternating", "residual", "interleaving")  # p-RNN's
BLOOM_ON = ("input", "output", "both")
PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Config:
    # --- the reference implementation's hyperparameters, same names and defaults ---
    loss: str = "cross-entropy"
    layers: tuple[int, ...] = (100,)
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048  # extra negatives per mini-batch, shared by all its examples
    sample_alpha: float = 0.5  # negatives drawn proportional to popularity**sample_alpha
    bpreg: float = 1.0  # score regularisation of BPR-max (Top-k gains paper, eq. 11)
    logq: float = 0.0  # weight of the log-popularity correction of cross-entropy
    constrained_embedding: bool = True  # input embedding shared with the output weights
    embedding: int = 0  # size of a separate input embedding; 0 = one-hot input
    elu_param: float = 0.5  # alpha of the ELU final activation of the *-max losses; 0 = linear
    n_epochs: int = 10
    # --- ours ---
    optimizer: str = "adagrad"  # "adagrad": the reference's Adagrad with momentum; "adam"
    sample_store_size: int = 10_000_000  # negatives drawn in one go, as the reference's cache
    seed: int = 42
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # CPU intra-op threads; 0 = what the cgroup CPU quota and the affinity mask allow, and 1
    # up to 2 CPUs (training/fit/threads.py): a step's matrices are small, and waiting for a
    # descheduled thread costs more than a second thread adds.
    threads: int = 0
    # On CUDA, replay GRU4Rec's full-size training steps as one CUDA graph (training/fit/graphed.py)
    cuda_graph: bool = True
    # --- Bloom-filter compression (Serra & Karatzoglou 2017); 0 bits = off ---
    bloom_bits: float = 0.0  # m; a value up to 1 is a ratio of the item count
    bloom_hashes: int = 3  # k
    bloom_on: str = "both"  # "input", "output" or "both"
    # an item's k rows are summed times 1/k, the rows starting k times larger: the paper's
    # model at the start, but each optimiser step moves an item as far as one table row
    # (not k rows); False = the paper's plain sum, which loses accuracy (docs/bloom.md)
    bloom_item_step: bool = True
    # --- p-RNN image features (Hidasi et al. 2016); "" = ID-only ---
    architecture: str = "id"  # "id", "feature", "concat", "parallel"; "hrnn" (below)
    strategy: str = "simultaneous"  # "simultaneous", "alternating", "residual", "interleaving"
    features: str = ""  # path to a .npy of per-item features in vocabulary order
    feature_layers: tuple[int, ...] = field(default=(100,))
    # --- HRNN (Quadrana et al. 2017), architecture="hrnn": a user-level GRU over sessions ---
    user_layer: int = 100  # units of the user GRU, one layer (the paper: 100 like the session's)
    # "init": the user state initialises the next session; "all": it is also a GRU input at
    # every step of that session (the paper's HRNN All)
    user_propagation: str = "init"
    dropout_p_user: float = 0.0  # on the user GRU's output; the reference's default (tuned per set)
    dropout_p_init: float = 0.0  # on the session initialisation tanh(W_init c + b_init)

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss={self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if not self.layers or any(n <= 0 for n in self.layers):
            problems.append(f"layers={self.layers} must be positive sizes, e.g. layers=100/100")
        if self.batch_size <= 0:
            problems.append(f"batch_size={self.batch_size} must be positive")
        if self.n_sample < 0 or self.embedding < 0 or self.n_epochs < 0:
            problems.append("n_sample, embedding and n_epochs must not be negative")
        if self.user_propagation not in ("init", "all") or self.user_layer <= 0:
            problems.append("user_propagation must be init or all, user_layer positive")
        for name in ("dropout_p_embed", "dropout_p_hidden", "dropout_p_user", "dropout_p_init"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):  # NaN too
            problems.append(f"learning_rate={self.learning_rate} must be a positive number")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"momentum={self.momentum} must be in [0, 1)")
        for name in ("sample_alpha", "bpreg", "logq", "elu_param", "bloom_bits"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                problems.append(f"{name}={value} must be a number >= 0")
        if self.bloom_hashes < 1 or self.threads < 0 or self.sample_store_size < 0:
            problems.append("bloom_hashes must be >= 1, threads and sample_store_size >= 0")
        if self.batch_size == 1 and self.n_sample == 0:
            problems.append(
                "batch_size=1 with n_sample=0 leaves no negative for any example (nothing "
                "trains); raise batch_size or n_sample"
            )
        for name, allowed in (("device", DEVICES), ("architecture", ARCHITECTURES),
                              ("strategy", STRATEGIES), ("bloom_on", BLOOM_ON)):  # fmt: skip
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and value.startswith("cuda:")):
                problems.append(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        typed = {k: _coerce(known[k], v) for k, v in values.items() if k != "embedding"}
        if "embedding" in values:
            typed["embedding"] = _embedding_size(values["embedding"], typed, known)
        return cls(**typed)

    @classmethod
    def from_sources(
        cls, config_file: str | Path | None = None, params: list[str] | None = None
    ) -> Config:
        """A config file (JSON, TOML, a preset name or a reference `paramfiles/*.py`),
        then `name=value` overrides, on top of the defaults."""
        values: dict[str, Any] = {}
        if config_file:
            values.update(read_config_file(config_file))
        for item in params or []:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--param {item!r} must look like name=value, e.g. loss=bpr-max")
            values[name.strip()] = value.strip()
        return cls.from_dict(values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parameters in a file, a preset, or a model directory (its config.json)."""
    path = Path(path)
    if not path.exists() and (PRESETS_DIR / f"{path}.json").exists():
        path = PRESETS_DIR / f"{path}.json"
    if path.is_dir():  # a model directory
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a directory without config.json; give a config file, a preset "
                "name or a model directory"
            )
        path = path / "config.json"
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        raise FileNotFoundError(f"config file {path} not found (presets: {presets})")
    text = path.read_text()
    if path.suffix == ".json":
        values = dict(json.loads(text))
        if "format_version" not in values:
            return values
        # a model's config.json (save_model) holds its parameters under "config"
        if not isinstance(values.get("config"), dict):
            raise ValueError(
                f'{path} has a "format_version" but no "config" of parameters; give a '
                "model's config.json or a JSON file of parameters"
            )
        # models from before bloom_item_step summed Bloom rows plainly, as load_model reads them
        return {"bloom_item_step": False, **values["config"]}
    if path.suffix == ".toml":
        return dict(tomllib.loads(text))
    if path.suffix == ".py":
        return _read_reference_paramfile(path, text)
    raise ValueError(f"{path}: unsupported config format; use .json, .toml or a reference .py")


def _read_reference_paramfile(path: Path, text: str) -> dict[str, Any]:
    """The reference's files hold `gru4rec_params = OrderedDict([(name, value), ...])`;
    read the literal pairs without executing the file."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and node.args:
            try:
                return dict(ast.literal_eval(node.args[0]))
            except ValueError:
                continue
    raise ValueError(f"{path}: no OrderedDict([(name, value), ...]) of parameters found")


def _embedding_size(value: Any, typed: dict[str, Any], known: dict[str, Any]) -> int:
    """embedding='layersize' is the reference's way of saying "as wide as the first layer"."""
    if isinstance(value, str) and value.strip().lower() == "layersize":
        return typed.get("layers", Config.layers)[0]
    return _coerce(known["embedding"], value)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a value from the CLI or a file into the field's type, with a clear error."""
    kind = str(f.type)
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(int(v) for v in value.replace(",", "/").split("/") if v)
            if isinstance(value, int):
                return (value,)
            return tuple(int(v) for v in value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {f.name}={value!r} is not a valid {kind}") from None
