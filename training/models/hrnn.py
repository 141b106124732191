"""HRNN: a user-level GRU across a user's sessions (Quadrana, Karatzoglou, Hidasi and
Cremonesi, "Personalizing Session-based Recommendations with Hierarchical Recurrent Neural
Networks", RecSys 2017).

The session GRU is GRU4Rec's (same input modes, output layer and losses). Between two
sessions of a user (section 3.2 of the paper):

    c_m       = GRU_usr(s_m, c_{m-1})            s_m: the final state of session m (top layer)
    s_{m+1,0} = tanh(W_init c_m + b_init)        the next session's initial state (layer 1)

and with user_propagation="all" c_m is also an input of the first session layer at every
step of session m + 1 (its gates get W_u c_m added). A user's first session starts from zero
session and user states, so a user without history gets the plain session GRU's answer.

    model = HRNN(n_items, Config(architecture="hrnn"))
    hidden = model.init_hidden(B)                      # [*session layers, user state]
    hidden = model.hand_over(hidden, new_session, new_user, last_click)  # masks or None
    scores, hidden = model(items, hidden, targets)     # as any SessionModel

s_m is the state after the session's *last* click, as the service hands it over (it runs
every click it is sent). In user-parallel training and evaluation the last click is only a
target, so hand_over reads it first (last_click); the exported user step gets the final
state directly.

The hidden list carries the user state as its last entry, so code written for session models
(evaluate.GRUScorer, which resets everything per session) runs an HRNN as a user-less model.
Dropout as in the reference (mquad/hgru4rec): on session layer outputs (dropout_p_hidden), on
the user GRU output (dropout_p_user) and on the initialisation (dropout_p_init). Weights are
Glorot-uniform and biases zero, as there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from .gru import (
    Dropout,
    SessionModel,
    glorot_uniform_,
    gru_cells,
    gru_update,
    init_gate_blocks_,
    run_cells,
    stack_shapes,
)
from .gru4rec import gather_rows, output_scores


class HRNN(SessionModel):
    def __init__(self, n_items: int, cfg: Config):
        super().__init__()
        self.n_items = n_items
        self.layers = tuple(cfg.layers)
        self.user_size = cfg.user_layer
        self.propagate_all = cfg.user_propagation == "all"
        self.constrained = cfg.constrained_embedding
        self.embedding_size = 0 if self.constrained else cfg.embedding
        self.one_hot = not self.constrained and self.embedding_size == 0
        first, last = self.layers[0], self.layers[-1]
        self.Wy = nn.Embedding(n_items, last, sparse=True)  # output item vectors
        self.By = nn.Embedding(n_items, 1, sparse=True)  # output item bias
        glorot_uniform_(self.Wy.weight, n_items, last)
        nn.init.zeros_(self.By.weight)
        if self.embedding_size:
            self.E = nn.Embedding(n_items, self.embedding_size, sparse=True)
            glorot_uniform_(self.E.weight, n_items, self.embedding_size)
        n_input = n_items if self.one_hot else (last if self.constrained else self.embedding_size)
        if self.one_hot:  # rows of W_x, what a one-hot input times W_x reads
            self.input_gates = nn.Embedding(n_items, 3 * first, sparse=True)
            init_gate_blocks_(self.input_gates.weight, n_items, first, dim=1)
        else:
            self.weight_ih = nn.Parameter(torch.empty(3 * first, n_input))
            init_gate_blocks_(self.weight_ih, n_input, first)
        self.weight_hh = nn.Parameter(torch.empty(3 * first, first))
        init_gate_blocks_(self.weight_hh, first, first)
        self.bias = nn.Parameter(torch.zeros(3 * first))
        if self.propagate_all:  # W_u: the user state as a further input of layer 1
            self.user_to_gates = nn.Parameter(torch.empty(3 * first, self.user_size))
            init_gate_blocks_(self.user_to_gates, self.user_size, first)
        self.cells = gru_cells(stack_shapes(n_input, self.layers, skip_first=True))
        (self.user_cell,) = gru_cells([(last, self.user_size)])
        self.init_layer = nn.Linear(self.user_size, first)  # W_init, b_init
        glorot_uniform_(self.init_layer.weight, self.user_size, first)
        nn.init.zeros_(self.init_layer.bias)
        self.drop_embed = Dropout(cfg.dropout_p_embed)
        self.drop_hidden = Dropout(cfg.dropout_p_hidden)
        self.drop_user = Dropout(cfg.dropout_p_user)
        self.drop_init = Dropout(cfg.dropout_p_init)

    def hidden_sizes(self) -> list[int]:
        return [*self.layers, self.user_size]

    def hand_over(
        self,
        hidden: list[torch.Tensor],
        new_session: torch.Tensor | None,
        new_user: torch.Tensor | None,
        last_click: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Start the slots' next sessions. hidden: [*session layers (B, H_i), user (B, U)];
        new_session bool (B,): step the user GRU with the ended session's top-layer state and
        set layer 1 to tanh(W_init c + b_init), the deeper layers to zero; new_user bool (B,):
        zero every state. Either mask may be None (no such slot).

        last_click int64 (B,), with new_session: the ended sessions' last clicks, which the
        session GRU reads first (in the new_session rows) so that the user GRU gets the state
        after the whole session, as the service hands it over. None: `hidden` has read the
        whole session already (the exported user step). The final state is a constant of
        the user step (no gradient through it), as in the reference's training."""
        *session, user = hidden
        if new_session is not None:
            mask = new_session.to(user.device)[:, None]
            if last_click is not None:
                session = self._read_last_clicks(session, user, new_session, last_click)
            stepped = self.drop_user(self.user_cell(session[-1], user))  # c_m (B, U)
            start = self.drop_init(torch.tanh(self.init_layer(stepped)))  # s_{m+1,0} (B, H_1)
            user = torch.where(mask, stepped, user)
            session = [torch.where(mask, start, session[0])] + [
                h.masked_fill(mask, 0.0) for h in session[1:]
            ]
        if new_user is not None:
            mask = new_user.to(user.device)[:, None]
            session = [h.masked_fill(mask, 0.0) for h in session]
            user = user.masked_fill(mask, 0.0)
        return [*session, user]

    def _read_last_clicks(
        self,
        session: list[torch.Tensor],
        user: torch.Tensor,
        new_session: torch.Tensor,
        last_click: torch.Tensor,
    ) -> list[torch.Tensor]:
        """The session states after one more step on last_click in the new_session rows."""
        rows = torch.nonzero(new_session).flatten().to(user.device)
        with torch.no_grad():
            inputs = last_click.to(user.device).index_select(0, rows)
            sub = [h.index_select(0, rows) for h in (*session, user)]
            _, _, read = self.step(inputs, sub)
        return [h.index_copy(0, rows, r) for h, r in zip(session, read[:-1], strict=True)]

    def forward(
        self,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """inputs int64 (B,); hidden [*session (B, H_i), user (B, U)]; targets int64 (M,) or
        None -> scores (B, M) or (B, n_items), and the new hidden (the user state unchanged:
        it moves only in hand_over)."""
        x, out_vectors, hidden = self.step(inputs, hidden, targets)
        return self.score(x, targets, out_vectors), hidden

    def step(
        self,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor],
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The session GRU's step without scoring: (top layer output (B, H_last), the targets'
        output vectors when gathered with the inputs (constrained embedding) else None, new
        hidden)."""
        *session, user = hidden
        gates, out_vectors = self._input_gates(inputs, targets)  # (B, 3 H_1)
        if self.propagate_all:
            gates = gates + user @ self.user_to_gates.T
        h0 = session[0]
        # as in GRU4Rec, the dropped-out outputs are the states the next step sees
        h1 = self.drop_hidden(gru_update(gates + self.bias, h0 @ self.weight_hh.T, h0))
        x, rest = run_cells(self.cells, h1, session[1:], self.drop_hidden)
        return x, out_vectors, [h1, *rest, user]

    def _input_gates(
        self, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first layer's input pre-activations (B, 3 H_1), and the targets' output
        vectors when they were gathered in the same lookup (one merged gradient for Wy)."""
        if self.one_hot:
            return gather_rows(self.input_gates, inputs), None
        out_vectors = None
        if not self.constrained:
            x = gather_rows(self.E, inputs)
        elif targets is None:
            x = self.Wy.weight.index_select(0, inputs)
        else:
            rows = gather_rows(self.Wy, torch.cat([inputs, targets]))
            x, out_vectors = rows.split([len(inputs), len(targets)])
        return self.drop_embed(x) @ self.weight_ih.T, out_vectors

    def score(
        self,
        h: torch.Tensor,
        targets: torch.Tensor | None = None,
        out_vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h: (B, layers[-1]) -> scores (B, M) for `targets`, or (B, n_items)."""
        return output_scores(self.Wy, self.By, h, targets, out_vectors)
