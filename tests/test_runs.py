"""Run directories you can trust: one directory per run, checkpoints that survive interruption, and user
errors (YAML, types, checkpoints, full disks, non-finite data and losses) as one line with exit status 2."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from llmdpd.checkpoints import AtomicCheckpointIO, CheckpointError, atomic_save, read_checkpoint
from llmdpd.cli.main import main
from llmdpd.config.load import ConfigError, load_config
from llmdpd.runs import checkpoint_for_evaluation, latest_checkpoint, plan_run, run_holding

REPO = Path(__file__).resolve().parents[1]
# Small pipeline runs: no rollouts, quiet trainer.
QUIET = ["eval.seen=false", "eval.unseen=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _fake_checkpoint(path: Path, step: int) -> None:
    state = {"dirpath": str(path.parent.resolve()), "last_model_path": ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "callbacks": {"ModelCheckpoint{'monitor': None}": state}, "state_dict": {}}, path)


def _truncate(path: Path, size: int = 200) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and the error output of `llmdpd ARGV`, less progress bars and Lightning's info lines."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("llmdpd")]
    return exit_.value.code, "\n".join(lines)


# --------------------------------------------------------------------------------------------- layout
def test_each_run_gets_a_version_and_ckpt_last_continues_the_newest(tmp_path):
    def plan(*overrides):
        return plan_run(load_config("smoke", [f"paths.runs_dir={tmp_path}", *overrides]), rank=0)

    first = plan()
    assert first.directory == tmp_path / "smoke" / "seed0" / "version_0" and first.directory.is_dir()
    assert (first.ckpt, first.continuing) == (None, False)
    second = plan()
    assert second.directory.name == "version_1" and not second.continuing
    # ckpt=last: the newest version, in place, from its newest checkpoint (none yet: in place all the same).
    assert plan("ckpt=last").directory == second.directory
    _fake_checkpoint(first.directory / "checkpoints" / "last.ckpt", 10)
    resumed = plan("ckpt=last")
    assert (resumed.directory, resumed.ckpt, resumed.continuing) == (second.directory, None, True)
    # ckpt=PATH: the run that holds the checkpoint.
    by_path = plan(f"ckpt={first.directory / 'checkpoints' / 'last.ckpt'}")
    assert by_path.directory == first.directory and by_path.continuing
    assert run_holding(first.directory / "checkpoints" / "last.ckpt") == first.directory
    # Another seed or run_name is another set of versions; ckpt=last with none makes the first.
    assert plan("seed=3", "ckpt=last").directory == tmp_path / "smoke" / "seed3" / "version_0"
    assert plan("run_name=abl/x").directory == tmp_path / "abl" / "x" / "version_0"


def test_ckpt_last_continues_a_run_directory_from_before_versions(tmp_path):
    legacy = tmp_path / "smoke" / "seed0"
    _fake_checkpoint(legacy / "checkpoints" / "last.ckpt", 7)
    (legacy / "config.yaml").write_text("name: smoke\n")
    cfg = load_config("smoke", [f"paths.runs_dir={tmp_path}", "ckpt=last"])
    plan = plan_run(cfg, rank=0)
    assert plan.directory == legacy and plan.ckpt == str(legacy / "checkpoints" / "last.ckpt")
    assert checkpoint_for_evaluation(cfg) == plan.ckpt


def test_other_ranks_join_the_directory_rank_zero_chose(tmp_path, monkeypatch):
    cfg = load_config("smoke", [f"paths.runs_dir={tmp_path}"])
    chosen = plan_run(cfg, rank=0).directory
    # Started by torchrun/srun: a directory that holds nothing to read, and that they never create.
    assert plan_run(cfg, rank=1).directory == tmp_path / "smoke" / "seed0" / "version_1"
    assert not (tmp_path / "smoke" / "seed0" / "version_1").exists()
    # Started by Lightning from rank 0's environment: rank 0's directory.
    monkeypatch.setenv("LLMDPD_RUN_DIR", str(chosen))
    assert plan_run(cfg, rank=1).directory == chosen
    assert plan_run(cfg, rank=0).directory.name == "version_1"  # rank 0 ignores it


# ----------------------------------------------------------------------------------------- checkpoints
def test_ckpt_last_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    _fake_checkpoint(ckpts / "step30.ckpt", 30)
    _fake_checkpoint(ckpts / "step60.ckpt", 60)
    _fake_checkpoint(ckpts / "last.ckpt", 70)
    assert latest_checkpoint(run) == str(ckpts / "last.ckpt")
    _truncate(ckpts / "last.ckpt")
    assert latest_checkpoint(run) == str(ckpts / "step60.ckpt")
    err = capsys.readouterr().err
    assert f"checkpoint {ckpts / 'last.ckpt'} is truncated or unreadable" in err
    assert f"continuing from {ckpts / 'step60.ckpt'} (step 60)" in err and len(err.strip().splitlines()) == 1
    _truncate(ckpts / "step60.ckpt")
    assert latest_checkpoint(run) == str(ckpts / "step30.ckpt")


def test_truncated_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _fake_checkpoint(ckpt, 5)
    _truncate(ckpt)
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is truncated or unreadable"):
        read_checkpoint(ckpt)
    code, err = _cli(["eval", "smoke", f"ckpt={ckpt}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ckpt) in err and "Traceback" not in err
    code, err = _cli(["train", "smoke", f"paths.runs_dir={tmp_path / 'runs'}", f"ckpt={ckpt}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ckpt) in err


def test_atomic_save_leaves_the_old_file_when_the_disk_is_full(tmp_path, capsys):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, path)

    def full_disk(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match=f"could not write checkpoint {path}: no space left on device"):
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, path, write=full_disk)
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    # Lightning's checkpoint IO goes through it.
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}}, path)
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.full((3,), 2.0))


def test_full_disk_while_writing_data_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import minari

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", full_disk)
    data = tmp_path / "data"
    code, err = _cli(["data", "smoke", f"paths.data_dir={data}", "data.workers=1", "data.episodes_per_task=1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no space left on device" in err and str(data.resolve()) in err
    leftovers = [p for p in data.rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert leftovers == []


def test_checkpoint_of_another_architecture_names_what_differs(tmp_path, capsys):
    from llmdpd.checkpoints import check_fits
    from llmdpd.evaluation.runner import load_policy
    from llmdpd.policy.module import PolicyDiffusionModule

    def module(*overrides):
        cfg = load_config("smoke", list(overrides))
        return PolicyDiffusionModule(39, 4, 16, OmegaConf.to_container(cfg)), cfg

    saved, _ = module("policy.hidden_dim=32")
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": saved.state_dict(), "hyper_parameters": dict(saved.hparams)}, path)
    target, cfg = module("policy.hidden_dim=64")
    with pytest.raises(CheckpointError, match=r"policy.hidden_dim=32 in the checkpoint, 64 here"):
        check_fits(read_checkpoint(path), path, target, OmegaConf.to_container(cfg))
    # llmdpd eval builds the policy from the checkpoint, but the text embedder from the command's config.
    with pytest.raises(CheckpointError, match=r"text.model='minilm' in the checkpoint, 'smollm2' here"):
        load_policy(load_config("smoke", ["text.model=smollm2"]), str(path))
    align = tmp_path / "align.ckpt"
    torch.save({"state_dict": {"trajectory_encoder.cls": torch.zeros(1)}, "hyper_parameters": {"cfg": {}}}, align)
    code, err = _cli(["eval", "smoke", f"ckpt={align}"], capsys)
    assert code == 2 and "not a policy-stage checkpoint" in err and len(err.strip().splitlines()) == 1


# -------------------------------------------------------------------------------------- config errors
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: [smoke]\npolicy:\n  eta: [1, 2\n  kind: diffusion\n")
    code, err = _cli(["train", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{bad}, line 4, column 7: YAML syntax error" in err
    with pytest.raises(ConfigError, match=r"override 'policy.eta=\[1,', line \d+, column \d+: YAML syntax error"):
        load_config("smoke", ["policy.eta=[1,"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_steps=abc", "Invalid value for 'trainer.max_steps': 'abc'; expected int"),
        ("policy.eta=abc", "Invalid value for 'policy.eta' (in command-line overrides): 'abc'; expected float"),
        ("seed=1.5", "Invalid value for 'seed' (in command-line overrides): 1.5; expected int"),
        ("alignment.enabled=maybe", "'alignment.enabled' (in command-line overrides): 'maybe'; expected bool"),
        ("data.train_tasks=reach-v3", "'data.train_tasks' (in command-line overrides): 'reach-v3'; expected list of str"),
        ("trainer.precision=bf17", "Invalid value for 'trainer.precision': 'bf17'; expected one of"),
    ],
)
def test_wrong_typed_value_is_one_line_naming_key_value_and_type(override, message, capsys):
    code, err = _cli(["train", "smoke", override], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err


# ------------------------------------------------------------------------------------- non-finite data
def _copy_with_nan(smoke_data_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    from llmdpd.data.collect import Episode
    from llmdpd.data.minari_store import load_dataset, read_episodes, read_metadata, write_episodes

    data = tmp_path / "data"
    shutil.copytree(smoke_data_dir, data)
    ds_id = "metaworld/reach-v3/mixed-v1"
    episodes = read_episodes(load_dataset(data, ds_id))
    metadata = read_metadata(data, ds_id)
    rebuilt = []
    for ep in episodes:
        steps = len(ep["actions"])
        rebuilt.append(Episode(ep["observations"], ep["actions"], ep["rewards"].copy(), np_zeros(steps + 1), 0, 0.0))
    rebuilt[2].observations = rebuilt[2].observations.copy()
    rebuilt[2].observations[17, 5] = float("nan")
    write_episodes(data, ds_id, rebuilt, metadata)
    return data, ds_id


def np_zeros(n):
    import numpy as np

    return np.zeros(n, dtype=bool)


def test_nan_in_a_dataset_is_an_error_naming_dataset_and_episode(smoke_data_dir, tmp_path, capsys):
    from llmdpd.data.datamodule import MetaWorldDataModule
    from llmdpd.data.minari_store import DatasetError

    data, ds_id = _copy_with_nan(smoke_data_dir, tmp_path)
    dm = MetaWorldDataModule(load_config("smoke", [f"paths.data_dir={data}", "text.enabled=false"]))
    with pytest.raises(DatasetError, match=rf"Dataset '{ds_id}' episode 2 holds a non-finite value \(nan\) in its observations at step 17"):
        dm.setup("fit")
    code, err = _cli(["train", "smoke", f"paths.data_dir={data}", f"paths.runs_dir={tmp_path / 'runs'}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"'{ds_id}' episode 2" in err


# ------------------------------------------------------------------------------------- non-finite loss
def test_non_finite_loss_stops_training_naming_loss_and_step(smoke_data_dir, tmp_path, monkeypatch, capsys):
    from llmdpd.policy.loss import DiffusionQLLoss

    forward = DiffusionQLLoss.forward
    calls = {"n": 0}

    def poisoned(self, td):
        out = forward(self, td)
        calls["n"] += 1
        if calls["n"] == 8:  # the 8th step (global step 7)
            out["loss_critic"] = out["loss_critic"] * float("nan")
        return out

    monkeypatch.setattr(DiffusionQLLoss, "forward", poisoned)
    runs = tmp_path / "runs"
    args = ["train", "smoke", f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={runs}", *QUIET,
            "alignment.enabled=false", "trainer.max_steps=20", "checkpoint_every_n_steps=5"]
    code, err = _cli(args, capsys)
    run = runs / "smoke" / "seed0" / "version_0"
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "non-finite loss_critic = nan in the policy stage at step 7" in err
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last.ckpt'}" in err
    kept = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == 5 and sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step5.ckpt"]
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------- two runs
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_second_run_never_touches_the_first_and_alignment_is_reused_only_in_place(smoke_data_dir, tmp_path):
    from llmdpd.training import pipeline

    common = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path}", *QUIET, "trainer.max_steps=4",
              "checkpoint_every_n_steps=2", "alignment.max_steps=4"]
    first = pipeline.train(load_config("smoke", common))
    before = _snapshot(first)
    assert {"config.yaml", "checkpoints/last.ckpt", "checkpoints/step4.ckpt", "checkpoints/align/final.ckpt"} <= set(before)

    second = pipeline.train(load_config("smoke", [*common, "alignment.max_steps=6"]))
    assert (first.name, second.name) == ("version_0", "version_1")
    assert _snapshot(first) == before  # not one byte of the first run changed
    # The second run trained its own alignment stage, with its own settings.
    assert read_checkpoint(second / "checkpoints" / "align" / "final.ckpt")["global_step"] == 6
    assert not list(second.rglob("*-v1.ckpt")) and len(list((second / "tb" / "policy").iterdir())) == 2  # events + hparams

    # A run that stopped after its alignment stage: ckpt=last reuses that stage only with the same settings.
    crashed = tmp_path / "smoke" / "seed0" / "version_2"
    shutil.copytree(second / "checkpoints" / "align", crashed / "checkpoints" / "align")
    shutil.copy(second / "config.yaml", crashed / "config.yaml")
    with pytest.raises(ConfigError, match=r"align/final.ckpt was trained with other settings \(alignment.max_steps: 6 -> 8\)"):
        pipeline.train(load_config("smoke", [*common, "alignment.max_steps=8", "ckpt=last"]))
    resumed = pipeline.train(load_config("smoke", [*common, "alignment.max_steps=6", "ckpt=last"]))
    assert resumed == crashed and not (crashed / "tb" / "align").exists()  # the stage was not run again
    assert read_checkpoint(crashed / "checkpoints" / "last.ckpt")["global_step"] == 4


# ------------------------------------------------------------------------------------- exact resume
class SignalAt(L.Callback):
    """Sends this process SIGUSR1 as the batch after global step `step` starts (an external `kill -USR1`)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def _policy_callbacks(monkeypatch, *callbacks) -> None:
    from llmdpd.training import pipeline

    stage_trainer = pipeline._stage_trainer

    def with_callbacks(cfg, root, max_steps, name, stage_callbacks, **extra):
        extra_callbacks = list(callbacks) if name == "policy" else []
        return stage_trainer(cfg, root, max_steps, name, stage_callbacks + extra_callbacks, **extra)

    monkeypatch.setattr(pipeline, "_stage_trainer", with_callbacks)


def _max_difference(a: Path, b: Path) -> float:
    want, got = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert want.keys() == got.keys()
    return max((want[k].double() - got[k].double()).abs().max().item() for k in want if want[k].numel())


def _sigusr1_resume_matches(smoke_data_dir, tmp_path, monkeypatch, stops, extra=()) -> None:
    from llmdpd.training import pipeline

    common = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path}", *QUIET, "trainer.max_steps=12",
              "checkpoint_every_n_steps=5", "policy.ema_start=4", "policy.ema_every=3", "policy.prompt_dropout=0.3", *extra]
    full = pipeline.train(load_config("smoke", [*common, "run_name=full"]))
    for stop in stops:
        name = f"run_name=stopped{stop}"
        with monkeypatch.context() as patch:
            _policy_callbacks(patch, SignalAt(stop))
            stopped = pipeline.train(load_config("smoke", [*common, name]))
        assert read_checkpoint(stopped / "checkpoints" / "last.ckpt")["global_step"] == stop + 1
        resumed = pipeline.train(load_config("smoke", [*common, name, "ckpt=last"]))
        assert resumed == stopped  # continued in place
        last = read_checkpoint(resumed / "checkpoints" / "last.ckpt")
        assert last["global_step"] == 12
        difference = _max_difference(full / "checkpoints" / "last.ckpt", resumed / "checkpoints" / "last.ckpt")
        assert difference <= 1e-5, f"stopped after step {stop + 1}: max difference {difference:.3g}"


def test_sigusr1_and_ckpt_last_end_with_the_weights_of_an_uninterrupted_run(smoke_data_dir, tmp_path, monkeypatch):
    # Stopped after step 3, before the first periodic checkpoint (no alignment stage, no rollouts; the end-of-
    # training critic diagnostics draw from the global RNG after last.ckpt is written).
    _sigusr1_resume_matches(smoke_data_dir, tmp_path, monkeypatch, stops=[2], extra=["alignment.enabled=false"])


@pytest.mark.slow
def test_sigusr1_at_any_step_resumes_exactly_with_alignment_and_rollouts(smoke_data_dir, tmp_path, monkeypatch):
    # Rollouts and critic diagnostics every 4 steps draw from the global RNG between training steps.
    rollouts = ["eval.seen=true", "eval.unseen=true", "eval.every_n_steps=4", "eval.episodes_per_task=1",
                "eval.max_episode_steps=10", "alignment.max_steps=4"]
    _sigusr1_resume_matches(smoke_data_dir, tmp_path, monkeypatch, stops=[0, 3, 6, 10], extra=rollouts)


@pytest.mark.slow
def test_after_sigkill_ckpt_last_continues_from_the_newest_periodic_checkpoint(smoke_data_dir, tmp_path):
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "llmdpd", "train", "smoke", f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={runs}",
            *QUIET, "alignment.max_steps=4", "checkpoint_every_n_steps=5", "trainer.max_steps=2000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = runs / "smoke" / "seed0" / "version_0"
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step15.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the policy stage did not reach step 15"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, a checkpoint may be half written
    proc.wait()
    newest = max(read_checkpoint(p)["global_step"] for p in (run / "checkpoints").glob("step*.ckpt"))
    result = subprocess.run([*args[:-1], "trainer.max_steps=40", "ckpt=last"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Run directory: {run} (continuing from" in result.stdout
    assert re.search(rf"Restored all states from the checkpoint at \S*(step{newest}|last)\.ckpt", result.stdout + result.stderr)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 40
    assert not list(runs.glob("smoke/seed0/version_1"))  # continued in place


def test_a_run_interrupted_in_its_final_evaluation_evaluates_when_continued(smoke_data_dir, tmp_path):
    """last.ckpt is written before the final evaluation; continuing from it (training already at max_steps,
    which Lightning skips) must still end with the run's eval.json."""
    from llmdpd.training import pipeline

    common = [f"paths.data_dir={smoke_data_dir}", f"paths.runs_dir={tmp_path}", "alignment.enabled=false",
              "trainer.max_steps=4", "eval.episodes_per_task=1", "eval.max_episode_steps=10",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    from tests.test_training import scalars

    def final_diagnostics() -> int:  # how often the critic diagnostics were logged at the final step
        return sum(step == 4 for step, _ in scalars(run / "tb").get("diag/q_linear_r2", []))

    run = pipeline.train(load_config("smoke", common))
    first = (run / "eval.json").read_text()
    assert final_diagnostics() == 1
    assert scalars(run / "tb")["diag/condition_spread/trajectory"][-1][1] > 0  # the tasks' conditions differ
    (run / "eval.json").unlink()  # as if stopped during the final evaluation
    again = pipeline.train(load_config("smoke", [*common, "ckpt=last"]))
    assert again == run and read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert final_diagnostics() == 2  # logged again: the stop may have come before them
    summary = yaml.safe_load((run / "eval.json").read_text())
    assert set(summary["tasks"]) == {"reach-v3", "button-press-topdown-v3", "drawer-close-v3"}
    assert all(entry["episodes"] == 1 for entry in summary["tasks"].values())
    assert summary["tasks"].keys() == yaml.safe_load(first)["tasks"].keys()
    # A finished run continued again does not evaluate a second time: its eval.json stays as it is.
    stamp = (run / "eval.json").stat().st_mtime_ns
    pipeline.train(load_config("smoke", [*common, "ckpt=last"]))
    assert (run / "eval.json").stat().st_mtime_ns == stamp and final_diagnostics() == 2
