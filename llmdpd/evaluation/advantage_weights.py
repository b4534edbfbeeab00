"""Advantage weights by behaviour (`llmdpd diagnose --awr`): what exp(A / beta) does to each task's data.

Advantage-weighted BC helps only if the weights prefer good behaviour. On all of a training task's mixed-data
transitions, with the checkpoint's expectile critic (A = min_j Q'_j(s, c, a) - V(s, c), standardised within the
task when `policy.awr_advantage` is `task`), this reports per task:

- `weight_share/<behaviour>` against `data_share/<behaviour>`: the share of the total weight that each data
  behaviour (noisy expert, wrong goal, other task, stall) receives, and its share of the transitions. Equal
  shares mean the weights do not tell the behaviours apart;
- `time_share/<q>`: the share of the weight on each quarter q (0-3) of the episodes' steps (0.25 each when the
  weights do not depend on the time within an episode);
- `ess`: the weights' effective sample size as a fraction of the task's transitions, (sum w)^2 / (n sum w^2);
- `tilt`: the weighted mean action minus the plain mean action (per action dimension) and its length
  `tilt_norm`: how far the weighting shifts the action the actor is trained toward.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from llmdpd.policy.loss import awr_weights, standardise_per_task


@torch.no_grad()
def advantage_weights(
    module,
    episodes: dict[str, tuple[list[dict[str, np.ndarray]], Sequence[str]]],
    conditions: dict[str, Tensor],
    beta: float,
    per_task: bool,
) -> dict[str, dict[str, float]]:
    """Per task of `episodes` (task -> (raw episodes, behaviour of each episode)), the entries listed above."""
    if module.loss.value is None:
        raise ValueError("advantage weights need the expectile critic's value network (policy.critic: expectile)")
    out: dict[str, dict[str, float]] = {}
    for task, (task_episodes, behaviours) in episodes.items():
        obs = torch.as_tensor(np.concatenate([e["observations"][:-1] for e in task_episodes])).float()
        action = torch.as_tensor(np.concatenate([e["actions"] for e in task_episodes])).float()
        labels = np.concatenate([[b] * len(e["actions"]) for b, e in zip(behaviours, task_episodes)])
        quarter = np.concatenate([np.arange(len(e["actions"])) * 4 // len(e["actions"]) for e in task_episodes])
        obs, action = module.normalizer.obs(obs.to(module.obs_mean)), action.to(module.obs_mean)
        cond = conditions[task].expand(len(obs), -1)
        advantage = module.loss.target_q_min(obs, cond, action) - module.loss.value(obs, cond).float()
        if per_task:
            advantage = standardise_per_task(advantage, torch.zeros(len(advantage), dtype=torch.long, device=obs.device))
        weight = awr_weights(advantage, beta)
        tilt = ((weight * action).sum(0) / weight.sum() - action.mean(0)).cpu()
        w = weight[:, 0].cpu().numpy().astype(np.float64)
        entry = {"transitions": float(len(w)), "ess": float(w.sum() ** 2 / (w**2).sum() / len(w)),
                 "tilt_norm": float(tilt.norm())}
        entry.update({f"tilt/{i}": float(t) for i, t in enumerate(tilt)})
        entry.update({f"time_share/{q}": float(w[quarter == q].sum() / w.sum()) for q in range(4)})
        for kind in sorted(set(labels)):
            entry[f"weight_share/{kind}"] = float(w[labels == kind].sum() / w.sum())
            entry[f"data_share/{kind}"] = float((labels == kind).mean())
        out[task] = entry
    return out
