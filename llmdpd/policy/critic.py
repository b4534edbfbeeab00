"""Twin Q critics Q_j(s, c, a) and the state value V(s, c) of the expectile critic: Mish MLPs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmdpd.policy.diffusion import mlp


class TwinCritic(nn.Module):
    """Two Q networks over [s; c; a]; `forward` returns both [n, 1] estimates, `q_min` their minimum."""

    def __init__(self, obs_dim: int, action_dim: int, cond_dim: int, hidden_dim: int = 256, layers: int = 3) -> None:
        super().__init__()
        in_dim = obs_dim + cond_dim + action_dim
        self.q1 = mlp(in_dim, hidden_dim, layers, 1)
        self.q2 = mlp(in_dim, hidden_dim, layers, 1)

    def forward(self, obs: Tensor, cond: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        dtype = self.q1[0].weight.dtype
        x = torch.cat([obs.to(dtype), cond.to(dtype), action.to(dtype)], -1)
        return self.q1(x), self.q2(x)

    def q_min(self, obs: Tensor, cond: Tensor, action: Tensor) -> Tensor:
        q1, q2 = self(obs, cond, action)
        return torch.minimum(q1, q2)


class ValueNetwork(nn.Module):
    """V(s, c) [n, 1]: the expectile critic's in-sample state value."""

    def __init__(self, obs_dim: int, cond_dim: int, hidden_dim: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.net = mlp(obs_dim + cond_dim, hidden_dim, layers, 1)

    def forward(self, obs: Tensor, cond: Tensor) -> Tensor:
        dtype = self.net[0].weight.dtype
        return self.net(torch.cat([obs.to(dtype), cond.to(dtype)], -1))
