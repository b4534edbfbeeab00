"""Holding an imagined object on the path a demonstration's object took.

Meta-World's objects are constrained in absolute terms (a door turns on its hinge, a drawer slides, a peg leaves
its hole along one line), and a model fitted on other tasks' objects does not know the new object's constraint.
The task's demonstration shows it: the object's positions along the demonstration, relative to where it started,
are a path the object can follow. `PathConstrainedModel` steps as its transition model does and then moves the
object to the nearest point of that path, placed where the object stood when the rollout began. What it cannot
give is how far the object goes: that is still the transition model's (contact, grasp).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from llmdpd.envs.metaworld import OBJECT
from llmdpd.world_model.context import DemonstrationConditionedModel
from llmdpd.world_model.model import TransitionModel


def nearest_on_path(points: Tensor, path: Tensor) -> Tensor:
    """The nearest point [..., 3] of the polyline `path` [P, 3] (P >= 1) to each of `points` [..., 3]."""
    if len(path) == 1:
        return path[0].expand_as(points).clone()
    start, segment = path[:-1], path[1:] - path[:-1]
    offset = points[..., None, :] - start  # [..., P - 1, 3]
    along = ((offset * segment).sum(-1) / (segment * segment).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    nearest = start + along[..., None] * segment
    closest = (nearest - points[..., None, :]).norm(dim=-1).argmin(-1)
    return nearest.gather(-2, closest[..., None, None].expand(*closest.shape, 1, 3)).squeeze(-2)


def object_track(observations: np.ndarray | Tensor) -> Tensor:
    """The object's positions [T + 1, 3] along an episode's observations [T + 1, 39], relative to its first."""
    track = torch.as_tensor(np.asarray(observations, np.float32)[:, OBJECT])
    return track - track[0]


class PathConstrainedModel(nn.Module):
    """A `TransitionModel` whose imagined object is held on `path` (the demonstration's object positions relative to
    its first, [P, 3]), placed at the object's position in the observation the rollout starts from
    (`starting_at`). The hand and the gripper are the model's; its one-step `change` is the model's, unconstrained
    (a single step has no start to place the path at)."""

    def __init__(self, model: TransitionModel | DemonstrationConditionedModel, path: Tensor,
                 origin: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("path", path.float())
        self.origin = origin

    @property
    def change_std(self) -> Tensor:
        return self.model.change_std

    def change(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.model.change(obs, action)

    def starting_at(self, first: Tensor) -> PathConstrainedModel:
        """This model with the path placed at the object's position in `first` [..., 39] (and its transition model
        started there), for rollouts from it."""
        return PathConstrainedModel(self.model.starting_at(first), self.path, first[..., OBJECT].detach().clone())

    def step(self, obs: Tensor, action: Tensor) -> Tensor:
        """The model's next observation with the object moved to the nearest point of the placed path."""
        if self.origin is None:
            raise RuntimeError("PathConstrainedModel.step needs the rollout's start: call starting_at(first) first")
        following = self.model.step(obs, action)
        origin = self.origin.to(following.device)
        following[..., OBJECT] = origin + nearest_on_path(following[..., OBJECT] - origin, self.path)
        return following
