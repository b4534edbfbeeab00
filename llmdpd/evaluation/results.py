"""Evaluation summaries: per-task and per-split means, and the run directory's `eval.json`.

eval.json:
    {"tasks":      {task: {"split", "success", "final_success", "return", "episodes", "goals"}},
     "seen":       {"success_mean", "final_success_mean", "return_mean", "tasks", "episodes"},
     "unseen":     {... as "seen"},
     "validation": {... as "seen"},
     "validation_unseen": {... as "seen"},
     "eval_split": "test" or "validation", "seed": the run's seed, "episodes_per_task": ...}

A test evaluation (`eval.split=test`) fills "seen" (training tasks on seen-test goals) and "unseen"; a
validation evaluation fills "validation" (training tasks on validation goals) and "validation_unseen" (the
validation tasks, training tasks held out of training, on their validation goals). A split's means are over its
tasks (each task weighs the same); a split with no tasks has null means. "goals" lists each task's goal
variations in episode order, so that two evaluations can be checked to have run the same episode plan.
Older eval.json files may lack "validation", "eval_split" and "goals"; readers treat them as absent.

Tasks of other Minari datasets: "goals" lists the episodes' reset seeds; "success" and "final_success" are
null when the environment reports no success (split means then average the tasks that report one), and
"normalized_return" (100 x (return - random) / (expert - random), by the dataset's reference scores, as D4RL
reports it) is present when the dataset has reference scores.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from llmdpd.evaluation.rollout import EpisodeResult
from llmdpd.files import write_text_atomic

# Split labels of episodes and tasks: "seen" and "unseen" in a test evaluation, "validation" and
# "validation_unseen" (held-out validation tasks) in a validation one.
SPLITS = ("seen", "unseen", "validation", "validation_unseen")


def summarise(
    results: Sequence[EpisodeResult], seed: int, episodes_per_task: int | None = None, eval_split: str | None = None
) -> dict[str, Any]:
    """The eval.json structure of one evaluation; `episodes_per_task` defaults to the largest count seen, and
    `eval_split` ("test" or "validation") to "validation" when the results are validation episodes."""
    by_task: dict[str, list[EpisodeResult]] = {}
    for result in results:
        by_task.setdefault(result.task, []).append(result)
    tasks = {}
    for task, rows in by_task.items():
        splits = {row.split for row in rows}
        if len(splits) != 1:
            raise ValueError(f"Task '{task}' appears in several splits: {sorted(splits)}")
        tasks[task] = {
            "split": rows[0].split,
            "success": _mean_or_none([row.success for row in rows]),
            "final_success": _mean_or_none([row.final_success for row in rows]),
            "return": float(np.mean([row.episode_return for row in rows])),
            "episodes": len(rows),
            "goals": [row.goal for row in sorted(rows, key=lambda row: row.episode)],
        }
        normalized = _mean_or_none([row.normalized_return for row in rows])
        if normalized is not None:
            tasks[task]["normalized_return"] = 100.0 * normalized
    summary: dict[str, Any] = {"tasks": tasks, **split_summaries(tasks)}
    if eval_split is None:
        eval_split = "validation" if any(entry["split"].startswith("validation") for entry in tasks.values()) else "test"
    summary["eval_split"] = eval_split
    summary["seed"] = seed
    summary["episodes_per_task"] = (
        episodes_per_task if episodes_per_task is not None else max((e["episodes"] for e in tasks.values()), default=0)
    )
    return summary


def split_summaries(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """eval.json's block of each split from its per-task entries: means over the split's tasks, each task
    weighing the same, and the split's task and episode counts."""
    blocks = {}
    for split in SPLITS:
        members = [entry for entry in tasks.values() if entry["split"] == split]
        blocks[split] = {
            "success_mean": _mean([entry["success"] for entry in members if entry["success"] is not None]),
            "final_success_mean": _mean(
                [entry["final_success"] for entry in members if entry["final_success"] is not None]
            ),
            "return_mean": _mean([entry["return"] for entry in members]),
            "tasks": len(members),
            "episodes": sum(entry["episodes"] for entry in members),
        }
    return blocks


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _mean_or_none(values: list) -> float | None:
    """The mean of `values`, or None when any is None (an environment that does not report the quantity)."""
    return None if not values or any(value is None for value in values) else float(np.mean(values))


def scalar_metrics(summary: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for loggers: <prefix>/<split>/<task>/{success,final_success,return} and split means."""
    metrics = {}
    for task, entry in summary["tasks"].items():
        for key in ("success", "final_success", "return", "normalized_return"):
            if entry.get(key) is not None:
                metrics[f"{prefix}/{entry['split']}/{task}/{key}"] = entry[key]
    for split in SPLITS:
        for key in ("success_mean", "final_success_mean", "return_mean"):
            if summary.get(split, {}).get(key) is not None:
                metrics[f"{prefix}/{split}/{key}"] = summary[split][key]
    return metrics


def write_eval_json(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Write `summary` atomically: readers see the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")


def read_eval_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)
