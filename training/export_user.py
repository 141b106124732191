"""The user step graph of an HRNN export (user.onnx), written beside the session step graph.

    python -m training export --model runs/hrnn --out runs/hrnn/export   # writes user.onnx too

Between two sessions of a user the HRNN steps its user GRU once with the finished session's
final state and starts the next session from the result (training/models/hrnn.py, `hand_over`):
    user_state (B, U) float32, state (B, S) float32
 -> new_user_state (B, U), start_state (B, S)
where state is model.onnx's state (the session layers' states, then the user state: HRNN
carries c_m as its last block, unchanged by session steps) and start_state is the state the
user's next session starts from: tanh(W_init c + b_init) in layer 1, zeros in the deeper
layers, c in the user block. The user block of the `state` input is ignored (the user_state
input is what the user GRU reads), so a session computed from a zero state (a replica that
never knew the user) still hands over to the right user state. B is dynamic.

model.onnx keeps its interface: a service that ignores user.onnx serves an HRNN as a session
model (its users always start from zero).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .models.hrnn import HRNN

# --- the user graph's names (service/runtime.py reads them) ---
USER_FILE = "user.onnx"
INPUT_USER_STATE, INPUT_FINAL_STATE = "user_state", "state"
OUTPUT_USER_STATE, OUTPUT_START_STATE = "new_user_state", "start_state"


class UserStepGraph(nn.Module):
    """HRNN.hand_over for every row, with the states as single tensors."""

    def __init__(self, model: HRNN):
        super().__init__()
        self.model = model
        self.sizes = model.hidden_sizes()  # [*session layers, U]

    def forward(self, user: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *session, _ = torch.split(state, self.sizes, dim=1)  # the state's own user block unused
        every_row = torch.ones_like(user[:, 0], dtype=torch.bool)  # (B,)
        hidden = self.model.hand_over([*session, user], every_row, None)
        return hidden[-1], torch.cat(hidden, dim=1)  # (B, U), (B, S)


def user_graph(model: nn.Module, opset: int, max_ir_version: int) -> onnx.ModelProto | None:
    """user.onnx for an HRNN; None for a model without a user GRU."""
    if not isinstance(model, HRNN):
        return None
    step = UserStepGraph(model).eval()
    user = torch.zeros(2, model.user_size)  # batch 2: a 1 would be specialised
    state = torch.zeros(2, sum(step.sizes))
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        path = Path(tmp) / USER_FILE
        with redirect_stdout(io.StringIO()):  # the exporter narrates its passes
            torch.onnx.export(
                step,
                (user, state),
                path,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_USER_STATE, INPUT_FINAL_STATE],
                output_names=[OUTPUT_USER_STATE, OUTPUT_START_STATE],
                dynamic_shapes={"user": {0: batch}, "state": {0: batch}},
            )
        graph = onnx.load(path)  # weights inline
    graph.ir_version = min(graph.ir_version, max_ir_version)
    onnx.checker.check_model(graph, full_check=True)
    return graph


def user_metadata(model: nn.Module) -> dict[str, Any] | None:
    """metadata.json's "user_graph" entry: the file and its sizes; None without one."""
    if not isinstance(model, HRNN):
        return None
    return {
        "file": USER_FILE,
        "user_size": model.user_size,
        "propagation": "all" if model.propagate_all else "init",
        "inputs": [INPUT_USER_STATE, INPUT_FINAL_STATE],
        "outputs": [OUTPUT_USER_STATE, OUTPUT_START_STATE],
    }
