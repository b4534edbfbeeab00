"""Run directories: where a run lives, which run and checkpoint a command continues, and the process's rank.

Layout: every `llmdpd train` gets its own directory, `paths.runs_dir/<name>/seed<seed>/version_<n>/`
(`paths.runs_dir/<run_name>/version_<n>/` with `run_name`), n = 0, 1, ... in order of creation:

    version_<n>/
        config.yaml            the resolved config (an older one is kept as config.resume<k>.yaml when a
                               resume changes it)
        checkpoints/           last.ckpt, step<N>.ckpt (policy stage); align/ (alignment stage)
        hpc_ckpt_<k>.ckpt      SLURM requeue checkpoints (Lightning's)
        tb/align, tb/policy    TensorBoard event files
        eval.json              the final evaluation

`plan_run` decides, from `ckpt`:
- absent: a new version (never another run's directory);
- `last`: the newest version of that name and seed, continued in place from its newest readable policy
  checkpoint (`latest_checkpoint`; none yet: its alignment stage resumes, or it starts over in place), or a
  new version when there is none;
- a path: the run holding that checkpoint, continued in place (a checkpoint outside any run directory
  starts a new version from its weights).

A run directory from before versions (`<name>/seed<s>/` holding `config.yaml` or `checkpoints/` itself)
counts as the newest run while no `version_<n>` exists beside it, so `ckpt=last` still continues it.

Only global rank 0 creates or writes a run directory. Other ranks read the directory rank 0 chose from
`LLMDPD_RUN_DIR` when Lightning started them (it copies rank 0's environment); started by torchrun or srun,
they resolve `ckpt=last` and `ckpt=PATH` to the same existing run as rank 0, and for a new run only need a
path that holds no checkpoints yet (they never write there: Lightning broadcasts rank 0's paths).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from llmdpd.checkpoints import CheckpointError, read_meta

RUN_DIR_ENV = "LLMDPD_RUN_DIR"
VERSION_PREFIX = "version_"
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"
_VERSION = re.compile(rf"^{VERSION_PREFIX}(\d+)$")

PathLike = Union[str, Path]


def global_rank() -> int:
    """This process's rank as torchrun/SLURM announce it (0 when not distributed).

    Before the Trainer exists this is all there is; processes that Lightning itself launches only carry
    LOCAL_RANK, which is non-zero exactly when the global rank is (single node).
    """
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


# ------------------------------------------------------------------------------------------------ layout
def run_base(cfg: Any) -> Path:
    """The folder holding every version of an experiment's runs: `<runs_dir>/<name>/seed<seed>` or `run_name`."""
    name = cfg.run_name or f"{cfg.name}/seed{cfg.seed}"
    return Path(cfg.paths.runs_dir) / name


def version_number(path: PathLike) -> Optional[int]:
    match = _VERSION.match(Path(path).name)
    return int(match.group(1)) if match else None


def versions(base: PathLike) -> list[Path]:
    """The `version_<n>` run directories under `base`, oldest first."""
    base = Path(base)
    if not base.is_dir():
        return []
    found = [(version_number(p), p) for p in base.iterdir() if p.is_dir()]
    return [p for n, p in sorted((n, p) for n, p in found if n is not None)]


def is_run_dir(path: PathLike) -> bool:
    """Whether `path` is a run directory (versioned or from before versions)."""
    path = Path(path)
    return (path / "config.yaml").is_file() or (path / "checkpoints").is_dir()


def newest_run(base: PathLike) -> Optional[Path]:
    """The newest run under `base`: its highest version, else `base` itself if it is an unversioned run."""
    found = versions(base)
    if found:
        return found[-1]
    return Path(base) if is_run_dir(base) else None


def next_version(base: PathLike) -> Path:
    found = versions(base)
    n = version_number(found[-1]) + 1 if found else 0
    return Path(base) / f"{VERSION_PREFIX}{n}"


def create_run(base: PathLike) -> Path:
    """Create and return the next `version_<n>` under `base` (safe against concurrent creators)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = next_version(base)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def run_holding(ckpt: PathLike) -> Optional[Path]:
    """The run directory a policy checkpoint belongs to (`<run>/checkpoints/x.ckpt` or `<run>/hpc_ckpt_k.ckpt`)."""
    parent = Path(ckpt).resolve().parent
    if parent.name == "checkpoints":
        return parent.parent
    if is_run_dir(parent) and parent.name != "align":
        return parent
    return None


def results_directory(ckpt: PathLike) -> Path:
    """Where the results of evaluating `ckpt` go: the run directory holding it, or the checkpoint's own folder
    when it is in none."""
    return run_holding(ckpt) or Path(ckpt).resolve().parent


# ------------------------------------------------------------------------------------------- checkpoints
def _written_into(checkpoint: dict[str, Any], checkpoint_dir: Path) -> bool:
    """Whether the trainer that wrote `checkpoint` kept its ModelCheckpoint files in `checkpoint_dir`.

    Requeue checkpoints of every stage land in the run directory; this tells the policy stage's
    (ModelCheckpoint in checkpoints/) from the alignment stage's (checkpoints/align/).
    """
    tail = checkpoint_dir.resolve().parts[-2:]
    for state in checkpoint.get("callbacks", {}).values():
        dirpath = state.get("dirpath") if isinstance(state, dict) else None
        if dirpath and Path(dirpath).parts[-2:] == tail:
            return True
    return False


def _step_number(path: Path) -> int:
    match = re.match(r"^step(\d+)\.ckpt$", path.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(directory: PathLike, report: bool = True) -> Optional[str]:
    """The policy-stage checkpoint `ckpt=last` resumes from in run directory `directory`, or None.

    Candidates: `checkpoints/last.ckpt` (periodic, final, or written on SIGUSR1), the periodic
    `checkpoints/step<N>.ckpt` and Lightning's SLURM requeue checkpoints `hpc_ckpt_<n>.ckpt` written by the
    policy stage. The highest global step among the readable ones wins; on a tie the requeue checkpoint
    (the later write), then last.ckpt. An unreadable candidate is skipped, and said so on stderr when it
    would have been the newest.
    """
    directory = Path(directory)
    checkpoint_dir = directory / "checkpoints"
    candidates: list[tuple[Path, int]] = []  # (path, tie-break rank)
    if checkpoint_dir.is_dir():
        periodic = sorted(checkpoint_dir.glob("step*.ckpt"), key=_step_number, reverse=True)
        candidates += [(p, 0) for p in periodic]
        if (checkpoint_dir / "last.ckpt").is_file():
            candidates.append((checkpoint_dir / "last.ckpt", 1))
    candidates += [(p, 2) for p in sorted(directory.glob(HPC_CHECKPOINT_GLOB))]
    best: Optional[tuple[int, int, Path]] = None
    unreadable: list[tuple[Path, str]] = []
    for path, rank in candidates:
        # Periodic checkpoints are named by step: skip reading those that cannot beat the best.
        if rank == 0 and best is not None and _step_number(path) < best[0]:
            continue
        try:
            meta = read_meta(path)
        except CheckpointError as err:
            unreadable.append((path, str(err)))
            continue
        if rank == 2 and not _written_into(meta, checkpoint_dir):
            continue
        key = (int(meta.get("global_step", 0)), rank, path)
        if best is None or key[:2] > best[:2]:
            best = key
    if unreadable and report:
        for path, err in unreadable:
            if best is None:
                print(f"llmdpd: warning: {err}; skipped", file=sys.stderr)
            else:
                print(f"llmdpd: warning: {err}; continuing from {best[2]} (step {best[0]}) instead", file=sys.stderr)
    return None if best is None else str(best[2])


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class RunPlan:
    """Where a `llmdpd train` writes and what it resumes from."""

    directory: Path
    ckpt: Optional[str]  # the policy-stage checkpoint to resume from
    continuing: bool  # the directory is an earlier run's, continued in place


def checked_checkpoint_path(ckpt: PathLike) -> str:
    """`ckpt` if it is a readable checkpoint file, else `CheckpointError` naming it."""
    read_meta(ckpt)
    return str(ckpt)


def plan_run(cfg: Any, rank: Optional[int] = None) -> RunPlan:
    """The run directory and checkpoint of a `llmdpd train` (see the module docstring); rank 0 creates a
    new directory, other ranks only compute it."""
    rank = global_rank() if rank is None else rank
    base = run_base(cfg)
    if rank != 0 and os.environ.get(RUN_DIR_ENV):
        directory = Path(os.environ[RUN_DIR_ENV])
        ckpt = None
        if cfg.ckpt == "last":
            ckpt = latest_checkpoint(directory, report=False)
        elif cfg.ckpt is not None:
            ckpt = str(cfg.ckpt)
        return RunPlan(directory, ckpt, continuing=cfg.ckpt is not None)
    if cfg.ckpt == "last":
        existing = newest_run(base)
        if existing is not None:
            return RunPlan(existing, latest_checkpoint(existing, report=rank == 0), continuing=True)
    elif cfg.ckpt is not None:
        ckpt = checked_checkpoint_path(cfg.ckpt)
        holder = run_holding(ckpt)
        if holder is not None:
            return RunPlan(holder, ckpt, continuing=True)
        directory = create_run(base) if rank == 0 else next_version(base)
        return RunPlan(directory, ckpt, continuing=False)
    directory = create_run(base) if rank == 0 else next_version(base)
    return RunPlan(directory, None, continuing=False)


def checkpoint_for_evaluation(cfg: Any) -> str:
    """The checkpoint `llmdpd eval` scores: `ckpt=PATH`, or with `ckpt=last` the newest readable policy
    checkpoint of the newest run of the experiment (a `CheckpointError` or `FileNotFoundError` otherwise)."""
    if cfg.ckpt is None:
        raise CheckpointError("llmdpd eval needs ckpt=PATH (or ckpt=last for the experiment's newest run)")
    if cfg.ckpt != "last":
        return checked_checkpoint_path(cfg.ckpt)
    base = run_base(cfg)
    run = newest_run(base)
    if run is None:
        raise CheckpointError(f"ckpt=last: no run under {base}")
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise CheckpointError(f"ckpt=last: no readable policy checkpoint in {run / 'checkpoints'}")
    return ckpt
