"""Every experiment in experiments/ (ml45/ included) loads, builds its modules, and trains (slow: one step of
each on the smoke data), as lightning-hydra-template checks its configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmdpd.config.load import experiments_dir, load_config

EXPERIMENTS = sorted(
    str(path.relative_to(experiments_dir()).with_suffix(""))
    for path in experiments_dir().rglob("*.yaml")
    if "base" not in path.relative_to(experiments_dir()).parts
)


def test_the_list_covers_every_experiment_folder():
    assert {"smoke", "metaworld", "llmdpd", "ml45/llmdpd", "ml45/mlp_bc"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_builds_its_modules(exp, tmp_path):
    import lightning as L

    from llmdpd.data.datamodule import MetaWorldDataModule
    from llmdpd.policy.module import PolicyDiffusionModule
    from llmdpd.prompts.alignment import PromptEncoderModule, uses_alignment
    from llmdpd.training.pipeline import trainer_kwargs

    cfg = load_config(exp, [f"paths.runs_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.devices=1",
                            "trainer.num_nodes=1", "trainer.strategy=auto"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    text_dim = 24 if cfg.text.enabled else 0
    module = PolicyDiffusionModule(39, 4, text_dim, plain)
    assert module.kind == cfg.policy.kind and sum(p.numel() for p in module.parameters()) > 0
    module.configure_optimizers()
    if uses_alignment(cfg):
        PromptEncoderModule(39, 4, text_dim, plain).configure_optimizers()
    dm = MetaWorldDataModule(cfg)
    assert dm.train_tasks and 0 < dm.tasks_per_batch <= len(dm.train_tasks)
    L.Trainer(**{**trainer_kwargs(cfg), "logger": False, "enable_checkpointing": False, "enable_progress_bar": False})


@pytest.mark.slow
@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_trains_one_step_on_the_smoke_data(exp, smoke_data_dir, tmp_path):
    from llmdpd.checkpoints import read_checkpoint
    from llmdpd.training import pipeline

    cfg = load_config(exp, [
        f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path}", "trainer.max_steps=1",
        "alignment.max_steps=1", "eval.seen=false", "eval.unseen=false", "eval.diagnostics=false",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1", "trainer.strategy=auto",
        "trainer.precision=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ])
    # The smoke experiment's datasets (tasks, recipe), with small batches; everything else is the experiment's.
    smoke = load_config("smoke", [f"paths.data_dir={smoke_data_dir}"])
    cfg.data = smoke.data
    cfg.data.batch_size_per_task = 8
    run = pipeline.train(cfg)
    assert read_checkpoint(Path(run) / "checkpoints" / "last.ckpt")["global_step"] == 1


def test_benchmarks_refuse_an_unknown_suite_in_one_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "benchmarks", "trainig"], cwd=Path(__file__).parents[1],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "benchmarks: unknown suite(s) trainig; choose from data, datamodule, training, evaluation"


def test_every_comparison_names_an_experiment_file():
    """`llmdpd comparison` runs what its table names: a name missing from experiments/ would fail hours into a
    queue, so every method of every benchmark must be one of the experiments above."""
    from llmdpd.cli.comparison import COMPARISONS

    named = {experiment for table in COMPARISONS.values() for experiment in table.values()}
    assert len(named) > 50
    assert sorted(named - set(EXPERIMENTS)) == []
