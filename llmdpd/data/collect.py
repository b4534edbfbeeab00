"""Offline Meta-World data: scripted-expert episodes whose quality varies, and shows, per episode.

For each task two Minari datasets are written under `data_dir`:
    metaworld/<task>/mixed-<version>   mixed-quality episodes (a behaviour drawn per episode, see below)
    metaworld/<task>/prompt-<version>  a few low-noise expert episodes, kept apart as trajectory prompts

Every episode first draws its goal variation from the data goals [0, train_goals). Version v0 (and any
recipe whose behaviours are noise only) then rolls out the scripted expert with Gaussian action noise
whose scale is drawn per episode from the noise mixture. Version v1 draws a behaviour per episode from the
`behaviours` weights:

- `noisy`: as v0, the expert plus Gaussian noise of a scale drawn from the noise mixture;
- `wrong_goal`: the expert acts as in another data goal variation j (the farthest of a few drawn ones): it
  reads observations whose goal slot obs[36:39] holds j's goal and whose object positions are shifted to
  where j puts them (most experts read the objects, not the goal), plus noise 0.1. The environment still
  rewards and judges the true goal, so these episodes mostly fail;
- `other_task`: 2-4 windows of 10-30% of the episode (50-150 steps of 500) at random times in which
  another task's scripted expert (one of `OTHER_TASKS`, never this task nor the experiment's unseen tasks)
  drives the arm from this task's observations; elsewhere the expert; noise 0.1 throughout;
- `stall`: 2-4 such windows in which the action is zero (standing still) or the negated expert action
  (retreating); elsewhere the expert with noise 0.1.

Prompt datasets stay low-noise expert episodes in every version.

A task given routes (`data.routes`, llmdpd/envs/expert_routes.py) also draws, per episode and from a stream of
its own, which route its expert takes (push-wall: round the wall's left or right end); every behaviour above
drives that route's expert. The episode's other draws are those of the same episode without routes.

With `action_labels: expert` (mixed data only) an episode is rolled out as above, and each visited state is then
stored with the action the episode's expert (on its route, toward the true goal) would take there, instead of the
action executed: the behaviours choose which states the data cover, the labels are the expert's (DART's
relabelling). Rewards and success stay those of the execution.

Every episode's randomness (goal variation, behaviour, its windows and noise) comes from a seed derived
from (seed, task, kind, episode), so a dataset is the same whatever the worker count or the order of
tasks; a v1 recipe draws its extra numbers after the goal, and a v0 recipe draws none, so v0 data and its
recipe fingerprint are unchanged by v1.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from llmdpd.envs.expert_routes import route_expert
from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert

KINDS = ("mixed", "prompt")
BEHAVIOURS = ("noisy", "wrong_goal", "other_task", "stall")
# Experts that `other_task` borrows: the ML10 training tasks, disjoint from every named split's unseen tasks
# (recipe_for also drops the experiment's own unseen tasks, so no held-out behaviour enters training data).
OTHER_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "sweep-v3",
    "basketball-v3",
)
# The constants of the v1 behaviours; part of a v1 recipe's fingerprint, so changing one changes the id check.
BEHAVIOUR_PARAMS = {
    "version": 1,
    "noise": 0.1,  # action noise of wrong_goal, other_task and stall (outside stall windows)
    "windows": [2, 4],  # windows per other_task / stall episode (inclusive)
    "window_fraction": [0.1, 0.3],  # window length as a fraction of the episode
    "wrong_goal_candidates": 4,  # goal variations drawn; the farthest one is followed
}
# Observation dims of the hand and gripper (current and previous frame), which no goal variation moves.
_ARM_DIMS = np.zeros(39, dtype=bool)
_ARM_DIMS[0:4] = True
_ARM_DIMS[18:22] = True


@dataclass(frozen=True)
class CollectionRecipe:
    """Everything that determines one dataset's contents; stored in its metadata.

    `behaviours` ((kind, weight) pairs) and `other_tasks` are empty for noise-only data (v0, prompts) and
    then left out of the fingerprint, which is therefore the same as before they existed; so are `routes`
    ((route, weight) pairs) for a task whose expert takes its one route.
    """

    task: str
    kind: str
    episodes: int
    max_episode_steps: int
    noise_scales: tuple[float, ...]
    noise_weights: tuple[float, ...]
    train_goals: int
    seed: int
    descriptions: tuple[str, ...] = field(default=(), compare=False)
    behaviours: tuple[tuple[str, float], ...] = ()
    other_tasks: tuple[str, ...] = ()
    routes: tuple[tuple[str, float], ...] = ()
    action_labels: str = "executed"

    def fingerprint(self) -> str:
        """A short hash of the fields that change the data (not the descriptions)."""
        optional = ("descriptions", "behaviours", "other_tasks", "routes", "action_labels")
        fields = {k: v for k, v in asdict(self).items() if k not in optional}
        if self.behaviours:
            fields.update(behaviours=self.behaviours, other_tasks=self.other_tasks, behaviour_params=BEHAVIOUR_PARAMS)
        if self.routes:
            fields.update(routes=self.routes)
        if self.action_labels != "executed":
            fields.update(action_labels=self.action_labels)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Episode:
    """One episode as arrays: T steps, T+1 observations."""

    observations: np.ndarray  # [T+1, 39] float32
    actions: np.ndarray  # [T, 4] float32: executed, or the expert's at each state (`action_labels: expert`)
    rewards: np.ndarray  # [T] float32
    success: np.ndarray  # [T+1] bool, per observation (False at reset)
    goal: int
    noise_scale: float
    behaviour: str = "noisy"
    # What the behaviour did: the goal variation followed, or the windows [start, end) and who drove them.
    detail: dict = field(default_factory=dict)
    route: str = ""  # the expert's route, where the recipe gives routes

    @property
    def episode_return(self) -> float:
        """The undiscounted return."""
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def succeeded(self) -> bool:
        """Success at any step."""
        return bool(self.success.any())


def episode_rng(seed: int, task: str, kind: str, episode: int, stream: int = 0) -> np.random.Generator:
    """The generator for one episode, independent of every other episode; `stream` 1 draws its route."""
    task_key = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    key = [seed, task_key, KINDS.index(kind), episode] + ([stream] if stream else [])
    return np.random.default_rng(key)


def episode_route(recipe: CollectionRecipe, episode: int) -> str:
    """The route this episode's expert takes ("" when the recipe gives none)."""
    if not recipe.routes:
        return ""
    rng = episode_rng(recipe.seed, recipe.task, recipe.kind, episode, stream=1)
    return recipe.routes[_draw(rng, [w for _, w in recipe.routes])][0]


@functools.lru_cache(maxsize=None)
def _expert(task: str) -> Callable[[np.ndarray], np.ndarray]:
    return scripted_expert(task)  # Meta-World's scripted policies keep no state between calls


def rollout(env: MetaWorldTaskEnv, goal: int, steps: int, act: Callable[[int, np.ndarray], np.ndarray]):
    """Run `act(t, obs)` (clipped to [-1, 1]) for `steps` steps from goal variation `goal`; returns the
    observations [T+1, 39], actions [T, 4], rewards [T] and per-observation success flags [T+1]."""
    observations = np.empty((steps + 1, 39), dtype=np.float32)
    actions = np.empty((steps, 4), dtype=np.float32)
    rewards = np.empty(steps, dtype=np.float32)
    success = np.zeros(steps + 1, dtype=bool)
    obs = env.reset(goal)
    observations[0] = obs
    for t in range(steps):
        action = np.clip(act(t, obs), -1.0, 1.0)
        obs, reward, succeeded, _ = env.step(action)
        observations[t + 1], actions[t], rewards[t], success[t + 1] = obs, action, reward, succeeded
    return observations, actions, rewards, success


def _draw(rng: np.random.Generator, weights) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def _windows(rng: np.random.Generator, steps: int) -> list[tuple[int, int]]:
    """2-4 windows [start, end) of 10-30% of the episode each, at uniform times (they may overlap)."""
    low, high = BEHAVIOUR_PARAMS["windows"]
    lo_frac, hi_frac = BEHAVIOUR_PARAMS["window_fraction"]
    shortest = max(1, round(lo_frac * steps))
    longest = min(steps, max(shortest, round(hi_frac * steps)))
    windows = []
    for _ in range(int(rng.integers(low, high + 1))):
        length = int(rng.integers(shortest, longest + 1))
        start = int(rng.integers(0, steps - length + 1))
        windows.append((start, start + length))
    return windows


def collect_episode(env: MetaWorldTaskEnv, experts: dict, recipe: CollectionRecipe, episode: int) -> Episode:
    """Roll out this episode's behaviour with its goal variation (see the module docstring); `experts` maps
    each route of the recipe ("" without routes) to the task's expert taking it."""
    route = episode_route(recipe, episode)
    expert = experts[route]
    rng = episode_rng(recipe.seed, recipe.task, recipe.kind, episode)
    goal = int(rng.integers(recipe.train_goals))
    steps = recipe.max_episode_steps
    behaviour = recipe.behaviours[_draw(rng, [w for _, w in recipe.behaviours])][0] if recipe.behaviours else "noisy"
    detail: dict = {}

    if behaviour == "noisy":
        scale = float(recipe.noise_scales[_draw(rng, recipe.noise_weights)])
        noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)

        def act(t, obs):
            return expert(obs) + noise[t]

    elif behaviour == "wrong_goal":
        scale = float(BEHAVIOUR_PARAMS["noise"])
        draws = rng.integers(recipe.train_goals - 1, size=BEHAVIOUR_PARAMS["wrong_goal_candidates"])
        candidates = [int(j) + (int(j) >= goal) for j in draws]  # any data goal but the episode's own
        noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)
        start = env.initial_observation(goal)
        shifts = {
            j: np.where(_ARM_DIMS, 0.0, env.initial_observation(j) - start).astype(np.float32) for j in candidates
        }
        followed = max(candidates, key=lambda j: (float(np.linalg.norm(shifts[j])), -j))
        shift = shifts[followed]
        detail = {"followed_goal": followed}

        def act(t, obs):
            return expert(obs + shift) + noise[t]

    elif behaviour == "other_task":
        scale = float(BEHAVIOUR_PARAMS["noise"])
        drivers = np.full(steps, -1, dtype=np.int64)
        windows = []
        for start, end in _windows(rng, steps):
            other = int(rng.integers(len(recipe.other_tasks)))
            drivers[start:end] = other
            windows.append([start, end, recipe.other_tasks[other]])
        noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)
        experts = [_expert(task) for task in recipe.other_tasks]
        detail = {"windows": windows}

        def act(t, obs):
            return (expert if drivers[t] < 0 else experts[drivers[t]])(obs) + noise[t]

    elif behaviour == "stall":
        scale = float(BEHAVIOUR_PARAMS["noise"])
        modes = np.zeros(steps, dtype=np.int64)  # 0 expert, 1 stand still, 2 retreat
        windows = []
        for start, end in _windows(rng, steps):
            mode = 1 + int(rng.integers(2))
            modes[start:end] = mode
            windows.append([start, end, "still" if mode == 1 else "retreat"])
        noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)
        detail = {"windows": windows}

        def act(t, obs):
            if modes[t] == 1:
                return np.zeros(4, dtype=np.float32)
            if modes[t] == 2:
                return -expert(obs)
            return expert(obs) + noise[t]

    else:
        raise ValueError(f"Unknown behaviour '{behaviour}'; known: {list(BEHAVIOURS)}")

    observations, actions, rewards, success = rollout(env, goal, steps, act)
    if recipe.action_labels == "expert":
        actions = np.clip(np.stack([expert(obs) for obs in observations[:-1]]), -1.0, 1.0).astype(np.float32)
    return Episode(observations, actions, rewards, success, goal, scale, behaviour, detail, route)


def collect_episodes(recipe: CollectionRecipe, on_episode=None) -> list[Episode]:
    """All episodes of one dataset; `on_episode()` is called after each (progress reporting)."""
    env = MetaWorldTaskEnv(recipe.task, seed=recipe.seed, max_episode_steps=recipe.max_episode_steps)
    if recipe.routes:
        experts = {route: route_expert(recipe.task, route) for route, _ in recipe.routes}
    else:
        experts = {"": scripted_expert(recipe.task)}
    episodes = []
    for i in range(recipe.episodes):
        episodes.append(collect_episode(env, experts, recipe, i))
        if on_episode is not None:
            on_episode()
    env.close()
    return episodes
