"""Distilled practice: imagined practice's choices on the training tasks, learned as a ranking of prompt-only signals.

Imagined practice (llmdpd/evaluation/imagined_practice.py) is accurate where its transition model was fitted, on
the training tasks, and loses its way on an unseen task's new object. This rule uses it only there: each training
task, as if it were unseen, is imagined under every other training task's condition (leave-one-out), and a linear
ranker learns which of the signals an unseen task's prompt also gives predict how near each candidate's imagined
episode comes to the task's demonstration. On an unseen task the ranker alone chooses; neither the task's
environment nor the transition model is consulted.

The signals per (task, candidate) pair (`SIGNALS`): the four parts of the motion distance between the task's
demonstration and the candidate's (`demonstration_motion_parts`), the imitation error of the policy under the
candidate's condition on the demonstration's states (`behaviour_distances`), and the cosine distance of their
mean descriptions (`description_distances`). Each signal and the target are log-transformed and standardised
across a task's candidates, so the ranker compares candidates of one task and never tasks with each other. The
ridge penalty is chosen by leave-one-task-out on the training tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from llmdpd.evaluation.behaviour_retrieval import (
    behaviour_distances, demonstration_motion_parts, description_distances,
)

SIGNALS = ("hand_motion", "object_motion", "gripper", "hand_to_object", "imitation", "description")
RIDGES = (0.1, 1.0, 10.0, 100.0)


def standardised(values: np.ndarray) -> np.ndarray:
    """log(values) standardised along axis 0 (a task's candidates); a constant column becomes zeros."""
    logged = np.log(np.asarray(values, np.float64) + 1e-8)
    spread = logged.std(0)
    return (logged - logged.mean(0)) / np.where(spread > 0, spread, 1.0)


def pair_signals(module, source: Any, task: str, candidates: Sequence[str], prompt_episode: int,
                 acting: Mapping[str, Any] | None = None) -> np.ndarray:
    """The raw signals [len(candidates), len(SIGNALS)] of `task` against each candidate (module docstring); the
    description column is zeros without text embeddings."""
    motion = demonstration_motion_parts(source, task, candidates, prompt_episode)
    imitation = behaviour_distances(module, source, task, candidates, prompt_episode, acting)
    has_text = source.text_embeddings(task) is not None
    description = description_distances(source, task, candidates) if has_text else dict.fromkeys(candidates, 0.0)
    return np.array([[*motion[c], imitation[c], description[c]] for c in candidates])


@dataclass
class PracticeRanker:
    """A linear score over the standardised signals (`weights`, one per `SIGNALS`): the lower, the nearer the
    candidate's practice is predicted to move to the task's demonstration. `ridge` is the penalty it was fitted
    with and `held_out_regret` the leave-one-task-out mean standardised target of its choices (lower is better;
    the best candidate of a task is about -1.5 to -2)."""

    weights: np.ndarray
    ridge: float
    held_out_regret: float

    def scores(self, signals: np.ndarray) -> np.ndarray:
        """Predicted standardised practice distance of each candidate, from its raw signals [n, len(SIGNALS)]."""
        return standardised(signals) @ self.weights


def fit_weights(signals: Sequence[np.ndarray], targets: Sequence[np.ndarray], ridge: float) -> np.ndarray:
    """Ridge regression of the standardised targets on the standardised signals, pooled over tasks (each task's
    raw signals [n, len(SIGNALS)] and raw target distances [n])."""
    x = np.concatenate([standardised(s) for s in signals])
    y = np.concatenate([standardised(t[:, None])[:, 0] for t in targets])
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)


def fit_ranker(signals: Sequence[np.ndarray], targets: Sequence[np.ndarray], ridges: Sequence[float] = RIDGES
               ) -> PracticeRanker:
    """The ranker with the ridge whose leave-one-task-out choices have the lowest mean standardised target,
    refitted on every task."""
    if len(signals) < 2:
        raise ValueError("distilled practice needs at least two training tasks to fit and check its ranker")
    regrets = {}
    for ridge in ridges:
        chosen = []
        for k in range(len(signals)):
            weights = fit_weights([*signals[:k], *signals[k + 1:]], [*targets[:k], *targets[k + 1:]], ridge)
            pick = int(np.argmin(standardised(signals[k]) @ weights))
            chosen.append(standardised(targets[k][:, None])[pick, 0])
        regrets[ridge] = float(np.mean(chosen))
    ridge = min(ridges, key=regrets.__getitem__)
    return PracticeRanker(fit_weights(signals, targets, ridge), ridge, regrets[ridge])


def training_ranker(module, source: Any, training_tasks: Sequence[str], prompt_episode: int, ensemble,
                    acting: Mapping[str, Any] | None = None) -> PracticeRanker:
    """The ranker fitted on `training_tasks`, each imagined (in `ensemble`) under every other one's condition."""
    from llmdpd.evaluation.imagined_practice import imagined_distances

    signals, targets = [], []
    for task in training_tasks:
        candidates = [other for other in training_tasks if other != task]
        distances = imagined_distances(module, ensemble, source, task, candidates, prompt_episode, acting)
        signals.append(pair_signals(module, source, task, candidates, prompt_episode, acting))
        targets.append(np.array([distances[c] for c in candidates]))
    ranker = fit_ranker(signals, targets)
    print(f"distilled practice: ranker on {len(training_tasks)} training tasks, ridge {ranker.ridge:g}, "
          f"leave-one-task-out regret {ranker.held_out_regret:.2f}; weights " +
          ", ".join(f"{name} {w:+.2f}" for name, w in zip(SIGNALS, ranker.weights)))
    return ranker


def distilled_distances(ranker: PracticeRanker, module, source: Any, task: str, candidates: Sequence[str],
                        prompt_episode: int, acting: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Each candidate's predicted standardised practice distance for `task` (the ranker's score)."""
    scores = ranker.scores(pair_signals(module, source, task, candidates, prompt_episode, acting))
    return {c: float(s) for c, s in zip(candidates, scores)}
