"""`llmdpd train`: data (if missing) -> prompt alignment stage -> policy stage -> evaluation, in one run directory.

Run directory (`paths.runs_dir/<name>/seed<seed>` unless `run_name` is set):
    config.yaml             the resolved experiment config
    checkpoints/            last.ckpt and step<N>.ckpt of the policy stage; align/ for stage 1
    tb/                     TensorBoard event files of both stages
    eval.json               final evaluation (seen and unseen tasks)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from llmdpd.config.load import ConfigError, to_yaml
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate
from llmdpd.training.progress import StepProgressBar
from llmdpd.training.requeue import SignalCheckpoint, latest_checkpoint


def run_dir(cfg: ExperimentConfig) -> Path:
    name = cfg.run_name or f"{cfg.name}/seed{cfg.seed}"
    return Path(cfg.paths.runs_dir) / name


def global_rank() -> int:
    """This process's rank as torchrun/SLURM announce it (0 when not distributed).

    Before the Trainer exists this is all there is; processes that Lightning itself launches only carry
    LOCAL_RANK, which is non-zero exactly when the global rank is (single node).
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def prepare_data(cfg: ExperimentConfig) -> None:
    """Generate missing datasets once: every rank takes one lock in turn, so only the first one writes."""
    root = Path(cfg.paths.data_dir)
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".locks" / "generate.lock")):
        generate(cfg, progress=global_rank() == 0)


def make_text_embedder(cfg: ExperimentConfig):
    if not cfg.text.enabled:
        return None
    from llmdpd.prompts.text_embeddings import TextEmbedder

    return TextEmbedder(cfg.text.model, cfg.text.pooling, cache_dir=cfg.paths.cache_dir)


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


def resolve_ckpt(cfg: ExperimentConfig, directory: Path) -> Optional[str]:
    if cfg.ckpt is None:
        return None
    if cfg.ckpt == "last":
        return latest_checkpoint(directory)
    if not Path(cfg.ckpt).is_file():
        raise ConfigError(f"ckpt={cfg.ckpt}: no such checkpoint file")
    return cfg.ckpt


def _stage_trainer(
    cfg: ExperimentConfig, root: Path, max_steps: int, name: str, callbacks: list, **extra: Any
) -> L.Trainer:
    """A Trainer for one stage: TensorBoard events in <run dir>/tb/<name>, Lightning's own files in `root`."""
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=max_steps, **extra)
    if kwargs.get("enable_progress_bar", True):
        callbacks = [*callbacks, StepProgressBar()]
    logger = TensorBoardLogger(str(run_dir(cfg)), name="tb", version=name, default_hp_metric=False)
    return L.Trainer(default_root_dir=str(root), logger=logger, callbacks=callbacks, **kwargs)


def run_alignment(cfg: ExperimentConfig, dm: MetaWorldDataModule, directory: Path, dims: tuple[int, int, int]):
    """Stage 1 (prompt alignment); resumes from its own last checkpoint, returns the trained module."""
    from llmdpd.evaluation.retrieval import PromptRetrievalCallback
    from llmdpd.prompts.alignment import PromptEncoderModule

    ckpt_dir = directory / "checkpoints" / "align"
    done = ckpt_dir / "final.ckpt"
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    if done.is_file():
        return PromptEncoderModule.load_from_checkpoint(str(done), map_location="cpu")
    module = PromptEncoderModule(*dims, cfg=cfg_dict)
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0, every_n_train_steps=max(cfg.alignment.max_steps // 4, 1))
    retrieval = PromptRetrievalCallback(dm, dm.train_tasks, dm.unseen_tasks, cfg.data.prompt_episodes)
    callbacks = [checkpoint, SignalCheckpoint(ckpt_dir / "last.ckpt"), retrieval]
    # Its own root directory: a SLURM requeue checkpoint of this stage must not be taken for the policy's.
    trainer = _stage_trainer(cfg, ckpt_dir, cfg.alignment.max_steps, "align", callbacks, log_every_n_steps=10)
    dm.alignment_prompts_per_task = cfg.alignment.prompts_per_task
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
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
    directory = run_dir(cfg)
    if global_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text(to_yaml(cfg))
    prepare_data(cfg)

    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))

    checkpoints = ModelCheckpoint(
        dirpath=str(directory / "checkpoints"),
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
    )
    evaluation = EvaluationCallback(
        make_agent=lambda mod, episodes: PolicyAgent(mod, dm, episodes, prompt_episode=cfg.eval.prompt_episode),
        cfg=cfg.eval,
        seen_tasks=dm.train_tasks,
        unseen_tasks=dm.unseen_tasks,
        data_cfg=cfg.data,
        out_path=directory / "eval.json",
        env_seed=cfg.data.seed,
        run_seed=cfg.seed,
    )
    signals = SignalCheckpoint(directory / "checkpoints" / "last.ckpt")
    callbacks = [checkpoints, evaluation, signals]
    if cfg.eval.diagnostics and cfg.policy.kind == "diffusion":
        goals = goal_layout(cfg.data).validation
        callbacks.append(CriticDiagnosticsCallback(dm, dm.train_tasks, goals, cfg.eval.every_n_steps, seed=cfg.data.seed))
    trainer = _stage_trainer(cfg, directory, int(cfg.trainer.max_steps), "policy", callbacks)
    # Set up the data with a trainer attached: it gives each DDP rank its own batch stream and device.
    dm.trainer = trainer
    dm.setup("fit")
    dims = (dm.obs_dim, dm.action_dim, dm.text_dim)
    ckpt_path = resolve_ckpt(cfg, directory)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    module = PolicyDiffusionModule(*dims, cfg=cfg_dict, obs_mean=dm.normalizer.mean.cpu(), obs_std=dm.normalizer.std.cpu())
    uses_alignment = cfg.alignment.enabled and cfg.trajectory.enabled and cfg.text.enabled
    if uses_alignment and ckpt_path is None:
        module.load_prompt_encoders(run_alignment(cfg, dm, directory, dims))

    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    # Periodic saves need not fall on the last step: make last.ckpt the final state (all ranks take part).
    trainer.save_checkpoint(str(directory / "checkpoints" / "last.ckpt"), weights_only=False)
    if trainer.global_rank == 0:
        print(f"Run directory: {directory.resolve()}")
        print(f"  checkpoints: {directory / 'checkpoints'}   TensorBoard: tensorboard --logdir {directory / 'tb'}")
        if (directory / "eval.json").is_file():
            print(f"  evaluation:  {directory / 'eval.json'}")
    return directory
