"""`llmdpd data EXP --report`: what each task's data holds, by behaviour, next to the expert's ceiling.

Per task, a markdown table: for every behaviour of the mixed dataset (and every noise scale of `noisy`;
every route of the expert where the data have routes), the episodes, their success rate (success at any step)
and mean undiscounted return; the prompt dataset; and the noiseless scripted expert rolled out once on each
validation goal variation [train_goals, train_goals + validation_goals) of the task, the ceiling a policy can be
compared with.
Datasets written before v1 (no per-episode returns in their metadata) are read back to compute them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmdpd.config.schema import ExperimentConfig
from llmdpd.data import tasks as task_registry
from llmdpd.data.collect import rollout
from llmdpd.data.minari_store import DatasetError, load_dataset, read_episodes, read_metadata
from llmdpd.envs.metaworld import NUM_GOALS, MetaWorldTaskEnv, scripted_expert


def episode_outcomes(root: Path, ds_id: str) -> dict[str, list]:
    """Per-episode behaviours, noise scales, returns and successes of a generated dataset."""
    meta = read_metadata(root, ds_id)
    if meta is None:
        raise DatasetError(f"Dataset '{ds_id}' not found under {Path(root).resolve()}.")
    n = len(meta.get("episode_goals", []))
    out = {
        "behaviours": meta.get("episode_behaviours") or ["noisy"] * n,
        "noise_scales": meta.get("episode_noise_scales") or [float("nan")] * n,
        "routes": meta.get("episode_routes") or [""] * n,
    }
    if "episode_returns" in meta and "episode_successes" in meta:
        out["returns"], out["successes"] = list(meta["episode_returns"]), list(meta["episode_successes"])
    else:  # written before v1: read the episodes back
        dataset = load_dataset(root, ds_id)
        out["returns"] = [float(np.sum(ep["rewards"], dtype=np.float64)) for ep in read_episodes(dataset)]
        out["successes"] = [bool(np.any(ep.infos["success"])) for ep in dataset.iterate_episodes()]
    out["kinds"] = list(meta.get("behaviours", {}).get("kinds", [])) or sorted(set(out["behaviours"]))
    return out


def validation_goals(cfg: ExperimentConfig) -> range:
    start = int(cfg.data.train_goals)
    return range(start, min(start + int(cfg.data.validation_goals), NUM_GOALS))


def expert_ceiling(cfg: ExperimentConfig, task: str) -> tuple[list[bool], list[float]]:
    """(successes, returns) of the noiseless scripted expert, once per validation goal variation."""
    steps = int(cfg.data.max_episode_steps)
    env = MetaWorldTaskEnv(task, seed=int(cfg.data.seed), max_episode_steps=steps)
    expert = scripted_expert(task)
    successes, returns = [], []
    for goal in validation_goals(cfg):
        _, _, rewards, success = rollout(env, goal, steps, lambda t, obs: expert(obs))
        successes.append(bool(success.any()))
        returns.append(float(np.sum(rewards, dtype=np.float64)))
    env.close()
    return successes, returns


def _row(label: str, successes, returns) -> str:
    if not len(successes):
        return f"| {label} | 0 | – | – |"
    return f"| {label} | {len(successes)} | {np.mean(successes):.2f} | {np.mean(returns):.1f} |"


def task_table(cfg: ExperimentConfig, task: str, role: str) -> str:
    """The markdown report of one task's datasets."""
    from llmdpd.data.generate import dataset_id

    root = Path(cfg.paths.data_dir)
    mixed_id, prompt_id = dataset_id(cfg, task, "mixed"), dataset_id(cfg, task, "prompt")
    mixed, prompt = episode_outcomes(root, mixed_id), episode_outcomes(root, prompt_id)
    behaviours = np.asarray(mixed["behaviours"])
    successes, returns = np.asarray(mixed["successes"], bool), np.asarray(mixed["returns"], float)
    scales = np.asarray(mixed["noise_scales"], float)
    lines = [
        f"### {task} ({role} task): {mixed_id}",
        "",
        "| data | episodes | success rate | mean return |",
        "|---|---:|---:|---:|",
    ]
    for kind in mixed["kinds"]:
        pick = behaviours == kind
        lines.append(_row(kind, successes[pick], returns[pick]))
        kind_scales = sorted({float(s) for s in scales[pick] if np.isfinite(s)})
        if kind == "noisy" and len(kind_scales) > 1:
            for scale in kind_scales:
                sub = pick & (scales == scale)
                lines.append(_row(f"noisy, σ={scale:g}", successes[sub], returns[sub]))
    routes = np.asarray(mixed["routes"])
    for route in dict.fromkeys(r for r in mixed["routes"] if r):
        lines.append(_row(f"expert's route: {route}", successes[routes == route], returns[routes == route]))
    lines.append(_row("**all mixed**", successes, returns))
    lines.append(_row(f"prompt (expert, σ={cfg.data.prompt_noise:g})", prompt["successes"], prompt["returns"]))
    goals = validation_goals(cfg)
    if len(goals):
        ceiling = expert_ceiling(cfg, task)
        lines.append(_row(f"expert, no noise, validation goals {goals.start}-{goals.stop - 1}", *ceiling))
    return "\n".join(lines)


def report(cfg: ExperimentConfig) -> str:
    """The markdown report of every generated dataset of the experiment."""
    train, unseen = task_registry.split_tasks(cfg.data)
    header = (
        f"## Data report: {cfg.name} ({cfg.data.dataset_version}, {cfg.data.max_episode_steps}-step episodes, "
        f"return = undiscounted sum of rewards, success = at any step)"
    )
    parts = [header]
    held_out = task_registry.validation_tasks(cfg.data)
    roles = [(t, "training") for t in train] + [(t, "validation") for t in held_out] + [(t, "unseen") for t in unseen]
    for task, role in roles:
        if task in cfg.data.minari_ids:
            parts.append(f"### {task}: external dataset {cfg.data.minari_ids[task]} (not reported)")
            continue
        parts.append(task_table(cfg, task, role))
    return "\n\n".join(parts)
