"""Shared fixtures: the smoke experiment's datasets, generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
