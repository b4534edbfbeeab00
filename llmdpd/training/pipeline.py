"""`llmdpd train`: data (if missing) -> prompt alignment stage -> policy stage -> evaluation, in one run directory.

Each `llmdpd train` writes its own run directory (`llmdpd.runs`: `paths.runs_dir/<name>/seed<seed>/version_<n>`,
or continues one in place with `ckpt=last` / `ckpt=PATH`):
    config.yaml             the resolved experiment config
    provenance.json         commit, library versions, threads and device of each invocation (llmdpd.provenance)
    checkpoints/            last.ckpt and step<N>.ckpt of the policy stage; align/ for stage 1
    tb/                     TensorBoard event files of both stages
    eval.json               final evaluation (seen and unseen tasks)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from llmdpd.checkpoints import AtomicCheckpointIO, CheckpointError, check_fits, read_meta
from llmdpd.config.load import ConfigError, to_yaml
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate
from llmdpd.files import write_text_atomic
from llmdpd.provenance import record_provenance
from llmdpd.prompts.alignment import uses_alignment
from llmdpd.prompts.text_embeddings import make_text_embedder
from llmdpd.runs import RUN_DIR_ENV, RunPlan, global_rank, latest_checkpoint, plan_run
from llmdpd.training.callbacks import NonFiniteLossCheck, PeriodicCheckpoint, SaveLastCheckpoint
from llmdpd.training.progress import StepProgressBar
from llmdpd.training.requeue import SignalCheckpoint

# What the alignment stage's result depends on: a stored stage is reused only when these are unchanged.
ALIGNMENT_SECTIONS = ("seed", "data", "text", "trajectory", "alignment")
# Keys of those sections that do not change what the stage learns.
ALIGNMENT_IGNORED = ("data.workers", "data.force", "data.device", "alignment.freeze_in_policy_stage")


def prepare_data(cfg: ExperimentConfig) -> None:
    """Generate missing datasets once: every rank takes one lock in turn, so only the first one writes."""
    root = Path(cfg.paths.data_dir)
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".locks" / "generate.lock")):
        generate(cfg, progress=global_rank() == 0)


def trainer_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """`cfg.trainer` with the automatic choices made: precision by device, DDP when several processes."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = kwargs.get("accelerator", "auto")
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if kwargs.get("precision") is None:
        kwargs["precision"] = "bf16-mixed" if on_gpu else "32-true"
    devices, nodes = kwargs.get("devices", 1), kwargs.get("num_nodes", 1)
    several = nodes > 1 or (isinstance(devices, int) and devices > 1) or isinstance(devices, (list, str))
    if kwargs.get("strategy", "auto") == "auto" and several:
        kwargs["strategy"] = "ddp"
    return kwargs


def _stage_trainer(
    cfg: ExperimentConfig, root: Path, max_steps: int, name: str, callbacks: list, *, run_directory: Path, **extra: Any
) -> L.Trainer:
    """A Trainer for one stage: TensorBoard events in <run dir>/tb/<name>, Lightning's own files in `root`,
    checkpoints written atomically."""
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=max_steps, **extra)
    if kwargs.get("enable_progress_bar", True):
        callbacks = [*callbacks, StepProgressBar()]
    plugins = [*list(kwargs.pop("plugins", None) or []), AtomicCheckpointIO()]
    logger = TensorBoardLogger(str(run_directory), name="tb", version=name, default_hp_metric=False)
    return L.Trainer(default_root_dir=str(root), logger=logger, callbacks=callbacks, plugins=plugins, **kwargs)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_changes(saved: dict[str, Any], current: dict[str, Any], sections: Optional[tuple] = None,
                   ignored: tuple = ()) -> list[str]:
    """`key: old -> new` for every leaf that differs between two plain configs (within `sections`)."""
    if sections is not None:
        saved = {k: saved.get(k) for k in sections}
        current = {k: current.get(k) for k in sections}
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not any(key == i or key.startswith(i + ".") for i in ignored)
    ]


def write_config(directory: Path, cfg: ExperimentConfig, continuing: bool) -> None:
    """Write config.yaml; a continued run whose config changed keeps the old one as config.resume<k>.yaml."""
    path = directory / "config.yaml"
    text = to_yaml(cfg)
    if continuing and path.is_file() and path.read_text() != text:
        changes = config_changes(
            OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True),
            OmegaConf.to_container(cfg, resolve=True),
        )
        k = 1
        while (directory / f"config.resume{k}.yaml").exists():
            k += 1
        os.replace(path, directory / f"config.resume{k}.yaml")
        shown = "; ".join(changes[:5]) + (" ..." if len(changes) > 5 else "")
        print(f"Continuing {directory} with a changed config ({shown}); the previous one is config.resume{k}.yaml")
    write_text_atomic(path, text)


def _check_alignment_config(path: Path, stored: dict[str, Any], cfg_dict: dict[str, Any]) -> None:
    changes = config_changes(stored, cfg_dict, ALIGNMENT_SECTIONS, ALIGNMENT_IGNORED)
    if changes:
        raise ConfigError(
            f"{path} was trained with other settings ({'; '.join(changes[:3])}); continue this run with its "
            "own settings, or start a new run (without ckpt=)"
        )


def _alignment_checkpoint(path: Path, cfg_dict: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The alignment checkpoint at `path` if it exists and is readable (a warning otherwise), after checking
    that it was trained with this run's alignment settings."""
    if not path.is_file():
        return None
    try:
        checkpoint = read_meta(path)
    except CheckpointError as err:
        if global_rank() == 0:
            print(f"llmdpd: warning: {err}; the alignment stage starts over", file=sys.stderr)
        return None
    stored = (checkpoint.get("hyper_parameters") or {}).get("cfg") or {}
    _check_alignment_config(path, stored, cfg_dict)
    return checkpoint


def run_alignment(cfg: ExperimentConfig, dm: MetaWorldDataModule, directory: Path, dims: tuple[int, int, int]):
    """Stage 1 (prompt alignment); resumes from its own last checkpoint, returns the trained module.

    A finished stage (`checkpoints/align/final.ckpt`) or a partial one (`last.ckpt`) of this run directory
    is reused only when it was trained with this run's settings (`ALIGNMENT_SECTIONS`); otherwise a
    `ConfigError` names what changed.
    """
    from llmdpd.evaluation.retrieval import PromptRetrievalCallback
    from llmdpd.prompts.alignment import PromptEncoderModule

    ckpt_dir = directory / "checkpoints" / "align"
    done = ckpt_dir / "final.ckpt"
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    finished = _alignment_checkpoint(done, cfg_dict)
    if finished is not None:
        module = PromptEncoderModule(*dims, cfg=cfg_dict)
        check_fits(finished, done, module)
        module.load_state_dict(finished["state_dict"])
        return module
    module = PromptEncoderModule(*dims, cfg=cfg_dict)
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir), save_last=True, save_top_k=0, every_n_train_steps=max(cfg.alignment.max_steps // 4, 1),
        enable_version_counter=False,
    )
    retrieval = PromptRetrievalCallback(dm, dm.train_tasks, dm.unseen_tasks, cfg.data.prompt_episodes)
    guard = NonFiniteLossCheck("alignment", last_good=lambda: str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None)
    callbacks = [guard, checkpoint, SignalCheckpoint(ckpt_dir / "last.ckpt"), retrieval]
    # Its own root directory: a SLURM requeue checkpoint of this stage must not be taken for the policy's.
    trainer = _stage_trainer(
        cfg, ckpt_dir, cfg.alignment.max_steps, "align", callbacks, run_directory=directory, log_every_n_steps=10
    )
    dm.alignment_prompts_per_task = cfg.alignment.prompts_per_task
    last = ckpt_dir / "last.ckpt"
    resume = _alignment_checkpoint(last, cfg_dict)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume is not None else None)
    dm.alignment_prompts_per_task = None
    dm.next_batch = 0
    trainer.save_checkpoint(str(done), weights_only=False)
    return module


def train(cfg: ExperimentConfig) -> Path:
    """Run the whole experiment; returns the run directory."""
    from llmdpd.evaluation.callback import EvaluationCallback
    from llmdpd.evaluation.agent import PolicyAgent
    from llmdpd.evaluation.diagnostics import CriticDiagnosticsCallback
    from llmdpd.evaluation.plan import goal_layout
    from llmdpd.policy.module import PolicyDiffusionModule

    L.seed_everything(cfg.seed, workers=True)
    plan: RunPlan = plan_run(cfg)
    directory = plan.directory
    if global_rank() == 0:
        # Processes Lightning starts for DDP copy this environment: they join this run directory.
        os.environ[RUN_DIR_ENV] = str(directory.resolve())
        directory.mkdir(parents=True, exist_ok=True)
        write_config(directory, cfg, plan.continuing)
        record_provenance(directory)
        how = f"continuing from {plan.ckpt}" if plan.ckpt else ("continuing in place" if plan.continuing else "new run")
        print(f"Run directory: {directory} ({how})", flush=True)
    prepare_data(cfg)

    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))

    checkpoint_dir = directory / "checkpoints"
    checkpoints = PeriodicCheckpoint(
        dirpath=str(checkpoint_dir),
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
        enable_version_counter=False,  # a continued run overwrites its own files, never writes last-v1.ckpt
    )
    evaluation = EvaluationCallback(
        make_agent=lambda mod, episodes: PolicyAgent(mod, dm, episodes, prompt_episode=cfg.eval.prompt_episode),
        cfg=cfg.eval,
        seen_tasks=dm.train_tasks,
        unseen_tasks=dm.unseen_tasks,
        held_out_tasks=dm.validation_tasks,
        data_cfg=cfg.data,
        out_path=directory / "eval.json",
        env_seed=cfg.data.seed,
        run_seed=cfg.seed,
        data_dir=cfg.paths.data_dir,
    )
    signals = SignalCheckpoint(checkpoint_dir / "last.ckpt")
    guard = NonFiniteLossCheck("policy", last_good=lambda: latest_checkpoint(directory, report=False))
    # The final save comes first: the end-of-training evaluation runs after it (see SaveLastCheckpoint).
    # The critic diagnostics come before the evaluation: at fit end they look for an eval.json it has not yet written.
    callbacks = [SaveLastCheckpoint(checkpoint_dir / "last.ckpt"), guard, checkpoints, evaluation, signals]
    if cfg.eval.diagnostics and cfg.policy.kind == "diffusion":
        goals = goal_layout(cfg.data).validation
        callbacks.insert(3, CriticDiagnosticsCallback(dm, dm.train_tasks, goals, cfg.eval.every_n_steps,
                                                      seed=cfg.data.seed, final_marker=evaluation.out_path))
    trainer = _stage_trainer(cfg, directory, int(cfg.trainer.max_steps), "policy", callbacks, run_directory=directory)
    # Set up the data with a trainer attached: it gives each DDP rank its own batch stream and device.
    dm.trainer = trainer
    dm.setup("fit")
    dims = (dm.obs_dim, dm.action_dim, dm.text_dim)
    ckpt_path = plan.ckpt
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    module = PolicyDiffusionModule(*dims, cfg=cfg_dict, obs_mean=dm.normalizer.mean.cpu(), obs_std=dm.normalizer.std.cpu())
    if ckpt_path is not None:
        check_fits(read_meta(ckpt_path), ckpt_path, module, cfg_dict)
    if uses_alignment(cfg) and ckpt_path is None:
        module.load_prompt_encoders(run_alignment(cfg, dm, directory, dims))

    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    if trainer.global_rank == 0:
        print(f"Run directory: {directory.resolve()}")
        print(f"  checkpoints: {checkpoint_dir}   TensorBoard: tensorboard --logdir {directory / 'tb'}")
        if (directory / "eval.json").is_file():
            print(f"  evaluation:  {directory / 'eval.json'}")
    return directory
