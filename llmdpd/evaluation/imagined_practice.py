"""Imagined practice: reward-free practice (llmdpd/evaluation/practice.py) in a learned model of the training
data's dynamics instead of the task's own environment, so the task is never touched before it is evaluated.

From the demonstration's first observation the policy acts under each candidate's condition for `MOTION_STEPS`
steps, each step's observation predicted by a `TransitionModel` fitted on the training tasks' offline episodes
(llmdpd/world_model/), and the candidate whose imagined motion lies nearest the demonstration's is chosen
(`nearest_motion`, as for practice). What the agent reads: its training data and the task's one demonstration;
no reward, no interaction. Zero-shot, like the other prompt-only rules.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmdpd.config.load import ConfigError
from llmdpd.data.generate import dataset_id
from llmdpd.envs.metaworld import is_metaworld_task
from llmdpd.evaluation.behaviour_retrieval import demonstration_observations, nearest_motion
from llmdpd.evaluation.diagnostics import task_conditions
from llmdpd.world_model.fit import cached_transition_model
from llmdpd.world_model.model import TransitionModel


def training_world_model(source: Any, progress: bool = True) -> TransitionModel:
    """The transition model of `source`'s training tasks' datasets (`source.cfg.world_model`, seeded by the
    experiment's seed plus `world_model.seed_offset`), fitted or read from the cache, with its fit on held-out
    episodes printed."""
    cfg = source.cfg
    settings = dict(cfg.world_model)
    holdout = int(settings.pop("holdout_episodes"))
    seed = int(cfg.seed) + int(settings.pop("seed_offset"))
    others = [task for task in source.train_tasks if not is_metaworld_task(task)]
    if others:
        raise ConfigError(f"eval.prompt_retrieval=imagined models Meta-World observations; '{others[0]}' is not a "
                          "Meta-World task")
    train, held_out = [], []
    for task in source.train_tasks:
        episodes = source.data_episodes(task)
        if holdout >= len(episodes):
            raise ConfigError(f"world_model.holdout_episodes ({holdout}) leaves no episode of '{task}' to fit on")
        train += episodes[: len(episodes) - holdout]
        held_out += episodes[len(episodes) - holdout:]
    key = {"datasets": [dataset_id(cfg, task, "mixed") for task in source.train_tasks],
           "data_dir": str(source.root.resolve()), "holdout_episodes": holdout}
    try:
        model, fit = cached_transition_model(cfg.paths.cache_dir, key, train, held_out, seed=seed,
                                             progress=progress, **settings)
    except ValueError as err:  # the fit's refusal of these settings for these episodes
        raise ConfigError(str(err)) from None
    print(f"world model on {len(held_out)} held-out episodes: one-step error {fit.one_step:.3f} (no change "
          f"{fit.no_change:.3f}); hand off by " + ", ".join(f"{fit.hand_error[h] * 100:.1f} cm after {h} steps "
          f"(travelled {fit.hand_travel[h] * 100:.1f})" for h in fit.hand_error))
    return model


@torch.no_grad()
def imagined_rollouts(module, world_model: TransitionModel, conditions: torch.Tensor, first: np.ndarray,
                      steps: int, acting: Mapping[str, Any] | None = None) -> np.ndarray:
    """Observations [n, steps + 1, 39] of one imagined episode per condition ([n, C]) from observation `first`;
    every step acts on the first action of a fresh plan, as in the environment."""
    device, acting = module.obs_mean.device, dict(acting) if acting else None
    world_model = world_model.to(device)
    obs = torch.as_tensor(np.asarray(first, np.float32), device=device).expand(len(conditions), -1).clone()
    observations = [obs]
    for _ in range(steps):
        action = module.act(obs, conditions, acting=acting).float()
        obs = world_model.step(obs, action)
        observations.append(obs)
    return torch.stack(observations, 1).cpu().numpy()


def imagined_episodes(module, world_model: TransitionModel, source: Any, task: str, candidates: Sequence[str],
                      prompt_episode: int, acting: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(demonstration [T + 1, 39], imagined episodes [len(candidates), T + 1, 39]): one imagined episode per
    candidate's condition from the demonstration's first observation."""
    demonstration = demonstration_observations(source, task, prompt_episode)
    conditions = task_conditions(module, source, candidates, prompt_episode)
    rollouts = imagined_rollouts(module, world_model, torch.cat([conditions[c] for c in candidates]),
                                 demonstration[0], len(demonstration) - 1, acting)
    return demonstration, rollouts


def imagined_distances(module, world_model: TransitionModel, source: Any, task: str, candidates: Sequence[str],
                       prompt_episode: int, acting: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Each candidate's motion distance (`nearest_motion`) between its imagined episode (`imagined_episodes`) and
    `task`'s demonstration (prompt episode `prompt_episode`)."""
    demonstration, rollouts = imagined_episodes(module, world_model, source, task, candidates, prompt_episode, acting)
    return nearest_motion(demonstration, dict(zip(candidates, rollouts)), scale_with_query=True)


def imagination_fidelity(module, world_model: TransitionModel, source: Any, tasks: Sequence[str],
                         training_tasks: Sequence[str], prompt_episode: int, acting: Mapping[str, Any] | None = None,
                         env_seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per task, how far imagined practice episodes lie from the real ones (the same candidates' conditions, the
    same start; `llmdpd diagnose --imagination`): the hand's distance (m) after 50 steps and at the end (`MOTION_STEPS`)
    and the object's at the end, averaged over candidates, with how far the real episodes moved the object; and the
    candidate each rule chooses (`practice_choice`, `imagined_choice`) and whether they agree."""
    from llmdpd.envs.metaworld import HAND, OBJECT
    from llmdpd.evaluation.practice import practice_episodes

    out = {}
    for task in tasks:
        candidates = [other for other in training_tasks if other != task]
        demonstration, real = practice_episodes(module, source, task, candidates, prompt_episode, acting, env_seed)
        _, imagined = imagined_episodes(module, world_model, source, task, candidates, prompt_episode, acting)
        last = len(demonstration) - 1

        def hand_error(step: int) -> float:
            return float(np.linalg.norm(imagined[:, step, HAND] - real[:, step, HAND], axis=-1).mean())

        entry: dict[str, Any] = {"hand_error_50": hand_error(min(50, last)), "hand_error_end": hand_error(last)}
        entry["object_error"] = float(np.linalg.norm(imagined[:, last, OBJECT] - real[:, last, OBJECT], axis=-1).mean())
        entry["object_moved"] = float(np.linalg.norm(real[:, last, OBJECT] - real[:, 0, OBJECT], axis=-1).mean())
        choices = {}
        for rule, rollouts in (("practice", real), ("imagined", imagined)):
            distances = nearest_motion(demonstration, dict(zip(candidates, rollouts)), scale_with_query=True)
            choices[rule] = min(distances, key=distances.__getitem__)
        entry.update(practice_choice=choices["practice"], imagined_choice=choices["imagined"],
                     agree=float(choices["practice"] == choices["imagined"]))
        out[task] = entry
    return out
