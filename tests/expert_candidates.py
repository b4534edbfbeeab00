"""Candidate behaviours for tests of the practice rules: one task's scripted expert, reversed, or still.

Each candidate training task's condition is the sign its actions are multiplied by (`SIGNS`), carried by its
one-number text embedding; the demonstration is given. Practice, real or imagined, must pick the candidate whose
actions are the expert's own (sign +1), whose rollout retraces the demonstration.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from llmdpd.envs.metaworld import scripted_expert

SIGNS = {"reach-v3": -1.0, "sweep-v3": 1.0, "door-open-v3": 0.0}
EXPERT_CANDIDATE = "sweep-v3"


class SignedExpertPolicy(torch.nn.Module):
    """Acts as `task`'s scripted expert times its condition's sign."""

    obs_mean = torch.zeros(39)

    def __init__(self, task: str) -> None:
        super().__init__()
        self.expert = scripted_expert(task)

    def prompt_condition(self, text_emb, prompt):
        return text_emb

    def act(self, obs, cond, acting=None):
        actions = np.stack([self.expert(o) for o in obs.numpy()])
        return torch.as_tensor(actions, dtype=torch.float32) * cond[:, :1]


class DemonstrationSource:
    """Every task's one prompt episode is `demonstration` (recorded on goal variation `goals[0]` when given)."""

    def __init__(self, demonstration: np.ndarray, goals: Optional[list[int]] = None) -> None:
        self.demonstration, self.goals = np.asarray(demonstration), goals

    def prompt_episodes(self, task):
        return [{"observations": self.demonstration}]

    def prompt_goals(self, task):
        return self.goals

    def text_embeddings(self, task):
        return torch.tensor([[SIGNS.get(task, 0.0)]])

    def prompt(self, task, episode, offset=0):
        return None
