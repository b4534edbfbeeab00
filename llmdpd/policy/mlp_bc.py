"""Deterministic MLP behaviour-cloning actor: the plain baseline (`policy.kind: mlp_bc`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmdpd.policy.diffusion import mlp


class MLPActor(nn.Module):
    """a = tanh(MLP([s; c])), trained by MSE to the dataset actions.

    Offers the diffusion actor's `loss` / `sample` interface; `sample` ignores guidance (there is no
    unconditional model to guide with) and noise (it draws none).
    """

    def __init__(self, obs_dim: int, action_dim: int, cond_dim: int, hidden_dim: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.net = mlp(obs_dim + cond_dim, hidden_dim, layers, action_dim)

    def forward(self, obs: Tensor, cond: Tensor) -> Tensor:
        dtype = self.net[0].weight.dtype
        return torch.tanh(self.net(torch.cat([obs.to(dtype), cond.to(dtype)], -1)))

    def loss(self, action: Tensor, obs: Tensor, cond: Tensor) -> Tensor:
        return F.mse_loss(self(obs, cond).float(), action.float())

    def loss_and_prediction(self, action: Tensor, obs: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Squared error per sample [n, 1] and the predicted action [n, A]."""
        predicted = self(obs, cond)
        return (predicted.float() - action.float()).pow(2).mean(-1, keepdim=True), predicted

    def sample(
        self,
        obs: Tensor,
        cond: Tensor,
        guidance_weight: float = 1.0,
        null_cond: Optional[Tensor] = None,
        temperature: float = 1.0,
        calls: int = 0,
        noise: Optional[Tensor] = None,
    ) -> Tensor:
        return self(obs, cond)
