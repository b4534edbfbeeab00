"""A transition model that reads the task's demonstration in context.

A model fitted on other tasks' objects cannot know how a new object moves: a door's handle that turns on its own
from the first step, a drawer that slides only one way. The task's demonstration shows it. At every state the model
is told what the demonstration's object did where the demonstration looked most like this state, matched on the
object's displacement from where it started and the object's position relative to the hand (`match="object"`: on
the displacement alone, so that where the hand starts does not spoil the match of an object that moves on its own),
and how far off that match is (`demonstration_context`). Fitted on the training tasks with a demonstration of the
same task beside every window (`world_model.context=demonstration`), the model learns when to copy the
demonstration's object and when the match is too far to trust; on a new task it reads the new task's demonstration.

`DemonstrationConditionedModel` binds a fitted model to one demonstration (or one per rollout) and, with
`starting_at`, to where the rollout's object started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from llmdpd.envs.metaworld import HAND, OBJECT

if TYPE_CHECKING:
    from llmdpd.world_model.model import TransitionModel

# The demonstration's object change at the matched step (3) and the match's residual (6).
CONTEXT_FEATURES = 9
# What a state is matched on: the keys' first 3 values (the object's displacement) or all 6 (and the object
# relative to the hand).
MATCHED_KEYS = {"object_and_hand": 6, "object": 3}
# Demonstrations matched per call: bounds the [chunk, states, demonstration steps] distance matrix.
CHUNK = 8


def match_keys(obs: Tensor, origin: Tensor) -> Tensor:
    """[..., 6]: the object's displacement from its position in `origin` (broadcast against `obs`) and the
    object's position relative to the hand."""
    return torch.cat([obs[..., OBJECT] - origin[..., OBJECT], obs[..., OBJECT] - obs[..., HAND]], -1)


def demonstration_index(observations: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """(keys [..., T + 1, 6], object changes [..., T + 1, 3]) of demonstrations' observations [..., T + 1, 39]: each
    step's `match_keys` relative to the demonstration's first observation, and the object's change from that step
    to the next (none after the last)."""
    obs = _tensor(observations)
    keys = match_keys(obs, obs[..., :1, :])
    changes = torch.zeros(*obs.shape[:-1], 3, device=obs.device)
    changes[..., :-1, :] = obs[..., 1:, OBJECT] - obs[..., :-1, OBJECT]
    return keys, changes


def demonstration_context(obs: Tensor, origin: Tensor, keys: Tensor, changes: Tensor,
                          match: str = "object_and_hand") -> Tensor:
    """[B, ..., CONTEXT_FEATURES] for states `obs` [B, ..., 39] of rollouts whose first observations are `origin`
    (broadcast against `obs`): the object's change at the step of the demonstration (`keys`, `changes` of
    `demonstration_index`, [D, T + 1, .] with D 1 or B: one demonstration for all or one per rollout) nearest each
    state in `match_keys` (all of them, or the object's displacement alone with `match="object"`), and the state's
    keys minus that step's."""
    matched = MATCHED_KEYS[match]
    query = match_keys(obs, origin)
    flat = query.reshape(query.shape[0], -1, query.shape[-1])  # [B, M, 6]
    keys, changes = (part.to(flat.device).expand(len(flat), -1, -1) for part in (keys, changes))
    with torch.no_grad():  # which step matches is a choice, not a function to differentiate
        best = torch.cat([torch.cdist(flat[i: i + CHUNK, :, :matched], keys[i: i + CHUNK, :, :matched]).argmin(-1)
                          for i in range(0, len(flat), CHUNK)])  # [B, M]
    matched_keys = keys.gather(1, best[..., None].expand(-1, -1, keys.shape[-1]))
    matched_changes = changes.gather(1, best[..., None].expand(-1, -1, changes.shape[-1]))
    return torch.cat([matched_changes, flat - matched_keys], -1).reshape(*query.shape[:-1], CONTEXT_FEATURES)


@dataclass
class TaskDemonstrations:
    """What a fit with `context="demonstration"` reads beside its episodes: each task's demonstrations'
    observations ([K, T + 1, 39], K >= 1) and the task (an index into them) of every training and every held-out
    episode."""

    observations: list[Tensor]
    train_tasks: list[int]
    held_out_tasks: list[int]

    @property
    def length(self) -> int:
        """The observations every demonstration keeps (the shortest's), so that they stack."""
        return min(part.shape[1] for part in self.observations)

    def stacked(self) -> Tensor:
        """Every task's demonstrations in task order, [D, length, 39]."""
        return torch.cat([part[:, : self.length] for part in self.observations])

    def first_of(self, tasks: list[int]) -> Tensor:
        """The first demonstration of each of `tasks`, [len(tasks), length, 39]."""
        return torch.stack([self.observations[task][0, : self.length] for task in tasks])


class DemonstrationConditionedModel(nn.Module):
    """A `TransitionModel` fitted with `context="demonstration"`, reading `demonstrations` ([T + 1, 39] for every
    rollout, or [B, T + 1, 39], one per rollout) from the rollout start `origin` ([..., 39]; set by `starting_at`)."""

    def __init__(self, model: TransitionModel, demonstrations: Tensor | np.ndarray, origin: Tensor | None = None
                 ) -> None:
        super().__init__()
        if model.context != "demonstration":
            raise ValueError("DemonstrationConditionedModel needs a model fitted with world_model.context="
                             f"demonstration, got context '{model.context}'")
        self.model = model
        demonstrations = _tensor(demonstrations)
        self.register_buffer("demonstrations", demonstrations if demonstrations.dim() == 3 else demonstrations[None])
        keys, changes = demonstration_index(self.demonstrations)
        self.register_buffer("keys", keys)
        self.register_buffer("changes", changes)
        self.origin = origin

    @property
    def change_std(self) -> Tensor:
        return self.model.change_std

    def starting_at(self, first: Tensor) -> DemonstrationConditionedModel:
        """This model for rollouts from observations `first` [..., 39]."""
        return DemonstrationConditionedModel(self.model, self.demonstrations, first.detach().clone())

    def context(self, obs: Tensor) -> Tensor:
        """`demonstration_context` of states `obs` of the rollout started at `origin`."""
        if self.origin is None:
            raise RuntimeError("DemonstrationConditionedModel needs the rollout's start: call starting_at(first) first")
        return demonstration_context(obs, self.origin.to(obs.device), self.keys, self.changes,
                                     self.model.context_match)

    def change(self, obs: Tensor, action: Tensor) -> Tensor:
        """The model's change of obs[0:7], reading the demonstration."""
        return self.model.change(obs, action, self.context(obs))

    def step(self, obs: Tensor, action: Tensor) -> Tensor:
        """The model's next observation, reading the demonstration."""
        return self.model.step(obs, action, self.context(obs))


def _tensor(observations: np.ndarray | Tensor) -> Tensor:
    """Observations as a float32 tensor (a tensor stays on its device)."""
    if isinstance(observations, Tensor):
        return observations.float()
    return torch.as_tensor(np.asarray(observations, np.float32))
