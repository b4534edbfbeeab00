"""Reward-free practice: which training behaviour, tried in a task's own environment, moves like its demonstration.

The retrieval oracle (`llmdpd diagnose --retrieval`) finds the training behaviour that serves an unseen task by
its success there; rules that only read the demonstration (`demonstration`, `motion`) recover little of it. A
practice episode sees what the oracle sees, except the reward: the environment is reset to the goal variation
the demonstration was recorded on (named by its dataset's metadata and checked against its first observation,
so the objects start where the demonstration's did), the policy acts once under each candidate's condition for
as many steps as the demonstration's motion is read over (`MOTION_STEPS`), and each rollout's motion is compared
with the demonstration's (`nearest_motion`: hand and object displacement, gripper, hand relative to the object's
start).
Nothing else is read: no reward, no success, and the practice episodes' outcome changes no evaluated episode
except through the condition chosen.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmdpd.config.load import ConfigError
from llmdpd.envs.metaworld import NUM_GOALS, MetaWorldTaskEnv, is_metaworld_task
from llmdpd.evaluation.behaviour_retrieval import demonstration_observations, nearest_motion
from llmdpd.evaluation.diagnostics import task_conditions
from llmdpd.evaluation.lockstep import LockstepEpisodes, lockstep_episodes

# Largest difference between a demonstration's first observation and a goal variation's that counts as the same
# start (observations are stored as float32; different variations differ by centimetres).
START_TOLERANCE = 1e-4


def demonstration_goal(env: MetaWorldTaskEnv, first_observation: np.ndarray) -> int:
    """The goal variation of `env`'s task whose reset gives `first_observation`."""
    first = np.asarray(first_observation, np.float32)
    for goal in range(NUM_GOALS):
        if np.abs(env.initial_observation(goal) - first).max() <= START_TOLERANCE:
            return goal
    raise ConfigError(f"the demonstration of '{env.task}' starts at none of its {NUM_GOALS} goal variations "
                      "(were the datasets made with another data.seed?)")


@torch.no_grad()
def practice_rollouts(module, conditions: torch.Tensor, task: str, goal: int, steps: int,
                      acting: Mapping[str, Any] | None = None, env_seed: int = 0) -> LockstepEpisodes:
    """One episode per condition ([n, C]) of `task` from goal variation `goal` (observations [n, steps + 1, 39],
    actions [n, steps, 4]), in lock step; every step acts on the first action of a fresh plan."""
    device, acting = module.obs_mean.device, dict(acting) if acting else None

    def act(obs: np.ndarray) -> np.ndarray:
        return module.act(torch.as_tensor(obs, device=device), conditions, acting=acting).float().cpu().numpy()

    return lockstep_episodes(task, [goal] * len(conditions), act, steps, env_seed)


def practice_start(source: Any, task: str, prompt_episode: int, env_seed: int = 0) -> tuple[int, np.ndarray]:
    """(goal variation, observations [<= MOTION_STEPS + 1, 39]) of `task`'s demonstration (prompt episode
    `prompt_episode`): the variation its dataset's metadata names (`source.prompt_goals`), else the one whose reset
    matches its first observation (`demonstration_goal`)."""
    if not is_metaworld_task(task):
        raise ConfigError(f"eval.prompt_retrieval=practice needs Meta-World tasks; '{task}' is not one")
    demonstration = demonstration_observations(source, task, prompt_episode)
    goals = source.prompt_goals(task)
    if goals is not None:
        return goals[prompt_episode], demonstration
    probe = MetaWorldTaskEnv(task, seed=env_seed)
    try:
        return demonstration_goal(probe, demonstration[0]), demonstration
    finally:
        probe.close()


def practice_episodes(module, source: Any, task: str, candidates: Sequence[str], prompt_episode: int,
                      acting: Mapping[str, Any] | None = None, env_seed: int = 0
                      ) -> tuple[np.ndarray, LockstepEpisodes]:
    """(demonstration [T + 1, 39], practice episodes: observations [len(candidates), T + 1, 39] and actions
    [len(candidates), T, 4]): one practice episode of `task` per candidate's condition from the demonstration's
    start, checked to start where the demonstration did."""
    goal, demonstration = practice_start(source, task, prompt_episode, env_seed)
    conditions = task_conditions(module, source, candidates, prompt_episode)
    rollouts = practice_rollouts(module, torch.cat([conditions[c] for c in candidates]), task, goal,
                                 len(demonstration) - 1, acting, env_seed)
    if np.abs(rollouts.observations[0, 0] - demonstration[0]).max() > START_TOLERANCE:
        raise ConfigError(f"the demonstration of '{task}' does not start where goal variation {goal} (named by its "
                          "dataset) does (were the datasets made with another data.seed?)")
    return demonstration, rollouts


def practice_distances(module, source: Any, task: str, candidates: Sequence[str], prompt_episode: int,
                       acting: Mapping[str, Any] | None = None, env_seed: int = 0) -> dict[str, float]:
    """Each candidate's motion distance (`nearest_motion`) between its practice episode on `task`
    (`practice_episodes`) and `task`'s demonstration (prompt episode `prompt_episode`)."""
    demonstration, rollouts = practice_episodes(module, source, task, candidates, prompt_episode, acting, env_seed)
    return nearest_motion(demonstration, dict(zip(candidates, rollouts.observations)), scale_with_query=True)
