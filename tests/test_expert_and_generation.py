"""Data generation: scripted experts, Minari round trip, determinism, resumption, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import minari
import numpy as np
import pytest

from llmdpd.config.load import load_config
from llmdpd.data.collect import collect_episodes
from llmdpd.data.generate import dataset_id, generate, recipe_for
from llmdpd.data.minari_store import DatasetError, load_dataset, minari_root, read_episodes
from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "button-press-topdown-v3"])
def test_scripted_expert_succeeds(task):
    env = MetaWorldTaskEnv(task, seed=0)
    expert = scripted_expert(task)
    successes = 0
    for goal in (0, 7, 41):
        obs = env.reset(goal)
        for _ in range(500):
            obs, _, success, truncated = env.step(expert(obs))
            if success:
                successes += 1
                break
    assert successes == 3


def test_dataset_reads_back_with_minari(smoke_data_dir):
    cfg = load_config("smoke", [f"paths.data_dir={smoke_data_dir}"])
    with minari_root(smoke_data_dir):
        ds = minari.load_dataset(dataset_id(cfg, "reach-v3", "mixed"))
        prompts = minari.load_dataset(dataset_id(cfg, "reach-v3", "prompt"))
    assert ds.total_episodes == cfg.data.episodes_per_task
    assert prompts.total_episodes == cfg.data.prompt_episodes
    assert ds.total_steps == cfg.data.episodes_per_task * cfg.data.max_episode_steps
    meta = ds.storage.metadata["llmdpd"]
    assert meta["task"] == "reach-v3" and meta["seed"] == cfg.data.seed
    assert len(meta["descriptions"]) >= 3
    assert meta["noise"]["scales"] == [c.scale for c in cfg.data.noise]
    assert all(0 <= g < cfg.data.train_goals for g in meta["episode_goals"])
    n = cfg.data.episodes_per_task
    assert len(meta["episode_behaviours"]) == len(meta["episode_returns"]) == len(meta["episode_successes"]) == n
    for ep in ds.iterate_episodes():
        assert ep.observations.shape == (cfg.data.max_episode_steps + 1, 39)
        assert ep.actions.shape == (cfg.data.max_episode_steps, 4)
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert ep.infos["success"].shape == (cfg.data.max_episode_steps + 1,)
        assert ep.truncations[-1] and not ep.terminations.any()
    # Low-noise prompt episodes of reach succeed.
    assert all(ep.infos["success"].any() for ep in prompts.iterate_episodes())


def test_collection_is_deterministic_and_noise_varies_per_episode():
    cfg = load_config("smoke", ["data.max_episode_steps=30", "data.episodes_per_task=3"])
    recipe = recipe_for(cfg, "reach-v3", "mixed")
    a, b = collect_episodes(recipe), collect_episodes(recipe)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
    assert len({ep.noise_scale for ep in collect_episodes(recipe_for(cfg, "reach-v3", "mixed"))}) >= 1
    other = collect_episodes(recipe_for(load_config("smoke", ["data.max_episode_steps=30", "data.episodes_per_task=3", "data.seed=1"]), "reach-v3", "mixed"))
    assert not np.array_equal(a[0].actions, other[0].actions)


def _arrays(root: Path, ds_id: str) -> list[dict]:
    return read_episodes(load_dataset(root, ds_id))


# A small collection: the smoke experiment's three tasks (two training, one unseen), a mixed and a prompt dataset each.
_SMALL_RECIPE = ("data.max_episode_steps=40", "data.episodes_per_task=3")
_SMALL_DATASETS = 6


def _small(root: Path, workers: int = 1):
    return load_config("smoke", [f"paths.data_dir={root}", *_SMALL_RECIPE, f"data.workers={workers}"])


def _landed(root: Path) -> list[Path]:
    """The finished datasets of `_small`'s recipe under `root`."""
    return list(root.glob(f"metaworld/*/*-{_small(root).data.dataset_version}/data/metadata.json"))


def _interrupt_collection(root: Path, sig: int) -> tuple[int, str]:
    """`llmdpd data` with `_small`'s recipe in its own process, sent `sig` once its first dataset has landed under
    `root`: its exit code and stderr. The child gets SIGINT's default action, as under a terminal's Ctrl-C: a
    suite started as a background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmdpd", "data", "smoke", f"paths.data_dir={root}", *_SMALL_RECIPE,
         "data.workers=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not _landed(root):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_interrupted_collection_resumes_identical(tmp_path):
    reference = tmp_path / "reference"
    generate(_small(reference), progress=False)

    # A real interruption: kill the generating process once the first dataset has landed.
    resumed = tmp_path / "resumed"
    _interrupt_collection(resumed, signal.SIGKILL)
    assert 1 <= len(_landed(resumed)) < _SMALL_DATASETS, "the kill should land between the first and the last dataset"

    statuses = generate(_small(resumed), progress=False)
    assert "skipped" in statuses.values() and "written" in statuses.values()
    for ds_id in statuses:
        for x, y in zip(_arrays(reference, ds_id), _arrays(resumed, ds_id), strict=True):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
    # Nothing half-written is left that looks like a dataset.
    assert len(list(resumed.glob("metaworld/*/*/data/metadata.json"))) == _SMALL_DATASETS


def test_ctrl_c_during_collection_says_so_in_one_line_and_the_rerun_continues(tmp_path):
    root = tmp_path / "data"
    code, err = _interrupt_collection(root, signal.SIGINT)
    assert code == 130, err
    # After the progress bar (stderr too), one line and no traceback.
    assert "Traceback" not in err
    assert err.replace("\r", "\n").strip().splitlines()[-1] == (
        "llmdpd data: interrupted; what was written is kept, run the same command again to continue")
    statuses = generate(_small(root), progress=False)
    assert "skipped" in statuses.values() and "written" in statuses.values()


def test_parallel_generation_matches_serial(tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    generate(_small(serial, workers=1), progress=False)
    generate(_small(parallel, workers=2), progress=False)
    ds_id = dataset_id(_small(serial), "button-press-topdown-v3", "mixed")
    for x, y in zip(_arrays(serial, ds_id), _arrays(parallel, ds_id), strict=True):
        np.testing.assert_array_equal(x["actions"], y["actions"])


def test_changed_recipe_is_refused_then_forced(tmp_path):
    generate(_small(tmp_path), progress=False)
    changed = load_config("smoke", [f"paths.data_dir={tmp_path}", "data.max_episode_steps=40", "data.episodes_per_task=2"])
    with pytest.raises(DatasetError, match="different recipe"):
        generate(changed, progress=False)
    statuses = generate(changed, force=True, progress=False)
    assert set(statuses.values()) == {"written"}
    assert load_dataset(tmp_path, dataset_id(changed, "reach-v3", "mixed")).total_episodes == 2


def test_missing_dataset_names_id_and_command(tmp_path):
    with pytest.raises(DatasetError, match=r"metaworld/reach-v3/mixed-v0.*llmdpd data smoke"):
        load_dataset(tmp_path, "metaworld/reach-v3/mixed-v0", make_command="llmdpd data smoke")


def test_corrupt_dataset_gives_clear_error(tmp_path):
    generate(_small(tmp_path), progress=False)
    ds_id = dataset_id(_small(tmp_path), "reach-v3", "mixed")
    h5 = next((tmp_path / ds_id / "data").glob("*.hdf5"))
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 3])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_episodes(load_dataset(tmp_path, ds_id))


def test_cli_reports_unknown_key(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "llmdpd", "data", "smoke", "data.episodes_per_tsk=3"],
        capture_output=True, text=True, env={**os.environ},
    )
    assert out.returncode == 2
    assert "Unknown config key 'data.episodes_per_tsk'" in out.stderr
    assert "data.episodes_per_task" in out.stderr


def test_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke", ["paths.data_dir=data", "data.max_episode_steps=20", "data.episodes_per_task=1",
                                "data.prompt_episodes=1", "data.train_tasks=[reach-v3]", "data.unseen_tasks=[]"])
    generate(cfg, progress=False)
    with minari_root(Path("data")):
        assert minari.load_dataset(dataset_id(cfg, "reach-v3", "mixed")).total_episodes == 1
