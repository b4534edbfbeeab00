"""Prompt transfer: which training task's behaviour an unseen task's prompt calls up (`llmdpd diagnose --unseen`).

A policy generalises to an unseen task U through its condition c_U (U's description and one demonstration).
On states the noisy scripted expert of U visits, this compares the policy's mean action under c_U with U's
expert action and with the policy's mean actions under each training task's condition and under the null
(unconditional) condition, and says where c_U lies among the training tasks' conditions:

- `own_error`: squared distance (summed over action dimensions, averaged over states) of the mean action under
  c_U to U's expert action, as `prompt_identification`'s `own_error`;
- `null_error`: the same under the null condition (what a policy that ignores prompts falls back on);
- `best_training_error` / `best_training_task`: the training task whose condition brings the actions nearest
  U's expert (the best any training behaviour does on U);
- `behaves_like` / `behaviour_gap`: the training task whose condition gives actions nearest those under c_U
  on U's states, and that squared distance (the behaviour c_U falls into);
- `nearest_text` / `nearest_trajectory`: the training task whose text (trajectory) half of the condition lies
  nearest c_U's (Euclidean).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from llmdpd.evaluation.diagnostics import mean_action, squared_error


@torch.no_grad()
def prompt_transfer(
    module,
    states: dict[str, tuple[Tensor, Tensor]],
    unseen_conditions: dict[str, Tensor],
    training_conditions: dict[str, Tensor],
    samples: int = 8,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per unseen task in `states` (task -> (obs, expert actions)), the entries the module docstring lists."""
    torch.manual_seed(seed)
    text_dim = module.conditioning.null_text.numel()
    null = module.conditioning.null(1)
    out: dict[str, dict[str, Any]] = {}
    for task, (obs, expert) in states.items():
        obs, expert = obs.to(module.obs_mean), expert.to(module.obs_mean)
        cond = unseen_conditions[task]
        own = mean_action(module, obs, cond, samples)
        training = {name: mean_action(module, obs, c, samples) for name, c in training_conditions.items()}
        to_expert = {name: squared_error(action, expert) for name, action in training.items()}
        to_own = {name: squared_error(action, own) for name, action in training.items()}

        def nearest(part: slice) -> str:
            return min(training_conditions, key=lambda name: (training_conditions[name][:, part] - cond[:, part]).norm().item())

        best, like = min(to_expert, key=to_expert.get), min(to_own, key=to_own.get)
        out[task] = {
            "own_error": squared_error(own, expert),
            "null_error": squared_error(mean_action(module, obs, null, samples), expert),
            "best_training_error": to_expert[best],
            "best_training_task": best,
            "behaviour_gap": to_own[like],
            "behaves_like": like,
            "nearest_text": nearest(slice(0, text_dim)),
            "nearest_trajectory": nearest(slice(text_dim, module.conditioning.pooled_dim)),
        }
    return out
