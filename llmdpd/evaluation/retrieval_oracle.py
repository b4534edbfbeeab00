"""Retrieval oracle: what the best training behaviour scores on each unseen task, against the task's own prompt.

A policy that can only call up behaviours it was trained on scores on an unseen task at most what its best
training behaviour scores there. This rolls out every unseen task under its own prompt and under each training
task's prompt (that task's descriptions and demonstration, `eval.prompt_task`) on two independent episode plans
(evaluation seeds s and s + 1). Per unseen task:

- `own`: success under its own prompt (both plans);
- `best` / `best_task`: the highest success of one training prompt (both plans); the maximum of several noisy
  estimates, so an upper bound;
- `oracle`: the training prompt chosen on one plan, scored on the other, averaged both ways: what choosing the
  right training behaviour would score, without the maximum's optimism;
- `by_prompt`: success under each training prompt (both plans).

`score_rules` scores retrieval rules' choices (llmdpd/evaluation/behaviour_retrieval.py) on that table: what each
rule's choice of training prompt scores there, against the oracle's.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

# One evaluation: (prompt task or "" for the task's own, evaluation seed) -> {unseen task: success}.
Evaluate = Callable[[str, int], dict[str, float]]


def retrieval_oracle(evaluate: Evaluate, training_tasks: list[str], seed: int) -> dict[str, Any]:
    """The table above from `evaluate`; `mean` averages every column over the unseen tasks."""
    prompts = ["", *training_tasks]
    plans = [{prompt: evaluate(prompt, s) for prompt in prompts} for s in (seed, seed + 1)]
    tasks = {}
    for task in plans[0][""]:
        by_prompt = {j: (plans[0][j][task] + plans[1][j][task]) / 2 for j in training_tasks}
        chosen = [max(training_tasks, key=lambda j: plan[j][task]) for plan in plans]
        best_task = max(training_tasks, key=by_prompt.__getitem__)
        tasks[task] = {
            "own": (plans[0][""][task] + plans[1][""][task]) / 2,
            "best": by_prompt[best_task],
            "best_task": best_task,
            "oracle": (plans[1][chosen[0]][task] + plans[0][chosen[1]][task]) / 2,
            "by_prompt": by_prompt,
        }
    mean = {k: sum(e[k] for e in tasks.values()) / len(tasks) for k in ("own", "best", "oracle")} if tasks else {}
    return {"plans": [seed, seed + 1], "tasks": tasks, "mean": mean}


def score_rules(oracle: Mapping[str, Any], choices: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, Any]]:
    """Per rule: `success`, the mean over unseen tasks of its chosen training prompt's success (`by_prompt`, both
    plans); `best_task_picks`, on how many tasks it chose `best_task`; and its `choices`."""
    tasks = oracle["tasks"]
    return {rule: {"success": sum(tasks[t]["by_prompt"][chosen[t]] for t in tasks) / len(tasks),
                   "best_task_picks": sum(chosen[t] == tasks[t]["best_task"] for t in tasks),
                   "choices": {t: chosen[t] for t in tasks}}
            for rule, chosen in choices.items()} if tasks else {}


def checkpoint_evaluator(cfg: Any, ckpt: str, episodes_per_task: int) -> Evaluate:
    """`Evaluate` by rolling out `ckpt` on the unseen tasks of `cfg`'s test plan, `episodes_per_task` each."""
    from llmdpd.evaluation.runner import evaluate_checkpoint

    def evaluate(prompt_task: str, seed: int) -> dict[str, float]:
        run = copy.deepcopy(cfg)
        run.eval.split, run.eval.seen, run.eval.unseen = "test", False, True
        run.eval.prompt_task, run.eval.seed, run.eval.episodes_per_task = prompt_task, seed, episodes_per_task
        summary = evaluate_checkpoint(run, ckpt)
        return {task: entry["success"] for task, entry in summary["tasks"].items() if entry["split"] == "unseen"}

    return evaluate
