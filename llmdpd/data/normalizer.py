"""Observation normalisation statistics from the training data."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ObservationNormalizer:
    """Per-dimension mean/std; constant dimensions get std 1 so they map to 0 rather than blowing up."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, observations: torch.Tensor, min_std: float = 1e-6) -> "ObservationNormalizer":
        obs = observations.double()
        mean = obs.mean(0)
        std = obs.std(0, unbiased=False)
        std = torch.where(std < min_std, torch.ones_like(std), std)
        return cls(mean.float(), std.float())

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean.to(obs.device)) / self.std.to(obs.device)

    def to(self, device: torch.device | str) -> "ObservationNormalizer":
        return ObservationNormalizer(self.mean.to(device), self.std.to(device))
