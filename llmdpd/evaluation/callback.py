"""Evaluate the policy during and at the end of training, log the curves and write `eval.json`.

Which episodes run is `eval.split`: "validation" (training tasks on the validation goals, logged under
`eval/validation/...`) or "test" (training tasks on the seen-test goals under `eval/seen/...`, unseen tasks
under `eval/unseen/...`); see `llmdpd.evaluation.plan`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch

from llmdpd.config.schema import DataConfig, EvalConfig
from llmdpd.evaluation.environments import EpisodeEnvironments
from llmdpd.evaluation.plan import EvalEpisode, GoalLayout, goal_layout, plan_evaluation
from llmdpd.evaluation.results import SPLITS, scalar_metrics, summarise, write_eval_json
from llmdpd.evaluation.rollout import ActFn, EpisodeResult, evaluate_episodes
from llmdpd.evaluation.videos import log_videos, plan_videos

MakeAgent = Callable[[L.LightningModule, list[EvalEpisode]], ActFn]


class EvaluationCallback(L.Callback):
    """Rolls out the planned episodes every `cfg.every_n_steps` training steps (0: only at the end) and when
    training ends.

    Every evaluation runs the same plan of episodes (`plan_evaluation`, seeded by `cfg.seed`, of the kind
    `cfg.split`: "test" plans seen and unseen tasks, "validation" the training tasks and the `held_out_tasks`
    (the experiment's validation tasks) on validation goals).
    Under DDP rank r runs episodes r, r + world, ... and the results are gathered on every rank. Rank 0 logs
    `eval/<split>/<task>/{success,final_success,return}` and `eval/<split>/{success,final_success,return}_mean`
    to every logger at the trainer's global step, adds a TensorBoard custom-scalars layout grouping the
    curves per split, and writes `out_path` (eval.json; nothing when None) after the last evaluation.

    With `cfg.video` = N > 0, rank 0 renders the first N of its episodes of every task off-screen, writes them
    as mp4 files under `video_dir/step<global step>/` (default: `videos/` beside `out_path`, else under the
    trainer's root directory) and logs them to every TensorBoard logger as animated GIFs
    (`video/<split>/<task>/episode<k>`).

    The goal layout comes from `data_cfg` (the experiment's DataConfig: train_goals, validation_goals), or
    from `train_goals` and `validation_goals`; `train_goals` alone means no validation goals (seen-test goals
    [train_goals, 50)), the layout before validation goals existed, and warns.

    `make_agent(module, episodes)` builds the act_fn for one rank's episodes (e.g. a `PolicyAgent`). The
    module is in eval mode during rollouts. `env_seed` must be the seed the datasets were generated with
    (it fixes Meta-World's goal variations); `run_seed` is recorded in eval.json. At most `max_envs`
    environments live at once (default: `cfg.max_envs`). Tasks in `data_cfg.minari_ids` evaluate on their
    dataset's own environment, read from `data_dir`.
    """

    def __init__(
        self,
        make_agent: MakeAgent,
        cfg: EvalConfig,
        seen_tasks: Sequence[str],
        unseen_tasks: Sequence[str],
        train_goals: int | None = None,
        out_path: str | Path | None = None,
        env_seed: int = 0,
        run_seed: int = 0,
        *,
        validation_goals: int | None = None,
        data_cfg: DataConfig | None = None,
        max_envs: int | None = None,
        data_dir: str | Path = "data",
        video_dir: str | Path | None = None,
        held_out_tasks: Sequence[str] = (),
    ) -> None:
        self.make_agent = make_agent
        self.cfg = cfg
        self.goals = _goal_layout(train_goals, validation_goals, data_cfg)
        self.split = getattr(cfg, "split", "test")
        minari_ids = dict(data_cfg.minari_ids) if data_cfg is not None else {}
        self.episodes = plan_evaluation(cfg, seen_tasks, unseen_tasks, self.goals, seeded_tasks=set(minari_ids),
                                        held_out_tasks=held_out_tasks)
        # Tasks per split label, in plan order (the TensorBoard layout).
        self.split_tasks: dict[str, list[str]] = {}
        for episode in self.episodes:
            tasks = self.split_tasks.setdefault(episode.split, [])
            if episode.task not in tasks:
                tasks.append(episode.task)
        # The training tasks evaluated (split "seen" or "validation") and the unseen or validation tasks evaluated.
        self.seen_tasks = self.split_tasks.get("seen", []) + self.split_tasks.get("validation", [])
        self.unseen_tasks = self.split_tasks.get("unseen", []) + self.split_tasks.get("validation_unseen", [])
        self.out_path = Path(out_path) if out_path is not None else None
        self.env_seed = env_seed
        self.run_seed = run_seed
        self.max_envs = max_envs if max_envs is not None else int(cfg.max_envs)
        self.environments = EpisodeEnvironments(
            metaworld_seed=env_seed,
            minari_ids=minari_ids,
            data_dir=str(data_dir),
            video_size=int(getattr(cfg, "video_size", 224)),
        )
        # Before any training: a task whose environment cannot be had fails here, in one line.
        self.environments.check(self.episodes)
        self.video_dir = Path(video_dir) if video_dir is not None else (
            self.out_path.parent / "videos" if self.out_path is not None else None
        )
        self.last_summary: dict[str, Any] | None = None
        self._last_step: int | None = None
        self._train_started = False
        self._periods_done = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_started = False
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_custom_scalars"):
                experiment.add_custom_scalars(self.layout())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_started = True
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
        if trainer.is_global_zero and self.last_summary is not None and self.out_path is not None:
            write_eval_json(self.out_path, self.last_summary)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed from its final checkpoint (interrupted during the final evaluation, which comes after
        # last.ckpt is written) skips Lightning's training loop and with it on_train_end: evaluate here, so
        # that it still ends with its eval.json.
        finished = 0 < trainer.max_steps <= trainer.global_step
        if not finished or self._train_started or self.out_path is None:
            return
        # Rank 0 decides for all: every rank takes part in an evaluation (they gather its results).
        if trainer.strategy.broadcast(not self.out_path.is_file(), src=0):
            self.on_train_end(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Run this rank's share of the episodes, gather all results, log them; returns the summary."""
        rank, world = trainer.global_rank, trainer.world_size
        mine = list(range(rank, len(self.episodes), world))
        results: list[EpisodeResult] = []
        if mine:
            episodes = [self.episodes[i] for i in mine]
            was_training = pl_module.training
            pl_module.eval()
            videos = self._plan_videos(trainer, episodes)
            try:
                act_fn = self.make_agent(pl_module, episodes)
                results = evaluate_episodes(
                    episodes, act_fn, self.cfg.max_episode_steps, workers=self.cfg.workers, max_envs=self.max_envs,
                    environments=replace(self.environments, video_paths=videos),
                )
            finally:
                pl_module.train(was_training)
            self._log_videos(trainer, videos)
        ordered = _gather(list(zip(mine, results)), world)
        summary = summarise(
            ordered, seed=self.run_seed, episodes_per_task=self.cfg.episodes_per_task, eval_split=self.split
        )
        if trainer.is_global_zero:
            metrics = scalar_metrics(summary)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.last_summary = summary
        self._last_step = trainer.global_step
        return summary

    def _plan_videos(self, trainer: L.Trainer, episodes: list[EvalEpisode]) -> dict[EvalEpisode, str]:
        per_task = int(getattr(self.cfg, "video", 0))
        if per_task <= 0 or not trainer.is_global_zero:
            return {}
        root = self.video_dir if self.video_dir is not None else Path(trainer.default_root_dir) / "videos"
        return plan_videos(episodes, per_task, root / f"step{trainer.global_step}")

    def _log_videos(self, trainer: L.Trainer, videos: dict[EvalEpisode, str]) -> None:
        if not videos:
            return
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "_get_file_writer"):  # a torch SummaryWriter (TensorBoardLogger)
                log_videos(experiment, videos, trainer.global_step)

    def layout(self) -> dict[str, dict[str, list]]:
        """TensorBoard custom-scalars layout: per split, one chart per metric with a line per task."""
        layout = {}
        for split in SPLITS:
            tasks = self.split_tasks.get(split, [])
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


def _goal_layout(train_goals: int | None, validation_goals: int | None, data_cfg: DataConfig | None) -> GoalLayout:
    if data_cfg is not None:
        layout = goal_layout(data_cfg)
        given = (train_goals, validation_goals)
        if given[0] not in (None, layout.train_goals) or given[1] not in (None, layout.validation_goals):
            raise ValueError(
                f"EvaluationCallback: train_goals={train_goals}, validation_goals={validation_goals} contradict "
                f"data_cfg ({layout.train_goals}, {layout.validation_goals}); pass data_cfg alone"
            )
        return layout
    if train_goals is None:
        raise TypeError("EvaluationCallback needs data_cfg (the experiment's DataConfig) or train_goals")
    if validation_goals is None:
        warnings.warn(
            f"EvaluationCallback: train_goals={train_goals} without validation_goals or data_cfg: no validation "
            f"goals, seen-test goals [{train_goals}, 50); pass data_cfg=cfg.data",
            stacklevel=3,
        )
        validation_goals = 0
    return GoalLayout(int(train_goals), int(validation_goals))


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
