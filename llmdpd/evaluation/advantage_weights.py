"""Advantage weights by behaviour (`llmdpd diagnose --awr`): what exp(A / beta) does to each task's data.

Advantage-weighted BC helps only if the weights prefer good behaviour. On all of a training task's mixed-data
transitions, with the advantage `policy.awr_advantage` names (`advantage_of`: the checkpoint's expectile critic
min_j Q'_j(s, c, a) - V(s, c), raw or standardised within the task; the episode's return; or the return to go
minus the checkpoint's outcome value, both standardised within the task), this reports per task:

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
from tensordict import TensorDict
from torch import Tensor

from llmdpd.data import keys as K
from llmdpd.data.episode_store import EpisodeStore, returns_to_go
from llmdpd.data.neighbour_returns import advantage_returns
from llmdpd.policy.loss import OUTCOME_ADVANTAGES, awr_weights, outcome_advantage, standardise_per_task


def advantage_of(module, kind: str, episodes: list[dict[str, np.ndarray]], obs: Tensor, action: Tensor,
                 cond: Tensor) -> Tensor:
    """A [n, 1] of one task's transitions (normalised `obs`, `action`, `cond` [n, C], in `episodes`' order) as the
    loss computes it for `policy.awr_advantage` = `kind`, standardised over the task's whole data instead of over
    a batch."""
    task = torch.zeros(len(obs), dtype=torch.long, device=obs.device)
    if kind in OUTCOME_ADVANTAGES:
        # The loss's own computation, on the task's whole data as one batch of one task.
        outcome_value = getattr(module.loss, "outcome_value", None)
        if kind == "return_to_go" and outcome_value is None:
            raise ValueError("the return-to-go advantage needs the checkpoint's outcome value (policy.awr_beta > 0)")
        store, scale, policy = EpisodeStore([episodes]), module.reward_scale.to(obs), module.cfg.policy
        if kind == "episode":
            store.transitions[K.OBS] = obs.to(store.transitions[K.OBS])  # paths compare normalised states
            returns = advantage_returns(store, policy.awr_baseline, int(policy.awr_neighbours))
            outcome = {"episode_return": returns.to(obs) * scale}
        else:
            outcome = {"return_to_go": returns_to_go(store, float(policy.gamma)).to(obs) * scale}
        td = TensorDict({"obs": obs, "cond": cond, "task": task, **outcome}, batch_size=[len(obs)])
        return outcome_advantage(td, kind, outcome_value)[0]
    if module.loss.value is None:
        raise ValueError("advantage weights need the expectile critic's value network (policy.critic: expectile)")
    advantage = module.loss.target_q_min(obs, cond, action) - module.loss.value(obs, cond).float()
    return advantage if kind == "raw" else standardise_per_task(advantage, task)


@torch.no_grad()
def advantage_weights(
    module,
    episodes: dict[str, tuple[list[dict[str, np.ndarray]], Sequence[str]]],
    conditions: dict[str, Tensor],
    beta: float,
    advantage: str,
) -> dict[str, dict[str, float]]:
    """Per task of `episodes` (task -> (raw episodes, behaviour of each episode)), the entries listed above, for
    the advantage `advantage` (one of `policy.awr_advantage`'s choices)."""
    out: dict[str, dict[str, float]] = {}
    for task, (task_episodes, behaviours) in episodes.items():
        obs = torch.as_tensor(np.concatenate([e["observations"][:-1] for e in task_episodes])).float()
        action = torch.as_tensor(np.concatenate([e["actions"] for e in task_episodes])).float()
        labels = np.concatenate([[b] * len(e["actions"]) for b, e in zip(behaviours, task_episodes)])
        quarter = np.concatenate([np.arange(len(e["actions"])) * 4 // len(e["actions"]) for e in task_episodes])
        obs, action = module.normalizer.obs(obs.to(module.obs_mean)), action.to(module.obs_mean)
        cond = module.condition_at(obs, conditions[task].expand(len(obs), -1))
        weight = awr_weights(advantage_of(module, advantage, task_episodes, obs, action, cond), beta)
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
