"""SLURM batch scripts for `llmdpd train`: one task per GPU, started by `srun`, requeued on preemption.

The script asks SLURM for SIGUSR1 `requeue_signal_seconds` before the time limit. Under `srun`, Lightning
detects SLURM (`SLURMEnvironment`, auto-requeue on): its handler saves `hpc_ckpt_<n>.ckpt` in the run
directory and calls `scontrol requeue`; the requeued job runs the same command, and `ckpt=last` resumes
from the newest checkpoint of the newest run (`llmdpd.runs.latest_checkpoint`). `--open-mode=append` keeps one log
across requeues (the job id stays the same).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

SCRIPT_NAME = "slurm_job.sh"


class LaunchError(RuntimeError):
    """A job that cannot be written or submitted, with a message that says what to do."""


@dataclass
class SlurmJob:
    """The resources one `sbatch` job asks for; None leaves a setting to the cluster's default."""

    nodes: int
    gpus_per_node: int
    partition: Optional[str] = None
    time: Optional[str] = None
    cpus_per_task: Optional[int] = None
    account: Optional[str] = None
    job_name: str = "llmdpd"
    requeue_signal_seconds: int = 90


def llmdpd_executable() -> str:
    """The `llmdpd` entry point of this environment (absolute, so compute nodes need no PATH set up)."""
    beside = Path(sys.executable).parent / "llmdpd"
    return str(beside) if beside.is_file() else "llmdpd"


def train_command(
    job: SlurmJob, exp: str, overrides: Sequence[str], executable: str = "llmdpd", container: Optional[str] = None
) -> list[str]:
    """The per-task command: `llmdpd train EXP trainer.devices=G trainer.num_nodes=N ckpt=last ...`."""
    prefix = ["apptainer", "exec", "--nv", container, "llmdpd"] if container else [executable]
    sizing = [f"trainer.devices={job.gpus_per_node}", f"trainer.num_nodes={job.nodes}", "ckpt=last"]
    return [*prefix, "train", exp, *sizing, *overrides]


def batch_script(job: SlurmJob, command: Sequence[str], run_directory: Path, workdir: Path) -> str:
    """The text of the batch script that runs `command` once per GPU with `srun`."""
    if job.nodes < 1 or job.gpus_per_node < 1:
        raise LaunchError(f"need at least one node and one GPU per node (got {job.nodes} x {job.gpus_per_node})")
    options = [
        ("job-name", job.job_name),
        ("nodes", job.nodes),
        # Lightning expects one task per device: it checks ntasks-per-node against trainer.devices.
        ("ntasks-per-node", job.gpus_per_node),
        ("gpus-per-node", job.gpus_per_node),
        ("cpus-per-task", job.cpus_per_task),
        ("partition", job.partition),
        ("time", job.time),
        ("account", job.account),
        ("signal", f"SIGUSR1@{job.requeue_signal_seconds}"),
        ("open-mode", "append"),
        ("output", Path(run_directory).resolve() / "slurm-%j.out"),
        ("chdir", Path(workdir).resolve()),
    ]
    lines = ["#!/bin/bash", "# Written by `llmdpd launch slurm`; submit with `sbatch` (or `llmdpd launch ... --submit`)."]
    lines += [f"#SBATCH --{key}={value}" for key, value in options if value is not None]
    lines += [
        "#SBATCH --requeue",
        "",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "export TOKENIZERS_PARALLELISM=false",
        "",
        "srun " + shlex.join(command),
        "",
    ]
    return "\n".join(lines)


def write_script(text: str, run_directory: Path) -> Path:
    """Write the batch script into the run directory (created if needed); returns its path."""
    run_directory.mkdir(parents=True, exist_ok=True)
    path = run_directory / SCRIPT_NAME
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit(script: Path) -> str:
    """Submit `script` with `sbatch`; returns sbatch's reply (e.g. `Submitted batch job 123`)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError(f"sbatch not found on PATH; on a SLURM login node run: sbatch {script}")
    result = subprocess.run([sbatch, str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LaunchError(f"sbatch {script} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()
