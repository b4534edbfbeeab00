"""A learned model of how Meta-World observations change under an action, shared by every task.

Only the parts whose meaning every task shares are modelled: the hand's position, the gripper's opening and the
first object's position (obs[0:7]). The rest is carried over unchanged: obs[18:36] is the previous frame (so
it is set from the current one, not predicted), the goal is constant, and the object's orientation and the
second object's pose mean different things in different tasks. The inputs are built to transfer across tasks:
the modelled parts, their last change (the hand lags its mocap target, so velocity matters) and the object's
position relative to the hand (contact), with the action; no task identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmdpd.envs.metaworld import OBS_DIM

# obs[0:7]: hand (3), gripper (1), first object's position (3); obs[18:25] the same one step earlier.
MODELLED = slice(0, 7)
PREVIOUS = slice(18, 25)
FRAME = slice(0, 18)
PREVIOUS_FRAME = slice(18, 36)
FEATURES = 7 + 7 + 3 + 4


def transition_features(obs: Tensor, action: Tensor) -> Tensor:
    """[..., FEATURES]: the modelled parts, their last change, the object relative to the hand, the action
    (clipped to the environment's [-1, 1])."""
    current = obs[..., MODELLED]
    return torch.cat([current, current - obs[..., PREVIOUS], obs[..., 4:7] - obs[..., 0:3], action.clamp(-1, 1)], -1)


class TransitionModel(nn.Module):
    """s' = s + f(s, a) on obs[0:7], with the frame stack shifted and everything else held (see the module
    docstring). Inputs and outputs are standardised with statistics of the data it was fitted on."""

    def __init__(self, width: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.size = {"width": width, "layers": layers}  # what rebuilds it from a state dict
        dims = [FEATURES] + [width] * layers
        blocks: list[nn.Module] = []
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(fan_in, fan_out), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(dims[-1], MODELLED.stop - MODELLED.start))
        self.register_buffer("feature_mean", torch.zeros(FEATURES))
        self.register_buffer("feature_std", torch.ones(FEATURES))
        self.register_buffer("change_std", torch.ones(MODELLED.stop - MODELLED.start))

    def change(self, obs: Tensor, action: Tensor) -> Tensor:
        """The predicted change of obs[0:7] after `action`."""
        features = (transition_features(obs, action) - self.feature_mean) / self.feature_std
        return self.net(features) * self.change_std

    def step(self, obs: Tensor, action: Tensor) -> Tensor:
        """The next observation [..., 39]."""
        if obs.shape[-1] != OBS_DIM:
            raise ValueError(f"TransitionModel expects Meta-World observations of {OBS_DIM} values, got {obs.shape[-1]}")
        following = obs.clone()
        following[..., MODELLED] = obs[..., MODELLED] + self.change(obs, action)
        following[..., PREVIOUS_FRAME] = obs[..., FRAME]
        return following
