"""Where a policy's own trajectories leave the expert's, per Meta-World training task, on validation goals.

`action_errors` (in `llmdpd.evaluation.diagnostics`) measures actions on states the noisy expert visits.
A policy acts on the states it visits itself, and a small error there can grow once it drifts from the data.
`rollout_diagnostics` runs the policy on the validation goals and, at every step, asks the scripted expert
what it would do in the policy's state. Per task it reports:
- the funnel Meta-World's info gives: the share of episodes in which the hand came near the object
  (`near_object`), the object was grasped (`grasp_success`), and the task succeeded (`success`);
- `target_progress`: 1 - (the object's final distance to its target) / (its distance after the first step),
  averaged over episodes: 1 is on target, 0 no closer than at the start, negative farther away;
- `on_policy_error`: the squared distance (summed over action dimensions) of the policy's action to the
  expert's in the policy's own state, averaged over all steps, and over the first `early_steps` steps only
  (`on_policy_error_early`), where the policy is still near the states the data starts from.
- `first_success_step`: the mean step of the first success, over the successful episodes (None if none).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert

# act(obs [n, 39] float32) -> actions [n, 4] for the n live episodes of one task.
TaskActFn = Callable[[np.ndarray], np.ndarray]
FUNNEL = ("near_object", "grasp_success", "success")


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
        n, steps = len(envs), envs[0].max_episode_steps
        reached = {key: np.zeros(n, dtype=bool) for key in FUNNEL}
        first_success = np.full(n, -1)
        start_distance, final_distance = np.zeros(n), np.zeros(n)
        errors = np.zeros((steps, n))
        for t in range(steps):
            actions = np.clip(np.asarray(act(obs), dtype=np.float32), -1.0, 1.0)
            reference = np.clip(np.stack([expert(o) for o in obs]), -1.0, 1.0)
            errors[t] = ((actions - reference) ** 2).sum(-1)
            for i, env in enumerate(envs):
                obs[i] = env.step(actions[i])[0]
                for key in FUNNEL:
                    reached[key][i] |= bool(env.info[key])
                if env.info["success"] and first_success[i] < 0:
                    first_success[i] = t
                final_distance[i] = env.info["obj_to_target"]
                if t == 0:
                    start_distance[i] = env.info["obj_to_target"]
    finally:
        for env in envs:
            env.close()
    progress = 1.0 - final_distance / np.maximum(start_distance, 1e-6)
    succeeded = first_success >= 0
    return {
        **{key: float(reached[key].mean()) for key in FUNNEL},
        "target_progress": float(progress.mean()),
        "on_policy_error": float(errors.mean()),
        "on_policy_error_early": float(errors[:early_steps].mean()),
        "first_success_step": float(first_success[succeeded].mean()) if succeeded.any() else None,
        "episodes": n,
    }


__all__ = ["FUNNEL", "TaskActFn", "rollout_diagnostics"]
