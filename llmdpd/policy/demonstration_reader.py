"""Per-state reading of the demonstration (`trajectory.read: per_state`).

The pooled trajectory prompt is one vector per task: it can say which behaviour to call up, not what the
demonstration did near the state the agent is in. One-shot imitation (Duan et al., 2017) reads the
demonstration at every step instead: the current state attends over the demonstration's step tokens and
the result joins the condition. For an unseen task that is the only route from its demonstration's actions to
the agent's, where the pooled vector can only land near a training task's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DemonstrationReader(nn.Module):
    """r(s) = LayerNorm(MultiheadAttention(q = W s, k = v = step tokens)): one [width] vector per state.

    The task-level condition is [z_text; z_traj; H step tokens flattened] (`PromptConditioning` with
    `step_tokens`); `forward` replaces the tokens by the read, so the networks see [z_text; z_traj; r(s)].
    """

    def __init__(self, obs_dim: int, pooled_dim: int, width: int, steps: int, heads: int) -> None:
        super().__init__()
        self.pooled_dim, self.width, self.steps = pooled_dim, width, steps
        self.query = nn.Linear(obs_dim, width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    @property
    def out_dim(self) -> int:
        """Width of the condition the networks see."""
        return self.pooled_dim + self.width

    def forward(self, state: Tensor, cond: Tensor) -> Tensor:
        """Normalised states [n, S] and task-level conditions [n, pooled + H * width] -> [n, pooled + width]."""
        pooled, flat = cond[:, : self.pooled_dim], cond[:, self.pooled_dim :]
        tokens = flat.reshape(cond.shape[0], self.steps, self.width)
        query = self.query(state.to(tokens.dtype))[:, None]
        read, _ = self.attention(query, tokens, tokens, need_weights=False)
        return torch.cat([pooled, self.norm(read[:, 0]).to(pooled.dtype)], -1)
