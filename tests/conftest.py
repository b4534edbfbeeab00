"""Shared fixtures: the smoke experiment's datasets, generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmdpd.config.load import load_config  # noqa: E402
from llmdpd.data.generate import generate  # noqa: E402


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(load_config("smoke", [f"paths.data_dir={root}"]), progress=False)
    return root


@pytest.fixture
def smoke_cfg(smoke_data_dir, tmp_path):
    """The smoke config over the session's datasets, with runs and caches under this test's tmp_path."""
    return load_config(
        "smoke",
        [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path / 'runs'}"],
    )


@pytest.fixture(autouse=True)
def own_run_directory(monkeypatch):
    """`llmdpd train` publishes its run directory to later DDP ranks in the environment (LLMDPD_RUN_DIR):
    undo that after each test, so that no test sees the directory of one that ran before it."""
    from llmdpd.runs import RUN_DIR_ENV

    monkeypatch.setenv(RUN_DIR_ENV, "")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cpu_trainer():
    """A factory of quiet CPU Trainers running `steps` steps (no logger, checkpoints or progress bar)."""

    def make(steps: int, **kwargs) -> L.Trainer:
        options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        return L.Trainer(max_steps=steps, accelerator="cpu", **{**options, **kwargs})

    return make
