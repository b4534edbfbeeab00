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
- `closing_offset`: where the policy first closes the gripper (grab effort above `CLOSING_EFFORT`), the hand's
  distance to the object in the table's plane (metres), averaged over the episodes that close it (None if none),
  and over the failed ones among them (`closing_offset_failed`): a grasp closed off the object's centre misses
  or loses it;
- `lost_object`: the share of episodes that reached the object, failed, and end with the hand farther than
  `LOST_DISTANCE` from it: the object was let go, or never held;
- for a task whose expert has routes (llmdpd/envs/expert_routes.py), `route_<name>`: the share of episodes
  whose object went past the wall by that route, and `route_none` by none; `route_none_at_wall`: of those, the
  share (of all episodes) that end where the routes part (the object moved and held in front of the wall), the
  stall of a policy that averages the routes. The rest of `route_none` failed elsewhere, such as at the grasp.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llmdpd.envs.expert_routes import ROUTES, route_taken, where_routes_part
from llmdpd.envs.metaworld import GOAL, HAND, OBJECT, scripted_expert
from llmdpd.evaluation.lockstep import TaskActFn, lockstep_episodes

REACH_DISTANCE = 0.05  # metres: about a gripper's reach around an object's centre
MOVE_DISTANCE = 0.02  # metres: more than contact jitter
CLOSING_EFFORT = 0.5  # a grab effort above this closes the gripper (the scripted experts close with 0.6-1.0)
LOST_DISTANCE = 0.1  # metres: twice the reach; a hand this far from the object at the end is not holding it


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
    hand_to_object_path = np.linalg.norm(observations[..., HAND] - observations[..., OBJECT], axis=-1)
    hand_to_object = hand_to_object_path.min(1)
    moved = np.linalg.norm(observations[..., OBJECT] - start[:, None, OBJECT], axis=-1).max(1)
    first_success = np.where(run.success.any(1), run.success.argmax(1), -1)
    to_goal = lambda o: np.linalg.norm(o[:, OBJECT] - o[:, GOAL], axis=-1)  # noqa: E731
    succeeded = first_success >= 0
    closes = run.actions[..., 3] > CLOSING_EFFORT  # [n, steps]
    closed = closes.any(1)
    at_close = observations[np.arange(n), closes.argmax(1)]  # the state in which the gripper first closes
    offsets = np.linalg.norm(at_close[:, HAND][:, :2] - at_close[:, OBJECT][:, :2], axis=-1)
    reached = hand_to_object <= REACH_DISTANCE
    lost = reached & ~succeeded & (hand_to_object_path[:, -1] > LOST_DISTANCE)
    routes = {}
    if task in ROUTES:
        taken = [route_taken(task, episode) for episode in observations]
        routes = {f"route_{route}": taken.count(route) / n for route in (*ROUTES[task], "none")}
        at_wall = where_routes_part(task, obs) & (np.asarray(taken) == "none") & (moved >= MOVE_DISTANCE)
        routes["route_none_at_wall"] = float(at_wall.mean())
    return {
        "reached_object": float(reached.mean()),
        "moved_object": float((moved >= MOVE_DISTANCE).mean()),
        "success": float(succeeded.mean()),
        "goal_progress": float((1.0 - to_goal(obs) / np.maximum(to_goal(start), 1e-6)).mean()),
        "on_policy_error": float(errors.mean()),
        "on_policy_error_early": float(errors[:early_steps].mean()),
        "first_success_step": float(first_success[succeeded].mean()) if succeeded.any() else None,
        "closing_offset": float(offsets[closed].mean()) if closed.any() else None,
        "closing_offset_failed": float(offsets[closed & ~succeeded].mean()) if (closed & ~succeeded).any() else None,
        "lost_object": float(lost.mean()),
        "episodes": n,
        **routes,
    }


__all__ = ["CLOSING_EFFORT", "LOST_DISTANCE", "MOVE_DISTANCE", "REACH_DISTANCE", "rollout_diagnostics"]
