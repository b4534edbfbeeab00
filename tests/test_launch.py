"""Scaling out: a two-node torchrun job on loopback (gloo), SLURM batch scripts, stopping on SIGUSR1 with a
checkpoint and resuming from it, requeue-checkpoint selection, and concurrent data generation.

The multi-process tests start real `torchrun` / `llmdpd` processes with one thread each.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from llmdpd.cli.main import main
from llmdpd.runs import latest_checkpoint
from llmdpd.training.requeue import SignalCheckpoint

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")

# Runs the real `llmdpd train` and, in addition, saves each rank's final policy-stage parameters.
DUMP_SCRIPT = '''
import sys
from pathlib import Path

import lightning as L
import torch

from llmdpd.cli.main import main
from llmdpd.training import pipeline


class SaveFinalParameters(L.Callback):
    def __init__(self):
        self.first_obs = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_obs is None:
            self.first_obs = batch["obs"].detach().cpu().clone()

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        out = Path(sys.argv[1]) / f"rank{trainer.global_rank}.pt"
        info = {"world_size": trainer.world_size, "global_step": trainer.global_step, "first_obs": self.first_obs}
        torch.save({**info, "state": state}, out)


stage_trainer = pipeline._stage_trainer


def with_dump(cfg, directory, max_steps, name, callbacks, **extra):
    if name == "policy":
        callbacks = [*callbacks, SaveFinalParameters()]
    return stage_trainer(cfg, directory, max_steps, name, callbacks, **extra)


pipeline._stage_trainer = with_dump
main(["train", *sys.argv[2:]])
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    # Output to files, not pipes: a rank blocked on a full pipe would stall the other rank's collectives.
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, f"exit code {proc.returncode}; output tail:\n{text[-4000:]}"
    return text


def _smoke(data_dir: Path, runs_dir: Path, *extra: str) -> list[str]:
    short = ["alignment.max_steps=4", "eval.episodes_per_task=1", "eval.max_episode_steps=30"]
    return ["smoke", f"paths.data_dir={data_dir}", f"paths.runs_dir={runs_dir}", *short, *extra]


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_two_nodes_on_loopback_train_in_lockstep(smoke_data_dir, tmp_path):
    script, dumps, runs = tmp_path / "train_and_dump.py", tmp_path / "dumps", tmp_path / "runs"
    script.write_text(DUMP_SCRIPT)
    dumps.mkdir()
    port = _free_port()
    train_args = _smoke(
        smoke_data_dir, runs, "trainer.num_nodes=2", "trainer.devices=1", "trainer.accelerator=cpu",
        "trainer.max_steps=6", "checkpoint_every_n_steps=3",
    )
    procs = []
    for node in (0, 1):
        # One torchrun per "node", sharing runs/ and data/ as cluster nodes share a file system.
        cmd = [
            TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
            "--master-addr", "127.0.0.1", "--master-port", str(port), str(script), str(dumps), *train_args,
        ]
        procs.append((_start(cmd, tmp_path / f"node{node}.log"), tmp_path / f"node{node}.log"))
    outputs = [_finish(proc, log, timeout=300) for proc, log in procs]
    assert "distributed_backend=gloo" in outputs[0]

    finals = [torch.load(dumps / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [f["world_size"] for f in finals] == [2, 2]
    assert [f["global_step"] for f in finals] == [6, 6]
    # Each rank draws its own batches; DDP's gradient averaging keeps the parameters identical.
    assert not torch.equal(finals[0]["first_obs"], finals[1]["first_obs"])
    assert finals[0]["state"].keys() == finals[1]["state"].keys()
    for key, value in finals[0]["state"].items():
        assert torch.equal(value, finals[1]["state"][key]), key

    run = runs / "smoke" / "seed0" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6
    for key, value in finals[0]["state"].items():
        assert torch.equal(value, saved["state_dict"][key]), key
    middle = torch.load(run / "checkpoints" / "step3.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(middle[k], saved["state_dict"][k]) for k in middle if middle[k].is_floating_point())
    # Rank 0 alone writes the run's files: one event file per stage, one config, one eval.json.
    assert len(list((run / "tb" / "policy").glob("events.out.tfevents.*"))) == 1
    assert len(list((run / "tb" / "align").glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file() and (run / "eval.json").is_file()


def _sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            options[key] = value
    return options


def test_slurm_script_asks_for_one_task_per_gpu_and_resumes(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        main([
            "launch", "slurm", "smoke", "--nodes", "2", "--gpus-per-node", "4", "--time", "2:00:00",
            "--partition", "gpu", f"paths.runs_dir={runs}", "trainer.max_steps=500",
        ])
    assert exit_.value.code == 0
    script_path = runs / "smoke" / "seed0" / "slurm_job.sh"
    script = script_path.read_text()
    assert script in capsys.readouterr().out
    options = _sbatch_options(script)
    assert options["nodes"] == "2"
    assert options["ntasks-per-node"] == "4"
    assert options["gpus-per-node"] == "4"
    assert options["time"] == "2:00:00" and options["partition"] == "gpu"
    assert options["signal"] == "SIGUSR1@90"
    assert "requeue" in options and options["open-mode"] == "append"
    assert options["output"] == str((runs / "smoke" / "seed0").resolve() / "slurm-%j.out")
    assert "account" not in options and "cpus-per-task" not in options
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    words = srun[0].split()
    assert Path(words[1]).name == "llmdpd" and words[2:4] == ["train", "smoke"]
    sizing = ["trainer.devices=4", "trainer.num_nodes=2", "ckpt=last"]
    assert words[4:] == [*sizing, f"paths.runs_dir={runs}", "trainer.max_steps=500"]

    # --submit hands the script to sbatch; without sbatch on PATH the error says what to run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "sbatch_args"}\necho "Submitted batch job 42"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SystemExit) as exit_:
        main(["launch", "slurm", "smoke", "--nodes", "1", "--gpus-per-node", "2", f"paths.runs_dir={runs}", "--submit"])
    assert exit_.value.code == 0
    assert "Submitted batch job 42" in capsys.readouterr().out
    assert (tmp_path / "sbatch_args").read_text().strip() == str(script_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_:
        main(["launch", "slurm", "smoke", "--nodes", "1", "--gpus-per-node", "2", f"paths.runs_dir={runs}", "--submit"])
    assert exit_.value.code == 2
    assert "sbatch not found" in capsys.readouterr().err
    # The job sets devices, nodes and ckpt itself.
    with pytest.raises(SystemExit) as exit_:
        main(["launch", "slurm", "smoke", "--nodes", "1", "--gpus-per-node", "2", "trainer.devices=8"])
    assert exit_.value.code == 2


def test_sigusr1_saves_last_checkpoint_stops_and_resume_continues(smoke_data_dir, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "smoke" / "seed0" / "version_0"
    args = _smoke(smoke_data_dir, runs, "checkpoint_every_n_steps=5")
    log = tmp_path / "first.log"
    proc = _start([PYTHON, "-m", "llmdpd", "train", *args, "trainer.max_steps=100000"], log)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step5.ckpt").exists():  # the policy stage is running
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "policy stage did not reach step 5"
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    output = _finish(proc, log, timeout=240)
    stopped = _step(run / "checkpoints" / "last.ckpt")
    assert 5 <= stopped < 1000
    assert f"saved {run / 'checkpoints' / 'last.ckpt'} at step {stopped}" in output

    # Resume to a multiple of the checkpoint period, so that the end of the resumed run is on disk too.
    target = (stopped // 5 + 2) * 5
    log = tmp_path / "resumed.log"
    proc = _start([PYTHON, "-m", "llmdpd", "train", *args, f"trainer.max_steps={target}", "ckpt=last"], log)
    output = _finish(proc, log, timeout=240)
    assert re.search(r"Restored all states from the checkpoint at \S*last\.ckpt", output)
    assert "max_steps=4" not in output  # the alignment stage did not run again
    assert _step(run / "checkpoints" / "last.ckpt") == target == _step(run / "checkpoints" / f"step{target}.ckpt")


class _SignalSelf(L.Callback):
    """Sends this process SIGUSR1 at batch `at` (a stand-in for an external `kill -USR1`)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


def _fit(tmp_path: Path, callbacks: list) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=str(tmp_path), max_steps=50, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(BoringModel())
    return trainer


def test_signal_checkpoint_stops_a_fit_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    callback = SignalCheckpoint(tmp_path / "last.ckpt")
    trainer = _fit(tmp_path, [_SignalSelf(at=3), callback])
    assert callback.stopped_at_step == 4 == trainer.global_step
    assert _step(tmp_path / "last.ckpt") == 4
    assert signal.getsignal(signal.SIGUSR1) is before


def test_signal_checkpoint_leaves_sigusr1_to_lightning_under_slurm(tmp_path, monkeypatch):
    slurm = {
        "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "llmdpd-test", "SLURM_JOB_ID": "1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.setdefault("handler", signal.getsignal(signal.SIGUSR1))

    callback = SignalCheckpoint(tmp_path / "last.ckpt")
    _fit(tmp_path, [callback, Spy()])
    # Lightning's auto-requeue handler (hpc checkpoint + scontrol requeue) is the one installed.
    assert type(seen["handler"]).__name__ == "_HandlersCompose"
    assert not (tmp_path / "last.ckpt").exists()


def _fake_checkpoint(path: Path, step: int, dirpath: Path) -> None:
    state = {"dirpath": str(dirpath.resolve()), "last_model_path": ""}
    torch.save({"global_step": step, "callbacks": {"ModelCheckpoint{'monitor': None}": state}, "state_dict": {}}, path)


def test_resume_picks_the_newest_policy_checkpoint(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    (ckpts / "align").mkdir(parents=True)
    assert latest_checkpoint(run) is None
    _fake_checkpoint(ckpts / "last.ckpt", 100, ckpts)
    assert latest_checkpoint(run) == str(ckpts / "last.ckpt")
    _fake_checkpoint(run / "hpc_ckpt_1.ckpt", 150, ckpts)  # SLURM requeue checkpoint, newer
    assert latest_checkpoint(run) == str(run / "hpc_ckpt_1.ckpt")
    _fake_checkpoint(run / "hpc_ckpt_2.ckpt", 900, ckpts / "align")  # written by the alignment stage
    assert latest_checkpoint(run) == str(run / "hpc_ckpt_1.ckpt")
    _fake_checkpoint(ckpts / "last.ckpt", 200, ckpts)  # a periodic checkpoint after the requeue
    assert latest_checkpoint(run) == str(ckpts / "last.ckpt")


def test_concurrent_data_calls_write_each_dataset_once(tmp_path):
    import minari

    from llmdpd.config.load import load_config
    from llmdpd.data.generate import dataset_id
    from llmdpd.data.minari_store import minari_root

    root = tmp_path / "data"
    small = ["data.episodes_per_task=2", "data.prompt_episodes=1", "data.max_episode_steps=40"]
    cmd = [PYTHON, "-m", "llmdpd", "data", "smoke", f"paths.data_dir={root}", *small]
    procs = [(_start(cmd, tmp_path / f"data{i}.log"), tmp_path / f"data{i}.log") for i in (0, 1)]
    outputs = [_finish(proc, log, timeout=240) for proc, log in procs]
    counts = [re.search(r"(\d+) dataset\(s\) written, (\d+) already complete", out).groups() for out in outputs]
    cfg = load_config("smoke", [f"paths.data_dir={root}", *small])
    tasks = cfg.data.train_tasks + cfg.data.unseen_tasks
    expected = {dataset_id(cfg, t, "mixed"): cfg.data.episodes_per_task for t in tasks}
    expected |= {dataset_id(cfg, t, "prompt"): cfg.data.prompt_episodes for t in tasks}
    assert sum(int(written) for written, _ in counts) == len(expected)  # each dataset written once
    assert all(int(w) + int(c) == len(expected) for w, c in counts)
    with minari_root(root):
        for ds_id, episodes in expected.items():
            assert minari.load_dataset(ds_id).total_episodes == episodes
    assert not [p for p in root.rglob("*") if ".partial-" in p.name]
