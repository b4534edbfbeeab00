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
- `first_success_step`: the mean step of the first success, over the successful episodes (None if none).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from llmdpd.envs.metaworld import GOAL, HAND, OBJECT, MetaWorldTaskEnv, scripted_expert

# act(obs [n, 39] float32) -> actions [n, 4] for the n live episodes of one task.
TaskActFn = Callable[[np.ndarray], np.ndarray]
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
    envs = [MetaWorldTaskEnv(task, seed=env_seed, max_episode_steps=max_steps) for _ in episodes]
    expert = scripted_expert(task)
    try:
        obs = np.stack([env.reset(int(goal)) for env, goal in zip(envs, episodes)])
        start, n, steps = obs.copy(), len(envs), envs[0].max_episode_steps
        hand_to_object = np.linalg.norm(obs[:, HAND] - obs[:, OBJECT], axis=-1)
        moved = np.zeros(n)
        first_success = np.full(n, -1)
        errors = np.zeros((steps, n))
        for t in range(steps):
            actions = np.clip(np.asarray(act(obs), dtype=np.float32), -1.0, 1.0)
            reference = np.clip(np.stack([expert(o) for o in obs]), -1.0, 1.0)
            errors[t] = ((actions - reference) ** 2).sum(-1)
            for i, env in enumerate(envs):
                obs[i], _, success, _ = env.step(actions[i])
                if success and first_success[i] < 0:
                    first_success[i] = t
            hand_to_object = np.minimum(hand_to_object, np.linalg.norm(obs[:, HAND] - obs[:, OBJECT], axis=-1))
            moved = np.maximum(moved, np.linalg.norm(obs[:, OBJECT] - start[:, OBJECT], axis=-1))
    finally:
        for env in envs:
            env.close()
    to_goal = lambda o: np.linalg.norm(o[:, OBJECT] - o[:, GOAL], axis=-1)  # noqa: E731
    succeeded = first_success >= 0
    return {
        "reached_object": float((hand_to_object <= REACH_DISTANCE).mean()),
        "moved_object": float((moved >= MOVE_DISTANCE).mean()),
        "success": float(succeeded.mean()),
        "goal_progress": float((1.0 - to_goal(obs) / np.maximum(to_goal(start), 1e-6)).mean()),
        "on_policy_error": float(errors.mean()),
        "on_policy_error_early": float(errors[:early_steps].mean()),
        "first_success_step": float(first_success[succeeded].mean()) if succeeded.any() else None,
        "episodes": n,
    }


__all__ = ["MOVE_DISTANCE", "REACH_DISTANCE", "TaskActFn", "rollout_diagnostics"]
