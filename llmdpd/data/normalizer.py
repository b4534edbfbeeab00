"""The one normaliser of the project: observation mean/std fitted from the training data once, and the reward
scale. The DataModule fits it (and normalises the stored transitions and prompts with it once, so sampling is
pure indexing); the policy module owns its statistics as buffers, so every checkpoint carries them, and
evaluation takes the normaliser from the checkpoint (`PolicyDiffusionModule.normalizer`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from llmdpd.data import keys as K


class Normalizer:
    """Per-dimension observation mean/std (constant dimensions get std 1, so they map to 0 rather than blowing
    up) and the reward scale, applied to observations, transitions and trajectory prompts."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, reward_scale: float | torch.Tensor = 1.0) -> None:
        self.mean = mean
        self.std = std
        self.reward_scale = reward_scale

    @classmethod
    def fit(cls, observations: torch.Tensor, reward_scale: float = 1.0, min_std: float = 1e-6) -> "Normalizer":
        """Statistics of `observations` [T, S] (computed in float64)."""
        obs = observations.double()
        mean = obs.mean(0)
        std = obs.std(0, unbiased=False)
        std = torch.where(std < min_std, torch.ones_like(std), std)
        return cls(mean.float(), std.float(), float(reward_scale))

    # ------------------------------------------------------------------------------------------ applying
    def obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Normalised observations [..., S]."""
        return (obs - self.mean.to(obs.device, obs.dtype)) / self.std.to(obs.device, obs.dtype)

    __call__ = obs

    def reward(self, reward: torch.Tensor) -> torch.Tensor:
        """Scaled rewards."""
        scale = self.reward_scale
        return reward * (scale.to(reward.device, reward.dtype) if isinstance(scale, torch.Tensor) else scale)

    def transitions(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """`obs`, `next_obs` and `reward` of raw transitions normalised (other keys unchanged)."""
        out = dict(data.items())
        for key in (K.OBS, K.NEXT_OBS):
            if key in out:
                out[key] = self.obs(out[key])
        if K.REWARD in out:
            out[K.REWARD] = self.reward(out[K.REWARD])
        return out

    def prompt(self, prompt: Mapping[str, Any]) -> dict[str, Any]:
        """`prompt_obs` and `prompt_reward` of a raw trajectory prompt normalised (other keys unchanged)."""
        out = {key: prompt[key] for key in prompt.keys()}
        out[K.PROMPT_OBS] = self.obs(out[K.PROMPT_OBS].float())
        out[K.PROMPT_REWARD] = self.reward(out[K.PROMPT_REWARD])
        return out

    def to(self, device: torch.device | str) -> "Normalizer":
        scale = self.reward_scale.to(device) if isinstance(self.reward_scale, torch.Tensor) else self.reward_scale
        return Normalizer(self.mean.to(device), self.std.to(device), scale)


# The earlier name (observations only; the reward scale defaults to 1).
ObservationNormalizer = Normalizer
