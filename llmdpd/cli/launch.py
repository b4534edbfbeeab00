"""`llmdpd launch slurm EXP --nodes N --gpus-per-node G [options] [key=value ...]`: write (and submit) a
SLURM batch script that trains EXP on N x G GPUs, resumable across preemption and requeue.

The script goes into the folder that holds the experiment's run versions (`runs/<name>/seed<s>/`), is printed, and
is submitted with `sbatch` when `--submit` is given. Overrides are checked now, not on the compute nodes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Set by --nodes / --gpus-per-node, or fixed by the requeue mechanism.
RESERVED_KEYS = ("trainer.devices", "trainer.num_nodes", "ckpt")


def register(sub) -> None:
    parser = sub.add_parser("launch", help="launch training on a cluster (SLURM)", description=__doc__)
    targets = parser.add_subparsers(dest="target", required=True)
    slurm = targets.add_parser(
        "slurm",
        help="write a SLURM batch script for EXP into its run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    slurm.add_argument("exp", help="experiment name in experiments/ or a path to a YAML file")
    slurm.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=1000")
    slurm.add_argument("--nodes", type=int, required=True, help="number of nodes")
    slurm.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (one task per GPU)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--time", help="time limit, e.g. 24:00:00")
    slurm.add_argument("--cpus-per-task", type=int, help="CPU cores per task (per GPU)")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--job-name", default=None, help="job name (default: llmdpd-<experiment name>)")
    slurm.add_argument("--signal-seconds", type=int, default=90, help="send SIGUSR1 this long before the time limit")
    slurm.add_argument("--container", metavar="SIF", help="run each task in this Apptainer image (apptainer exec --nv)")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    slurm.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.launch.slurm import (
        LaunchError, SlurmJob, batch_script, llmdpd_executable, submit, train_command, write_script,
    )
    from llmdpd.runs import run_base

    for override in args.overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"'{override}': the job sets {', '.join(RESERVED_KEYS)} itself "
                "(from --nodes, --gpus-per-node, and ckpt=last to resume after a requeue)"
            )
    sizing = [f"trainer.devices={args.gpus_per_node}", f"trainer.num_nodes={args.nodes}"]
    cfg = load_config(args.exp, [*args.overrides, *sizing])
    job = SlurmJob(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        partition=args.partition,
        time=args.time,
        cpus_per_task=args.cpus_per_task,
        account=args.account,
        job_name=args.job_name or f"llmdpd-{cfg.name}",
        requeue_signal_seconds=args.signal_seconds,
    )
    directory = run_base(cfg)  # the job's `ckpt=last` continues the newest version below it, or makes one
    try:
        command = train_command(job, args.exp, args.overrides, llmdpd_executable(), args.container)
        script = write_script(batch_script(job, command, directory, Path.cwd()), directory)
        print(script.read_text())
        print(f"Wrote {script}")
        if args.submit:
            print(submit(script))
    except LaunchError as err:
        print(f"llmdpd launch: error: {err}", file=sys.stderr)
        return 2
    return 0
