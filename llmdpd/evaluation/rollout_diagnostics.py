"""Where a policy's own trajectories leave the expert's, per Meta-World training task, on validation goals.

`action_errors` (in `llmdpd.evaluation.diagnostics`) measures actions on states the noisy expert visits.
A policy acts on the states it visits itself, and a small error there can grow once it drifts from the data.
`rollout_diagnostics` runs the policy on the validation goals and, at every step, asks the scripted expert
what it would do in the policy's state. Per task it reports stages read from the observation, the same way
for every task (Meta-World's own info entries mean different things per task):
- `reached_object`: the share of episodes in which the hand (obs[0:3]) came within `REACH_DISTANCE` of the
  object (obs[4:7]); `moved_object`: in which the object moved `MOVE_DISTANCE` from where it started;
  `success`: in which the task succeeded;
- `goal_progress`: 1 - (the object's final distance to the goal, obs[36:39]) / (its distance at the start),
  averaged over episodes: 1 is on the goal, 0 no closer than at the start, negative farther away;
- `on_policy_error`: the squared distance (summed over action dimensions) of the policy's action to the
  expert's in the policy's own state, averaged over all steps, and over the first `early_steps` steps only
  (`on_policy_error_early`), where the policy is still near the states the data starts from;
- `first_success_step`: the mean step of the first success, over the successful episodes (None if none);
- for a task whose expert has routes (llmdpd/envs/expert_routes.py), `route_<name>`: the share of episodes
  whose object went past the wall by that route, and `route_none` by none.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmdpd.envs.expert_routes import ROUTES, route_taken
from llmdpd.envs.metaworld import GOAL, HAND, OBJECT, scripted_expert
from llmdpd.evaluation.lockstep import TaskActFn, lockstep_episodes

REACH_DISTANCE = 0.05  # metres: about a gripper's reach around an object's centre
MOVE_DISTANCE = 0.02  # metres: more than contact jitter


def rollout_diagnostics(
    task: str,
    act: TaskActFn,
    goals: Sequence[int],
    episodes_per_goal: int = 1,
    max_steps: int = 500,
    early_steps: int = 50,
    env_seed: int = 0,
) -> dict[str, float | int | None]:
    """Run `act` on `episodes_per_goal` episodes of each goal of `task` in lock step (see the module docstring)."""
    episodes = [goal for goal in goals for _ in range(episodes_per_goal)]
    clipped = lambda obs: np.clip(np.asarray(act(obs), dtype=np.float32), -1.0, 1.0)  # noqa: E731
    run = lockstep_episodes(task, episodes, clipped, env_seed=env_seed, max_episode_steps=max_steps)
    observations, n = run.observations, len(episodes)
    start, obs = observations[:, 0], observations[:, -1]
    expert = scripted_expert(task)
    visited = observations[:, :-1].reshape(-1, observations.shape[-1])
    reference = np.clip(np.stack([expert(o) for o in visited]), -1.0, 1.0).reshape(run.actions.shape)
    errors = ((run.actions - reference) ** 2).sum(-1).T.astype(np.float64)  # [steps, n]
    hand_to_object = np.linalg.norm(observations[..., HAND] - observations[..., OBJECT], axis=-1).min(1)
    moved = np.linalg.norm(observations[..., OBJECT] - start[:, None, OBJECT], axis=-1).max(1)
    first_success = np.where(run.success.any(1), run.success.argmax(1), -1)
    to_goal = lambda o: np.linalg.norm(o[:, OBJECT] - o[:, GOAL], axis=-1)  # noqa: E731
    succeeded = first_success >= 0
    routes = {}
    if task in ROUTES:
        taken = [route_taken(task, episode) for episode in observations]
        routes = {f"route_{route}": taken.count(route) / n for route in (*ROUTES[task], "none")}
    return {
        "reached_object": float((hand_to_object <= REACH_DISTANCE).mean()),
        "moved_object": float((moved >= MOVE_DISTANCE).mean()),
        "success": float(succeeded.mean()),
        "goal_progress": float((1.0 - to_goal(obs) / np.maximum(to_goal(start), 1e-6)).mean()),
        "on_policy_error": float(errors.mean()),
        "on_policy_error_early": float(errors[:early_steps].mean()),
        "first_success_step": float(first_success[succeeded].mean()) if succeeded.any() else None,
        "episodes": n,
        **routes,
    }


__all__ = ["MOVE_DISTANCE", "REACH_DISTANCE", "rollout_diagnostics"]
