"""Evaluate the policy during and at the end of training, log the curves and write `eval.json`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch

from llmdpd.config.schema import EvalConfig
from llmdpd.evaluation.results import SPLITS, scalar_metrics, summarise, write_eval_json
from llmdpd.evaluation.rollout import ActFn, EpisodeResult, EvalEpisode, evaluate_episodes, plan_evaluation

MakeAgent = Callable[[L.LightningModule, list[EvalEpisode]], ActFn]


class EvaluationCallback(L.Callback):
    """Rolls out seen and unseen tasks every `cfg.every_n_steps` training steps (0: only at the end) and when
    training ends.

    Every evaluation runs the same plan of episodes (`plan_evaluation`, seeded by `cfg.seed`). Under DDP rank r runs
    episodes r, r + world, ... and the results are gathered on every rank. Rank 0 logs
    `eval/<split>/<task>/{success,final_success,return}` and `eval/<split>/{success,final_success,return}_mean`
    to every logger at the trainer's global step, adds a TensorBoard custom-scalars layout grouping the
    curves per split, and writes `out_path` (eval.json) after the last evaluation.

    `make_agent(module, episodes)` builds the act_fn for one rank's episodes (e.g. a `PolicyAgent`). The
    module is in eval mode during rollouts. `env_seed` must be the seed the datasets were generated with
    (it fixes Meta-World's goal variations); `run_seed` is recorded in eval.json.
    """

    def __init__(
        self,
        make_agent: MakeAgent,
        cfg: EvalConfig,
        seen_tasks: Sequence[str],
        unseen_tasks: Sequence[str],
        train_goals: int,
        out_path: str | Path,
        env_seed: int = 0,
        run_seed: int = 0,
    ) -> None:
        self.make_agent = make_agent
        self.cfg = cfg
        self.seen_tasks = list(seen_tasks) if cfg.seen else []
        self.unseen_tasks = list(unseen_tasks) if cfg.unseen else []
        self.episodes = plan_evaluation(cfg, seen_tasks, unseen_tasks, train_goals)
        self.out_path = Path(out_path)
        self.env_seed = env_seed
        self.run_seed = run_seed
        self.last_summary: dict[str, Any] | None = None
        self._last_step: int | None = None
        self._periods_done = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_custom_scalars"):
                experiment.add_custom_scalars(self.layout())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume, count the periods already behind us so that evaluation does not repeat at once.
        every = self.cfg.every_n_steps
        self._periods_done = trainer.global_step // every if every > 0 else 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.cfg.every_n_steps
        # global_step may advance by more than one per batch (several optimizers in manual optimisation).
        if every > 0 and trainer.global_step // every > self._periods_done:
            self._periods_done = trainer.global_step // every
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if 0 < trainer.max_steps and trainer.global_step < trainer.max_steps:
            return  # stopped early (preempted): the resumed run evaluates; a preemption window is short
        if self._last_step != trainer.global_step:
            self.evaluate(trainer, pl_module)
        if trainer.is_global_zero and self.last_summary is not None:
            write_eval_json(self.out_path, self.last_summary)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Run this rank's share of the episodes, gather all results, log them; returns the summary."""
        rank, world = trainer.global_rank, trainer.world_size
        mine = list(range(rank, len(self.episodes), world))
        results: list[EpisodeResult] = []
        if mine:
            episodes = [self.episodes[i] for i in mine]
            was_training = pl_module.training
            pl_module.eval()
            try:
                act_fn = self.make_agent(pl_module, episodes)
                results = evaluate_episodes(
                    episodes, act_fn, self.cfg.max_episode_steps, workers=self.cfg.workers, env_seed=self.env_seed
                )
            finally:
                pl_module.train(was_training)
        ordered = _gather(list(zip(mine, results)), world)
        summary = summarise(ordered, seed=self.run_seed, episodes_per_task=self.cfg.episodes_per_task)
        if trainer.is_global_zero:
            metrics = scalar_metrics(summary)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.last_summary = summary
        self._last_step = trainer.global_step
        return summary

    def layout(self) -> dict[str, dict[str, list]]:
        """TensorBoard custom-scalars layout: per split, one chart per metric with a line per task."""
        layout = {}
        for split, tasks in zip(SPLITS, (self.seen_tasks, self.unseen_tasks)):
            if not tasks:
                continue
            charts = {
                f"{key} per task": ["Multiline", [_exact(f"eval/{split}/{task}/{key}") for task in tasks]]
                for key in ("success", "final_success", "return")
            }
            charts["success means"] = [
                "Multiline", [_exact(f"eval/{split}/success_mean"), _exact(f"eval/{split}/final_success_mean")]
            ]
            charts["return mean"] = ["Multiline", [_exact(f"eval/{split}/return_mean")]]
            layout[f"eval/{split}"] = charts
        return layout


def _exact(tag: str) -> str:
    """Custom-scalars charts select tags by regular expression."""
    return f"^{re.escape(tag)}$"


def _gather(indexed: list[tuple[int, EpisodeResult]], world: int) -> list[EpisodeResult]:
    """All ranks' (episode index, result) pairs, on every rank, as results in episode order."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, indexed)
        indexed = [pair for part in parts for pair in part]
    return [result for _, result in sorted(indexed, key=lambda pair: pair[0])]
