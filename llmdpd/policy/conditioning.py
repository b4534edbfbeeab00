"""The policy's condition c = [z_text; z_traj] (the method's item 3 in the README), with learned null vectors.

A disabled prompt (ablation) always contributes its null vector, so the condition width is the same for
every ablation and checkpoints of different methods share one architecture. During training each prompt is
replaced by its null vector independently with probability `dropout`; the all-null condition is the
unconditional model that classifier-free guidance contrasts with.

With per-state reading of the demonstration (`trajectory.read: per_state`) the task-level condition also
carries the demonstration's H step tokens, flattened (zeros where the trajectory prompt is null), and
`DemonstrationReader` turns them into one vector per state before the networks see c.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class PromptConditioning(nn.Module):
    """Concatenates the two prompt embeddings, substituting learned null vectors where a prompt is disabled,
    missing, or dropped; with `step_tokens` > 0 appends the trajectory prompt's step tokens, flattened."""

    def __init__(
        self,
        text_dim: int,
        trajectory_dim: int,
        text_enabled: bool,
        trajectory_enabled: bool,
        dropout: float,
        step_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.text_enabled = text_enabled
        self.trajectory_enabled = trajectory_enabled
        self.dropout = dropout
        self.step_tokens = step_tokens
        self.null_text = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.null_trajectory = nn.Parameter(torch.randn(trajectory_dim) * 0.02)

    @property
    def pooled_dim(self) -> int:
        """Width of [z_text; z_traj], the part of c every network reads as it is."""
        return self.null_text.numel() + self.null_trajectory.numel()

    @property
    def cond_dim(self) -> int:
        """Width of the task-level condition: [z_text; z_traj] plus the flattened step tokens, if any."""
        return self.pooled_dim + self.step_tokens * self.null_trajectory.numel()

    def _keep(self, z: Optional[Tensor], enabled: bool, n: int, drop: bool) -> Optional[Tensor]:
        """[n, 1] True where the prompt is used; None where it is never used (missing or disabled)."""
        if z is None or not enabled:
            return None
        if drop:
            return torch.rand(n, 1, device=z.device) >= self.dropout
        return torch.ones(n, 1, dtype=torch.bool, device=z.device)

    def forward(
        self,
        z_text: Optional[Tensor],
        z_trajectory: Optional[Tensor],
        n: int,
        drop: bool = False,
        trajectory_steps: Optional[Tensor] = None,
    ) -> Tensor:
        """[n, text_dim] and [n, trajectory_dim] (either may be None), and with step tokens the trajectory
        prompt's [n, H, trajectory_dim] -> c [n, cond_dim]."""
        parts = []
        # Text first: the order of the dropout draws is part of a seed's random stream.
        keep_text = self._keep(z_text, self.text_enabled, n, drop)
        keep_trajectory = self._keep(z_trajectory, self.trajectory_enabled, n, drop)
        for z, null, keep in ((z_text, self.null_text, keep_text), (z_trajectory, self.null_trajectory, keep_trajectory)):
            # torch.where keeps both z and the null vector in the graph whatever the draw (even with
            # dropout 0), so every training step sends gradients to the same parameters, as DDP requires.
            parts.append(null.expand(n, -1) if keep is None else torch.where(keep, z, null.to(z.dtype)))
        if self.step_tokens:
            width = self.step_tokens * self.null_trajectory.numel()
            if keep_trajectory is None or trajectory_steps is None:
                parts.append(self.null_trajectory.new_zeros(n, width))
            else:
                flat = trajectory_steps.reshape(n, width)
                parts.append(torch.where(keep_trajectory, flat, torch.zeros_like(flat)))
        dtype = parts[0].dtype
        for part in parts[1:]:
            dtype = torch.promote_types(dtype, part.dtype)
        return torch.cat([part.to(dtype) for part in parts], -1)

    def null(self, n: int = 1) -> Tensor:
        """The all-null (unconditional) condition, [n, cond_dim]."""
        return self.forward(None, None, n)
