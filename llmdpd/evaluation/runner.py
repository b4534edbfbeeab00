"""Evaluate a saved checkpoint outside training (what `llmdpd eval` runs), on the plan of `eval.split`:
"test" (seen tasks on seen-test goals, unseen tasks) or "validation" (training tasks on validation goals)."""

from __future__ import annotations

from typing import Any

import torch

from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.evaluation.agent import PolicyAgent
from llmdpd.evaluation.plan import plan_evaluation
from llmdpd.evaluation.results import SPLITS, summarise
from llmdpd.evaluation.rollout import evaluate_episodes


def evaluate_checkpoint(cfg: ExperimentConfig, ckpt: str) -> dict[str, Any]:
    """Roll out `ckpt` on the plan of `cfg.eval.split`; returns the eval.json summary."""
    from llmdpd.policy.module import PolicyDiffusionModule
    from llmdpd.training.pipeline import make_text_embedder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = PolicyDiffusionModule.load_from_checkpoint(ckpt, map_location=device).eval()
    # Acting-time settings come from this command's config, not from training's.
    for key in ("acting", "acting_temperature", "num_candidates", "guidance_weight"):
        module.cfg.policy[key] = cfg.policy[key]
    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))
    dm.setup_for_evaluation(module.obs_mean, module.obs_std)
    episodes = plan_evaluation(cfg.eval, dm.train_tasks, dm.unseen_tasks, cfg.data)
    agent = PolicyAgent(module, dm, episodes, prompt_episode=cfg.eval.prompt_episode)
    results = evaluate_episodes(
        episodes, agent, cfg.eval.max_episode_steps, workers=cfg.eval.workers, env_seed=cfg.data.seed, progress=True,
        max_envs=cfg.eval.max_envs,
    )
    return summarise(
        results, seed=cfg.seed, episodes_per_task=cfg.eval.episodes_per_task, eval_split=cfg.eval.split
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A markdown table of one evaluation: per task, then the split means."""
    lines = ["| task | split | success | final success | return | episodes |", "|---|---|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        lines.append(
            f"| {task} | {entry['split']} | {entry['success']:.3f} | {entry['final_success']:.3f} "
            f"| {entry['return']:.1f} | {entry['episodes']} |"
        )
    for split in SPLITS:
        mean = summary.get(split, {})
        if mean.get("success_mean") is not None:
            lines.append(
                f"| **{split} mean** | {split} | {mean['success_mean']:.3f} | {mean['final_success_mean']:.3f} "
                f"| {mean['return_mean']:.1f} | {mean['episodes']} |"
            )
    return "\n".join(lines)
