"""Goal-visible single-task Meta-World v3 environments, one per (task, goal variation).

Meta-World's ML benchmarks hide the goal (zeros in obs[36:39]) and its scripted experts read it from there,
so data collection and evaluation both use MT1: each of its 50 `train_tasks` is one goal variation of a
task. Variations [0, train_goals) feed the datasets; [train_goals, 50) are kept apart for evaluation.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import numpy as np

NUM_GOALS = 50
OBS_DIM = 39
ACTION_DIM = 4
# Where things are in an observation (the current frame; obs[18:36] repeats it for the previous step).
HAND, GRIPPER, OBJECT, GOAL = slice(0, 3), slice(3, 4), slice(4, 7), slice(36, 39)


def _quiet_import_metaworld():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import metaworld

    return metaworld


@functools.lru_cache(maxsize=None)
def _benchmark(task: str, seed: int):
    metaworld = _quiet_import_metaworld()
    check_task(task)
    return metaworld.MT1(task, seed=seed)


def is_metaworld_task(task: str) -> bool:
    """Whether `task` names a Meta-World v3 task (nothing is built)."""
    return task in _quiet_import_metaworld().ALL_V3_ENVIRONMENTS


def check_task(task: str) -> None:
    """A ValueError naming `task` when it is not a Meta-World v3 task (without building anything)."""
    if not is_metaworld_task(task):
        raise ValueError(f"Unknown Meta-World task '{task}'")


def make_goal_env(task: str, goal: int, seed: int = 0, render_size: int | None = None, camera: str | None = None):
    """The raw Gymnasium env of `task` set to goal variation `goal` of MT1(`seed`), goal visible in obs[36:39].

    With `render_size`, it renders `rgb_array` frames of that many pixels square from `camera` (None: the
    upright free camera; the `corner*` cameras render upside down).
    """
    mt1 = _benchmark(task, seed)
    options = {} if render_size is None else dict(
        render_mode="rgb_array", width=render_size, height=render_size, camera_name=camera
    )
    env = mt1.train_classes[task](**options)
    env.set_task(mt1.train_tasks[goal])
    # set_task updates sawyer_observation_space, not observation_space (wrappers check against the latter).
    env.observation_space = env.sawyer_observation_space
    return env


class MetaWorldTaskEnv:
    """One goal-visible Meta-World task whose goal variation is chosen at each reset.

    `reset(goal)` returns a float32 observation; `step` returns float32 obs, float reward, success flag.
    Episodes end after `max_episode_steps` (Meta-World never terminates early).
    """

    def __init__(self, task: str, seed: int = 0, max_episode_steps: int = 500) -> None:
        self.task = task
        self.max_episode_steps = min(max_episode_steps, 500)
        self._mt1 = _benchmark(task, seed)
        self.env = self._mt1.train_classes[task]()
        self.t = 0
        self._initial: dict[int, np.ndarray] = {}

    @property
    def goals(self) -> list[Any]:
        return self._mt1.train_tasks

    def reset(self, goal: int) -> np.ndarray:
        self.env.set_task(self.goals[goal])
        obs, _ = self.env.reset()
        self.t = 0
        return obs.astype(np.float32)

    def initial_observation(self, goal: int) -> np.ndarray:
        """The first observation of goal variation `goal` (where it puts the objects and the goal), cached.

        Resets the environment the first time a variation is asked for: reset again before stepping.
        Resets do not depend on what ran before, so this changes no later episode.
        """
        if goal not in self._initial:
            self._initial[goal] = self.reset(goal).copy()
        return self._initial[goal]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Step; returns (obs, reward, success, truncated)."""
        obs, reward, _terminated, _truncated, info = self.env.step(np.clip(action, -1.0, 1.0))
        self.t += 1
        return obs.astype(np.float32), float(reward), bool(info["success"]), self.t >= self.max_episode_steps

    def close(self) -> None:
        self.env.close()


def scripted_expert(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """The task's scripted expert as a function obs -> action (its 'Constant(s) may be too high' warning off)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from metaworld.policies import ENV_POLICY_MAP

    return policy_function(ENV_POLICY_MAP[task]())


def policy_function(policy) -> Callable[[np.ndarray], np.ndarray]:
    """A Meta-World `Policy` object as a function obs -> action, float32, its warnings off."""

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(policy.get_action(obs.astype(np.float64)), dtype=np.float32)

    return act
