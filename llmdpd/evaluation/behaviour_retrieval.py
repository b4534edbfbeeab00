"""Behaviour retrieval: condition a task on the training task whose behaviour should serve it.

On unseen tasks the policies call up one training task's behaviour, and their own prompt often calls up the
wrong one (`llmdpd diagnose --retrieval`). A retrieval rule chooses, from what the agent is given (the task's
descriptions and its one demonstration, the prompt episode it is shown), the training task whose condition
(first description, the same prompt episode) then conditions every episode of the task:

- `demonstration`: on the demonstration's states, the policy acts under each training task's condition; the
  training task whose actions lie nearest the demonstration's actions (squared distance summed over action
  dimensions, averaged over states).
- `motion`: the policy is not consulted. The demonstration's motion (hand and object displacement, gripper
  opening and the hand's position relative to where the object started, at `MOTION_POINTS` times over its first
  `MOTION_STEPS` steps) against each training task's own demonstration; each of the four parts is scaled by
  its root mean square over the training tasks' demonstrations, so that none dominates by its units.
- `text`: the training task whose mean description embedding (the frozen language model's) has the highest
  cosine similarity to the task's.
- `practice`: reward-free practice in the task's own environment (llmdpd/evaluation/practice.py): from the
  state the demonstration started in, the policy acts once under each training task's condition, and the
  candidate whose motion (as for `motion`) lies nearest the demonstration's is chosen. It costs one episode of
  `MOTION_STEPS` steps per candidate and reads no reward: few-shot interaction, not zero-shot transfer.
- `imagined`: practice in a transition model learned from the training data
  (llmdpd/evaluation/imagined_practice.py) instead of the task's environment: zero-shot.
- `distilled`: imagined practice's choices on the training tasks (where its transition model is accurate), learned
  as a ranking of the prompt-only signals above (llmdpd/evaluation/distilled_practice.py): zero-shot, and on the
  unseen task neither its environment nor the transition model is consulted.

With `unconditional` (`eval.prompt_retrieval_unconditional`) the policy's unconditional behaviour (the all-null
condition, `UNCONDITIONAL`) is one more candidate of the rules that consult the policy, and with `own`
(`eval.prompt_retrieval_own`) so is the task's own prompt (the candidate named as the task itself).

Otherwise a task is never offered itself: on training tasks (`eval.prompt_retrieval_leave_one_out`, the validation
of a rule) each chooses among the others, as an unseen task would.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmdpd.config.schema import CHOICES, POLICY_RETRIEVAL_RULES
from llmdpd.envs.metaworld import GRIPPER, HAND, OBJECT
from llmdpd.evaluation.agent import UNCONDITIONAL
from llmdpd.evaluation.diagnostics import task_conditions

RULES = tuple(rule for rule in CHOICES["eval.prompt_retrieval"] if rule != "none")
# The rules that read the transition models of the training data (`ensemble`).
MODEL_RULES = ("imagined", "distilled")
MOTION_STEPS = 200  # the scripted experts finish most tasks within this many steps
MOTION_POINTS = 20


def retrieve_behaviours(rule: str, module, source: Any, tasks: Sequence[str], training_tasks: Sequence[str],
                        prompt_episode: int, acting: Mapping[str, Any] | None = None, env_seed: int = 0,
                        ensemble=None, unconditional: bool = False, own: bool = False
                        ) -> dict[str, tuple[str, dict[str, float]]]:
    """task -> (the training task chosen for it by `rule`, each candidate's distance), each task choosing
    among the training tasks other than itself. `env_seed`: the MT1 seed of the datasets (`practice` only);
    `ensemble`: the `WorldModelEnsemble` of `imagined` and `distilled` (default: `training_world_models(source)`);
    `unconditional`: offer `UNCONDITIONAL` too, `own`: the task's own prompt too (rules that consult the policy,
    `POLICY_RETRIEVAL_RULES`, only)."""
    if rule not in RULES:
        raise ValueError(f"unknown retrieval rule '{rule}' (expected one of {', '.join(RULES)})")
    if (unconditional or own) and rule not in POLICY_RETRIEVAL_RULES:
        raise ValueError(f"retrieval rule '{rule}' does not consult the policy: it cannot offer the unconditional "
                         "behaviour or the task's own prompt")
    if rule in MODEL_RULES and ensemble is None:
        from llmdpd.evaluation.imagined_practice import training_world_models

        ensemble = training_world_models(source)
    if rule == "distilled":
        from llmdpd.evaluation.distilled_practice import distilled_distances, training_ranker

        ranker = training_ranker(module, source, training_tasks, prompt_episode, ensemble, acting)
    out = {}
    for task in tasks:
        candidates = [other for other in training_tasks if other != task] + [UNCONDITIONAL] * unconditional
        candidates += [task] * own
        if rule == "demonstration":
            distances = behaviour_distances(module, source, task, candidates, prompt_episode, acting)
        elif rule == "motion":
            distances = motion_distances(source, task, candidates, prompt_episode)
        elif rule == "practice":
            from llmdpd.evaluation.practice import practice_distances

            distances = practice_distances(module, source, task, candidates, prompt_episode, acting, env_seed)
        elif rule == "imagined":
            from llmdpd.evaluation.imagined_practice import imagined_distances

            distances = imagined_distances(module, ensemble, source, task, candidates, prompt_episode, acting)
        elif rule == "distilled":
            distances = distilled_distances(ranker, module, source, task, candidates, prompt_episode, acting)
        else:
            distances = description_distances(source, task, candidates)
        out[task] = (min(distances, key=distances.__getitem__), distances)
    return out


@torch.no_grad()
def behaviour_distances(module, source: Any, task: str, candidates: Sequence[str], prompt_episode: int,
                        acting: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Each candidate's mean squared action error against `task`'s demonstration, acting on its states."""
    episode = source.prompt_episodes(task)[prompt_episode]
    device = module.obs_mean.device
    obs = torch.as_tensor(np.asarray(episode["observations"][:-1], np.float32), device=device)
    demonstrated = torch.as_tensor(np.asarray(episode["actions"], np.float32), device=device)
    errors = {}
    for other, cond in task_conditions(module, source, candidates, prompt_episode).items():
        actions = module.act(obs, cond, acting=dict(acting) if acting else None)
        errors[other] = (actions - demonstrated).pow(2).sum(-1).mean().item()
    return errors


def demonstration_observations(source: Any, task: str, prompt_episode: int) -> np.ndarray:
    """The observations [<= MOTION_STEPS + 1, 39] of `task`'s demonstration (prompt episode `prompt_episode`) that
    practice, real or imagined, compares its episodes with."""
    observations = source.prompt_episodes(task)[prompt_episode]["observations"]
    return np.asarray(observations, np.float32)[: MOTION_STEPS + 1]


def motion_descriptor(observations: np.ndarray) -> list[np.ndarray]:
    """The four parts of a demonstration's motion (see the module docstring), each a flat vector."""
    obs = np.asarray(observations, np.float64)[: MOTION_STEPS + 1]
    at = np.linspace(0, len(obs) - 1, MOTION_POINTS + 1)[1:].round().astype(int)
    hand, obj = obs[:, HAND], obs[:, OBJECT]
    return [(hand[at] - hand[0]).ravel(), (obj[at] - obj[0]).ravel(), obs[at, GRIPPER].ravel(),
            (hand[at] - obj[0]).ravel()]


def motion_distances(source: Any, task: str, candidates: Sequence[str], prompt_episode: int) -> dict[str, float]:
    """Each candidate's scaled squared distance between its demonstration's motion and `task`'s."""
    return {name: float(parts.sum())
            for name, parts in demonstration_motion_parts(source, task, candidates, prompt_episode).items()}


def demonstration_motion_parts(source: Any, task: str, candidates: Sequence[str], prompt_episode: int
                               ) -> dict[str, np.ndarray]:
    """Each candidate's `motion_part_distances` between its demonstration and `task`'s (prompt episode
    `prompt_episode` of each)."""
    def observations(name: str) -> np.ndarray:
        return source.prompt_episodes(name)[prompt_episode]["observations"]

    return motion_part_distances(observations(task), {other: observations(other) for other in candidates})


def nearest_motion(query: np.ndarray, references: Mapping[str, np.ndarray], scale_with_query: bool = False
                   ) -> dict[str, float]:
    """Each reference trajectory's distance to the query's motion (observations [T, 39] each): the sum over parts
    of `motion_part_distances`."""
    return {name: float(parts.sum())
            for name, parts in motion_part_distances(query, references, scale_with_query).items()}


def motion_part_distances(query: np.ndarray, references: Mapping[str, np.ndarray], scale_with_query: bool = False
                          ) -> dict[str, np.ndarray]:
    """Each reference trajectory's distance to the query's motion per part of `motion_descriptor` ([4]): the
    squared distance, scaled by that part's root mean square over the references (and the query, with
    `scale_with_query`: then a part that no reference moves, as when no practice episode touches the object, is
    still on the scale of the query's)."""
    query_parts = motion_descriptor(query)
    parts = {name: motion_descriptor(obs) for name, obs in references.items()}
    scaled = [*parts.values(), query_parts] if scale_with_query else list(parts.values())
    scales = [np.sqrt(np.mean([np.mean(p[i] ** 2) for p in scaled])) + 1e-8 for i in range(len(query_parts))]
    return {name: np.array([np.mean((q - r) ** 2) / s**2 for q, r, s in zip(query_parts, p, scales)])
            for name, p in parts.items()}


def description_distances(source: Any, task: str, candidates: Sequence[str]) -> dict[str, float]:
    """Each candidate's cosine distance (1 - cosine similarity) between its mean description embedding and
    `task`'s."""
    def embedding(name: str) -> torch.Tensor:
        emb = source.text_embeddings(name)
        if emb is None:
            raise ValueError("eval.prompt_retrieval=text needs text embeddings (text.enabled is false)")
        return torch.nn.functional.normalize(emb.float().mean(0), dim=0)

    query = embedding(task)
    return {other: float(1.0 - query @ embedding(other)) for other in candidates}
