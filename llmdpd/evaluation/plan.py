"""Which episodes an evaluation runs: (task, goal variation) pairs for the validation or the test protocol.

Each Meta-World task has 50 goal variations, laid out by `data.train_goals` (T) and `data.validation_goals` (V):

    [0, T)        data goals: the offline datasets use these and nothing else
    [T, T + V)    validation goals: the training tasks evaluated here guide every tuning choice
    [T + V, 50)   seen-test goals: the training tasks evaluated here, once per frozen configuration

An evaluation is of one of two kinds (`eval.split`):

- "validation": the training tasks on the validation goals; episodes are labelled split "validation". Unseen
  tasks are never part of it: they are test tasks. An experiment's validation tasks (`data.validation_tasks`:
  training tasks held out of training) are evaluated here too, on their validation goals, labelled
  "validation_unseen": what settings meant for unseen tasks are chosen on.
- "test": the training tasks on the seen-test goals (split "seen") and the unseen tasks on any of the 50
  goals (split "unseen").

Goals of a task are drawn from its pool without replacement (repeating only once the pool is exhausted) by a
generator seeded by (eval seed, task), so a task's goals do not depend on the other tasks planned, and the
same seed gives the same plan.

Tasks of other Minari datasets (`data.minari_ids`) have no goal variations: their environment draws each
episode's start from a reset seed. For them `goal` is that seed, drawn by a generator seeded by (eval seed,
task, split label), so validation, seen-test and unseen episodes start from different states.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Collection, Sequence

import numpy as np

from llmdpd.envs.metaworld import NUM_GOALS

# The kinds of evaluation (`eval.split`), and the split labels of their episodes.
EVAL_SPLITS = ("validation", "test")
EPISODE_SPLITS = {"validation": ("validation", "validation_unseen"), "test": ("seen", "unseen")}
# The split labels of episodes on tasks the policy was not trained on.
UNSEEN_SPLITS = frozenset(labels[1] for labels in EPISODE_SPLITS.values())


@dataclass(frozen=True)
class EvalEpisode:
    """One evaluation episode: goal variation `goal` of `task`; `episode` numbers the task's episodes 0, 1, ..."""

    task: str
    split: str  # "seen" or "unseen" (a test evaluation), or "validation"
    goal: int  # the goal variation; the reset seed for a task without variations (see the module docstring)
    episode: int


@dataclass(frozen=True)
class GoalLayout:
    """How the 50 goal variations of a task are shared out (see the module docstring)."""

    train_goals: int
    validation_goals: int = 0

    def __post_init__(self) -> None:
        t, v = self.train_goals, self.validation_goals
        if t < 0 or v < 0:
            raise ValueError(f"data.train_goals={t} and data.validation_goals={v} must not be negative")
        if t + v >= NUM_GOALS:
            raise ValueError(
                f"data.train_goals + data.validation_goals = {t} + {v} = {t + v} leaves no seen-test goal "
                f"variations: Meta-World has {NUM_GOALS} per task, and the seen-test goals are "
                f"[train_goals + validation_goals, {NUM_GOALS}); their sum must be below {NUM_GOALS}"
            )

    @property
    def data(self) -> range:
        return range(0, self.train_goals)

    @property
    def validation(self) -> range:
        return range(self.train_goals, self.train_goals + self.validation_goals)

    @property
    def seen_test(self) -> range:
        return range(self.train_goals + self.validation_goals, NUM_GOALS)

    @property
    def unseen(self) -> range:
        return range(NUM_GOALS)


def goal_layout(goals: Any) -> GoalLayout:
    """A `GoalLayout` from a DataConfig (anything with `train_goals` and `validation_goals`), a pair
    (train_goals, validation_goals), or an int train_goals (no validation goals: the layout before validation)."""
    if isinstance(goals, GoalLayout):
        return goals
    if isinstance(goals, (int, np.integer)) and not isinstance(goals, bool):
        return GoalLayout(int(goals), 0)
    if isinstance(goals, (tuple, list)) and len(goals) == 2:
        return GoalLayout(int(goals[0]), int(goals[1]))
    try:
        return GoalLayout(int(goals.train_goals), int(goals.validation_goals))
    except AttributeError:
        raise TypeError(
            f"expected a DataConfig, (train_goals, validation_goals) or train_goals, got {type(goals).__name__}"
        ) from None


def _check_name(split: str, goals: Any) -> GoalLayout:
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval.split must be one of {EVAL_SPLITS}, got '{split}'")
    return goal_layout(goals)


def check_split(split: str, goals: Any) -> GoalLayout:
    """The goal layout of `goals` (as for `goal_layout`) after checking that an evaluation of kind `split` can
    run on it; raises ValueError with the reason otherwise."""
    layout = _check_name(split, goals)
    if split == "validation" and not layout.validation:
        raise ValueError("eval.split=validation needs validation goal variations, but data.validation_goals is 0")
    return layout


def _task_key(task: str) -> int:
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")


def _pick_goals(task: str, pool: range, count: int, seed: int) -> list[int]:
    """`count` goals from `pool`, each used once before any repeats, in an order fixed by (seed, task)."""
    if count > 0 and len(pool) == 0:
        raise ValueError(f"no goal variations to pick from for '{task}'")
    rng = np.random.default_rng([seed, _task_key(task)])
    goals: list[int] = []
    while len(goals) < count:
        goals.extend(int(pool[i]) for i in rng.permutation(len(pool)))
    return goals[:count]


# Reset seeds of tasks without goal variations are drawn below this bound (numpy's legacy seed range).
_RESET_SEEDS = 2**31


def _pick_reset_seeds(task: str, split: str, count: int, seed: int) -> list[int]:
    """`count` distinct reset seeds for `task`'s episodes of split label `split`, fixed by (seed, task, split)."""
    rng = np.random.default_rng([seed, _task_key(task), _task_key(split)])
    return [int(s) for s in rng.choice(_RESET_SEEDS, size=count, replace=False)]


def plan_episodes(
    seen_tasks: Sequence[str],
    unseen_tasks: Sequence[str],
    episodes_per_task: int,
    train_goals: int,
    seed: int,
    *,
    validation_goals: int = 0,
    split: str = "test",
    seeded_tasks: Collection[str] = (),
    held_out_tasks: Sequence[str] = (),
) -> list[EvalEpisode]:
    """The episodes of one evaluation, training tasks first (`seen_tasks` are the training tasks).

    split "test": training tasks on the seen-test goals [train_goals + validation_goals, 50), labelled "seen",
    then unseen tasks on any of the 50 goals, labelled "unseen". split "validation": training tasks on the
    validation goals [train_goals, train_goals + validation_goals), labelled "validation", then `held_out_tasks`
    (validation tasks) on the same goals, labelled "validation_unseen"; `unseen_tasks` are ignored.
    `seeded_tasks` (Minari datasets' tasks) get reset seeds instead of goal variations. Raises ValueError for a
    goal layout that leaves no seen-test goals, and for a validation plan with no validation goals.
    """
    # A validation plan without training or validation tasks is empty, and needs no validation goals.
    layout = (check_split if seen_tasks or held_out_tasks else _check_name)(split, (train_goals, validation_goals))
    if split == "validation":
        groups = [("validation", seen_tasks, layout.validation),
                  ("validation_unseen", held_out_tasks, layout.validation)]
    else:
        groups = [("seen", seen_tasks, layout.seen_test), ("unseen", unseen_tasks, layout.unseen)]
    plan = []
    for label, tasks, pool in groups:
        for task in tasks:
            if task in seeded_tasks:
                goals = _pick_reset_seeds(task, label, episodes_per_task, seed)
            else:
                goals = _pick_goals(task, pool, episodes_per_task, seed)
            for episode, goal in enumerate(goals):
                plan.append(EvalEpisode(task, label, goal, episode))
    return plan


def check_has_tasks(split: str, seen: bool, held_out_tasks: Sequence[str]) -> None:
    """Raise ValueError for a validation evaluation with nothing to run: the training tasks switched off
    (`eval.seen` false) and no validation tasks."""
    if split == "validation" and not seen and not held_out_tasks:
        raise ValueError("eval.split=validation evaluates the training tasks, but eval.seen is false "
                         "(and there are no validation tasks)")


def plan_evaluation(
    cfg: Any, seen_tasks: Sequence[str], unseen_tasks: Sequence[str], goals: Any,
    seeded_tasks: Collection[str] | None = None, held_out_tasks: Sequence[str] = (),
) -> list[EvalEpisode]:
    """`plan_episodes` for an experiment's `eval` section: its split, seen/unseen switches, episode count, seed.

    `goals` is the experiment's DataConfig (`cfg.data`: train_goals and validation_goals; its `minari_ids`
    tasks get reset seeds unless `seeded_tasks` says which do), a pair (train_goals, validation_goals), or an
    int train_goals (no validation goals). `held_out_tasks` (the validation tasks) join a validation plan.
    """
    layout = goal_layout(goals)
    if seeded_tasks is None:
        seeded_tasks = set(getattr(goals, "minari_ids", None) or ())
    split = getattr(cfg, "split", "test")
    seen = list(seen_tasks) if cfg.seen else []
    unseen = list(unseen_tasks) if cfg.unseen and split == "test" else []
    check_has_tasks(split, bool(seen), held_out_tasks)
    return plan_episodes(
        seen, unseen, cfg.episodes_per_task, layout.train_goals, cfg.seed,
        validation_goals=layout.validation_goals, split=split, seeded_tasks=seeded_tasks,
        held_out_tasks=list(held_out_tasks) if split == "validation" else [],
    )


__all__ = [
    "EPISODE_SPLITS",
    "EVAL_SPLITS",
    "EvalEpisode",
    "GoalLayout",
    "check_has_tasks",
    "check_split",
    "goal_layout",
    "plan_episodes",
    "plan_evaluation",
]
