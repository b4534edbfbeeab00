"""Episodes of one Meta-World task in lock step, every observation kept.

`llmdpd.evaluation.rollout.evaluate_episodes` runs an evaluation plan through torchrl environments and keeps
outcomes only. Diagnostics (`rollout_diagnostics`) and reward-free practice (`practice`) need the states a
policy visits, on one task at a time: `lockstep_episodes` steps one `MetaWorldTaskEnv` per episode, asks the
policy once per step for all of them, and returns the whole trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llmdpd.envs.metaworld import ACTION_DIM, MetaWorldTaskEnv

# act(obs [n, 39] float32) -> actions [n, 4] for the n episodes of one task.
TaskActFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class LockstepEpisodes:
    """Trajectories of n episodes of T steps: observations [n, T + 1, 39] (the reset's first), actions [n, T, 4]
    as the act function returned them, success [n, T] (Meta-World's flag after each step)."""

    observations: np.ndarray
    actions: np.ndarray
    success: np.ndarray


def lockstep_episodes(task: str, goals: Sequence[int], act: TaskActFn, steps: int | None = None,
                      env_seed: int = 0, max_episode_steps: int = 500) -> LockstepEpisodes:
    """One episode of `task` per entry of `goals` (goal variations of MT1 seeded by `env_seed`), `steps` steps
    each (default: the environment's limit, `max_episode_steps` capped at 500), with one `act` call per step."""
    envs = [MetaWorldTaskEnv(task, seed=env_seed, max_episode_steps=max_episode_steps) for _ in goals]
    steps = envs[0].max_episode_steps if steps is None else steps
    try:
        obs = np.stack([env.reset(int(goal)) for env, goal in zip(envs, goals)])
        observations, actions, success = [obs], [], []
        for _ in range(steps):
            action = np.asarray(act(obs), dtype=np.float32)
            stepped = [env.step(a) for env, a in zip(envs, action)]
            obs = np.stack([s[0] for s in stepped])
            observations.append(obs)
            actions.append(action)
            success.append([s[2] for s in stepped])
    finally:
        for env in envs:
            env.close()
    n = len(envs)
    return LockstepEpisodes(
        np.stack(observations, 1),
        np.stack(actions, 1) if actions else np.zeros((n, 0, ACTION_DIM), np.float32),
        np.asarray(success, dtype=bool).T.reshape(n, steps),
    )


__all__ = ["LockstepEpisodes", "TaskActFn", "lockstep_episodes"]
