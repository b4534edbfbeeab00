"""Evaluate a saved checkpoint outside training (what `llmdpd eval` runs), on the plan of `eval.split`:
"test" (seen tasks on seen-test goals, unseen tasks) or "validation" (training tasks on validation goals).

With `eval.video` = N, the first N episodes of every task are rendered into the run directory:
`videos/eval_<ckpt name>[_validation]/*.mp4`, and as animated images in `tb/eval/`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from llmdpd.config.load import ConfigError
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.evaluation.agent import UNCONDITIONAL, PolicyAgent
from llmdpd.evaluation.environments import EpisodeEnvironments
from llmdpd.evaluation.plan import UNSEEN_SPLITS, plan_evaluation
from llmdpd.evaluation.results import SPLITS, summarise
from llmdpd.evaluation.rollout import evaluate_episodes
from llmdpd.evaluation.videos import log_videos, plan_videos
from llmdpd.runs import results_directory

# The `policy.*` settings `llmdpd eval` takes from its own command line rather than from the checkpoint.
ACTING_KEYS = (
    "acting", "acting_temperature", "sample_temperature", "sample_noise", "sample_steps", "action_noise", "num_candidates",
    "guidance_weight", "action_execute", "action_ensemble", "action_ensemble_decay",
)


def evaluate_checkpoint(cfg: ExperimentConfig, ckpt: str) -> dict[str, Any]:
    """Roll out `ckpt` on the plan of `cfg.eval.split`; returns the eval.json summary."""
    from llmdpd.policy.module import PolicyDiffusionModule
    from llmdpd.prompts.text_embeddings import make_text_embedder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = load_policy(cfg, ckpt).to(device).eval()
    # Acting-time settings come from this command's config, not from training's: passed to every act call,
    # never written into the module's config.
    acting = {key: cfg.policy[key] for key in ACTING_KEYS if key in cfg.policy}
    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))
    dm.setup_for_evaluation(module.normalizer)  # the checkpoint's
    episodes = plan_evaluation(cfg.eval, dm.train_tasks, dm.unseen_tasks, cfg.data, held_out_tasks=dm.validation_tasks)
    if cfg.eval.prompt_task and cfg.eval.prompt_task not in [*dm.train_tasks, UNCONDITIONAL]:
        raise ConfigError(f"eval.prompt_task: '{cfg.eval.prompt_task}' is not a training task of this experiment "
                         f"({', '.join(dm.train_tasks)}) nor '{UNCONDITIONAL}'")
    prompt_task: str | dict[str, str] | None = cfg.eval.prompt_task or None
    retrieved = {}
    if cfg.eval.prompt_retrieval != "none":
        from llmdpd.evaluation.behaviour_retrieval import retrieve_behaviours

        splits = set(UNSEEN_SPLITS)
        if cfg.eval.prompt_retrieval_leave_one_out:  # the training tasks too, each as if it were unseen
            splits |= {"seen", "validation"}
        tasks = sorted({ep.task for ep in episodes if ep.split in splits})
        retrieved = retrieve_behaviours(cfg.eval.prompt_retrieval, module, dm, tasks, dm.train_tasks,
                                        cfg.eval.prompt_episode, acting, env_seed=cfg.data.seed,
                                        unconditional=cfg.eval.prompt_retrieval_unconditional,
                                        own=cfg.eval.prompt_retrieval_own)
        prompt_task = {task: chosen for task, (chosen, _) in retrieved.items()}
    agent = PolicyAgent(module, dm, episodes, prompt_episode=cfg.eval.prompt_episode, acting=acting,
                        prompt_task=prompt_task, unseen_parts=cfg.eval.prompt_parts)
    environments = EpisodeEnvironments(
        metaworld_seed=cfg.data.seed, minari_ids=dict(cfg.data.minari_ids), data_dir=str(cfg.paths.data_dir),
        video_size=cfg.eval.video_size,
    )
    run_dir = results_directory(ckpt)
    name = f"eval_{Path(ckpt).stem}" + ("_validation" if cfg.eval.split == "validation" else "")
    videos = plan_videos(episodes, cfg.eval.video, run_dir / "videos" / name)
    results = evaluate_episodes(
        episodes, agent, cfg.eval.max_episode_steps, workers=cfg.eval.workers, progress=True,
        max_envs=cfg.eval.max_envs, environments=replace(environments, video_paths=videos),
    )
    if videos:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "tb" / "eval")) as writer:
            log_videos(writer, videos, step=0)
    summary = summarise(
        results, seed=cfg.seed, episodes_per_task=cfg.eval.episodes_per_task, eval_split=cfg.eval.split
    )
    if retrieved:  # which training behaviour each task was shown, and why
        summary["prompt_retrieval"] = {task: {"rule": cfg.eval.prompt_retrieval, "chosen": chosen,
                                              "distances": distances}
                                       for task, (chosen, distances) in retrieved.items()}
    return summary


def load_policy(cfg: ExperimentConfig, ckpt: str):
    """The policy module saved in `ckpt`, on the CPU; a `CheckpointError` names the file when it is unreadable,
    not a policy-stage checkpoint, or trained with a text embedder other than this command's."""
    from omegaconf import OmegaConf

    from llmdpd.checkpoints import CheckpointError, check_fits, config_differences, read_checkpoint
    from llmdpd.policy.module import PolicyDiffusionModule

    checkpoint = read_checkpoint(ckpt, map_location="cpu")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "cfg" not in hparams or not any(k.startswith("ema_actor.") for k in checkpoint["state_dict"]):
        raise CheckpointError(f"checkpoint {ckpt} is not a policy-stage checkpoint (an alignment-stage one?)")
    current = OmegaConf.to_container(cfg, resolve=True)
    # The embedder is built from this command's config: it must be the one the policy was trained on.
    changed = config_differences(hparams["cfg"], current, keys=("text.enabled", "text.model", "text.pooling"))
    if changed:
        raise CheckpointError(f"checkpoint {ckpt} does not fit this experiment: {'; '.join(changed)}")
    module = PolicyDiffusionModule(**hparams)
    check_fits(checkpoint, ckpt, module, current)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def format_summary(summary: dict[str, Any]) -> str:
    """A markdown table of one evaluation: per task, then the split means ('-' where an env reports no
    success; the return normalised by the dataset's reference scores in brackets where it has them)."""
    lines = ["| task | split | success | final success | return | episodes |", "|---|---|---|---|---|---|"]
    for task, entry in summary["tasks"].items():
        ret = f"{entry['return']:.1f}"
        if entry.get("normalized_return") is not None:
            ret += f" ({entry['normalized_return']:.1f} normalised)"
        lines.append(
            f"| {task} | {entry['split']} | {_rate(entry['success'])} | {_rate(entry['final_success'])} "
            f"| {ret} | {entry['episodes']} |"
        )
    for split in SPLITS:
        mean = summary.get(split, {})
        if mean.get("tasks"):
            lines.append(
                f"| **{split} mean** | {split} | {_rate(mean['success_mean'])} | {_rate(mean['final_success_mean'])} "
                f"| {mean['return_mean']:.1f} | {mean['episodes']} |"
            )
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
