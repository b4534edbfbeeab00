"""The policy's condition c = [z_text; z_traj] (the method's item 3 in the README), with learned null vectors.

A disabled prompt (ablation) always contributes its null vector, so the condition width is the same for
every ablation and checkpoints of different methods share one architecture. During training each prompt is
replaced by its null vector independently with probability `dropout`; the all-null condition is the
unconditional model that classifier-free guidance contrasts with.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class PromptConditioning(nn.Module):
    """Concatenates the two prompt embeddings, substituting learned null vectors where a prompt is disabled,
    missing, or dropped."""

    def __init__(
        self, text_dim: int, trajectory_dim: int, text_enabled: bool, trajectory_enabled: bool, dropout: float
    ) -> None:
        super().__init__()
        self.text_enabled = text_enabled
        self.trajectory_enabled = trajectory_enabled
        self.dropout = dropout
        self.null_text = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.null_trajectory = nn.Parameter(torch.randn(trajectory_dim) * 0.02)

    @property
    def cond_dim(self) -> int:
        return self.null_text.numel() + self.null_trajectory.numel()

    def _part(self, z: Optional[Tensor], null: Tensor, enabled: bool, n: int, drop: bool) -> Tensor:
        if z is None or not enabled:
            return null.expand(n, -1)
        if drop:
            # torch.where keeps both z and the null vector in the graph whatever the draw (even with
            # dropout 0), so every training step sends gradients to the same parameters, as DDP requires.
            dropped = torch.rand(n, 1, device=z.device) < self.dropout
            return torch.where(dropped, null.to(z.dtype), z)
        return z

    def forward(self, z_text: Optional[Tensor], z_trajectory: Optional[Tensor], n: int, drop: bool = False) -> Tensor:
        """[n, text_dim] and [n, trajectory_dim] (either may be None) -> c [n, cond_dim]."""
        text = self._part(z_text, self.null_text, self.text_enabled, n, drop)
        trajectory = self._part(z_trajectory, self.null_trajectory, self.trajectory_enabled, n, drop)
        dtype = torch.promote_types(text.dtype, trajectory.dtype)
        return torch.cat([text.to(dtype), trajectory.to(dtype)], -1)

    def null(self, n: int = 1) -> Tensor:
        """The all-null (unconditional) condition, [n, cond_dim]."""
        return self.forward(None, None, n)
