"""Parameter averaging for target critics (soft update) and the EMA policy."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter (an EMA with decay 1 - tau)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s.to(t.dtype), tau)


@torch.no_grad()
def copy_parameters_(target: nn.Module, source: nn.Module) -> None:
    """target <- source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.copy_(s)
