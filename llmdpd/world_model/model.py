"""A learned model of how Meta-World observations change under an action, shared by every task.

Only the parts whose meaning every task shares are modelled: the hand's position, the gripper's opening and the
first object's position (obs[0:7]). The rest is carried over unchanged: obs[18:36] is the previous frame (so
it is set from the current one, not predicted), the goal is constant, and the object's orientation and the
second object's pose mean different things in different tasks. The inputs are built to transfer across tasks:
the modelled parts, their last change (the hand lags its mocap target, so velocity matters) and the object's
position relative to the hand (contact), with the action; no task identity.

With `object_frame="hand"` the object's change has a network of its own whose inputs hold no absolute position:
the gripper, the last changes, the object relative to the hand and the action. How an object moves is then a
function of where the hand is relative to it and what the hand does, so that what the training objects teach about
pushing, pulling and grasping can carry to a new object wherever it stands; the hand and gripper keep every input
(the workspace's limits are absolute).

With `context="demonstration"` every network also reads what the task's demonstration's object did where the
demonstration looked most like the current state (llmdpd/world_model/context.py); such a model steps only bound to a
demonstration (`DemonstrationConditionedModel`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from llmdpd.config.schema import CONTEXT_MATCHES, OBJECT_FRAMES, WORLD_MODEL_CONTEXTS
from llmdpd.envs.metaworld import OBS_DIM
from llmdpd.world_model.context import CONTEXT_FEATURES

# obs[0:7]: hand (3), gripper (1), first object's position (3); obs[18:25] the same one step earlier.
MODELLED = slice(0, 7)
PREVIOUS = slice(18, 25)
FRAME = slice(0, 18)
PREVIOUS_FRAME = slice(18, 36)
FEATURES = 7 + 7 + 3 + 4
# The features with no absolute position in them: the gripper, the last changes, the object relative to the hand
# and the action (everything but the hand's and the object's positions, features 0:3 and 4:7).
RELATIVE = [3, *range(7, FEATURES)]


def transition_features(obs: Tensor, action: Tensor) -> Tensor:
    """[..., FEATURES]: the modelled parts, their last change, the object relative to the hand, the action
    (clipped to the environment's [-1, 1])."""
    current = obs[..., MODELLED]
    return torch.cat([current, current - obs[..., PREVIOUS], obs[..., 4:7] - obs[..., 0:3], action.clamp(-1, 1)], -1)


class TransitionModel(nn.Module):
    """s' = s + f(s, a) on obs[0:7], with the frame stack shifted and everything else held (see the module
    docstring). Inputs and outputs are standardised with statistics of the data it was fitted on."""

    def __init__(self, width: int = 256, layers: int = 3, object_frame: str = "absolute", context: str = "none",
                 context_match: str = "object_and_hand") -> None:
        super().__init__()
        if object_frame not in OBJECT_FRAMES:
            raise ValueError(f"object_frame must be one of {', '.join(OBJECT_FRAMES)}, got '{object_frame}'")
        if context not in WORLD_MODEL_CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(WORLD_MODEL_CONTEXTS)}, got '{context}'")
        if context_match not in CONTEXT_MATCHES:
            raise ValueError(f"context_match must be one of {', '.join(CONTEXT_MATCHES)}, got '{context_match}'")
        # What rebuilds it from a state dict (settings only where they are not the default: older caches lack them).
        self.size = {"width": width, "layers": layers, **({"object_frame": object_frame} if object_frame != "absolute"
                                                          else {}), **({"context": context} if context != "none"
                                                                       else {}),
                     **({"context_match": context_match} if context_match != "object_and_hand" else {})}
        self.object_frame, self.context, self.context_match = object_frame, context, context_match
        extra = CONTEXT_FEATURES if context == "demonstration" else 0
        modelled = MODELLED.stop - MODELLED.start
        # The object network's inputs: the relative features (and the context, which comes after them).
        self.object_inputs = [*RELATIVE, *range(FEATURES, FEATURES + extra)]
        if object_frame == "hand":  # hand and gripper from every feature, the object from the relative ones
            self.net = _mlp(FEATURES + extra, width, layers, 4)
            self.object_net = _mlp(len(self.object_inputs), width, layers, 3)
        else:
            self.net = _mlp(FEATURES + extra, width, layers, modelled)
        self.register_buffer("feature_mean", torch.zeros(FEATURES + extra))
        self.register_buffer("feature_std", torch.ones(FEATURES + extra))
        self.register_buffer("change_std", torch.ones(MODELLED.stop - MODELLED.start))

    def inputs(self, obs: Tensor, action: Tensor, context: Tensor | None = None) -> Tensor:
        """The unstandardised inputs: `transition_features`, then the demonstration's `context` where the model
        reads one."""
        features = transition_features(obs, action)
        if self.context == "none":
            return features
        if context is None:
            raise RuntimeError("this transition model reads a demonstration (context 'demonstration'): bind one with "
                               "DemonstrationConditionedModel (llmdpd/world_model/context.py)")
        return torch.cat([features, context], -1)

    def change(self, obs: Tensor, action: Tensor, context: Tensor | None = None) -> Tensor:
        """The predicted change of obs[0:7] after `action` (with the demonstration's `context` where the model reads
        one)."""
        features = (self.inputs(obs, action, context) - self.feature_mean) / self.feature_std
        if self.object_frame == "hand":
            return torch.cat([self.net(features), self.object_net(features[..., self.object_inputs])],
                             -1) * self.change_std
        return self.net(features) * self.change_std

    def starting_at(self, first: Tensor) -> TransitionModel:
        """The model to roll out from observation `first`: itself (a constrained model places its constraint there,
        llmdpd/world_model/path.py)."""
        return self

    def step(self, obs: Tensor, action: Tensor, context: Tensor | None = None) -> Tensor:
        """The next observation [..., 39]."""
        if obs.shape[-1] != OBS_DIM:
            raise ValueError(f"TransitionModel expects Meta-World observations of {OBS_DIM} values, got {obs.shape[-1]}")
        following = obs.clone()
        following[..., MODELLED] = obs[..., MODELLED] + self.change(obs, action, context)
        following[..., PREVIOUS_FRAME] = obs[..., FRAME]
        return following


def _mlp(inputs: int, width: int, layers: int, outputs: int) -> nn.Sequential:
    dims = [inputs] + [width] * layers
    blocks: list[nn.Module] = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(fan_in, fan_out), nn.SiLU()]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], outputs))
