"""Behaviour retrieval: condition an unseen task on the training task whose behaviour best imitates its
demonstration.

On unseen tasks the policies call up one training task's behaviour, and their own prompt often calls up the
wrong one (`llmdpd diagnose --retrieval`). This chooses the behaviour from what the agent is given: on the states
of the task's one demonstration (the prompt episode it is shown), the policy acts under each training task's
condition (first description, the same prompt episode), and the training task whose actions lie nearest the
demonstration's actions (squared distance summed over action dimensions, averaged over states) conditions every
episode of the unseen task.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmdpd.evaluation.diagnostics import task_conditions


@torch.no_grad()
def nearest_behaviour(module, source: Any, task: str, training_tasks: Sequence[str], prompt_episode: int,
                      acting: Mapping[str, Any] | None = None) -> tuple[str, dict[str, float]]:
    """(the chosen training task, each training task's action error on `task`'s demonstration)."""
    episode = source.prompt_episodes(task)[prompt_episode]
    device = module.obs_mean.device
    obs = torch.as_tensor(np.asarray(episode["observations"][:-1], np.float32), device=device)
    demonstrated = torch.as_tensor(np.asarray(episode["actions"], np.float32), device=device)
    errors = {}
    for other, cond in task_conditions(module, source, training_tasks, prompt_episode).items():
        actions = module.act(obs, cond, acting=dict(acting) if acting else None)
        errors[other] = (actions - demonstrated).pow(2).sum(-1).mean().item()
    return min(errors, key=errors.__getitem__), errors
