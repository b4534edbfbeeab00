"""Stopping on a signal with a checkpoint, and finding the checkpoint a requeued run resumes from.

Two mechanisms write the checkpoint a preempted policy stage continues from; `ckpt=last` reads either:

- Under SLURM (Lightning picks `SLURMEnvironment(auto_requeue=True)` by itself), Lightning owns SIGUSR1:
  the batch script asks for it 90 s before the time limit (`--signal=SIGUSR1@90`), and Lightning's handler
  saves `hpc_ckpt_<n>.ckpt` in the trainer's `default_root_dir` (the run directory) and runs
  `scontrol requeue`. The requeued job runs the same `llmdpd train ... ckpt=last` command.
- Anywhere else (torchrun, plain runs), `SignalCheckpoint` handles SIGUSR1: it saves `checkpoints/last.ckpt`
  at the next batch end and stops training cleanly, so `ckpt=last` continues from that step.

`llmdpd.runs.latest_checkpoint` picks the newest readable (highest global step) of `checkpoints/last.ckpt`,
`checkpoints/step<N>.ckpt` and the policy stage's `hpc_ckpt_*.ckpt`, so a periodic checkpoint written after an
old requeue checkpoint wins, and vice versa.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from llmdpd.runs import HPC_CHECKPOINT_GLOB, latest_checkpoint  # noqa: F401  (re-exported)


def lightning_handles_requeue(trainer: L.Trainer) -> bool:
    """True when Lightning's own SLURM auto-requeue handler will take the requeue signal for this trainer."""
    # The same test as Lightning's signal connector; the connector is private, so fall back to detection.
    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if environment is None:
        return SLURMEnvironment.detect()
    return isinstance(environment, SLURMEnvironment) and bool(environment.auto_requeue)


class SignalCheckpoint(L.Callback):
    """On `signum` (SIGUSR1), save a checkpoint at the next training-batch end and stop training cleanly.

    The handler, installed at fit start on every rank, only sets a flag: saving inside a signal handler could
    interrupt a collective operation. Under DDP the ranks agree on the flag (any rank that got the signal
    stops all of them) every `sync_every_n_batches` batches, then all ranks call `trainer.save_checkpoint`
    together (it synchronises them; rank 0 writes). Inactive under SLURM auto-requeue, where Lightning's
    handler owns the signal (see the module docstring). The previous handler is restored when fit ends.
    """

    def __init__(
        self,
        path: Union[str, Path],
        signum: int = signal.SIGUSR1,
        sync_every_n_batches: int = 10,
    ) -> None:
        self.path = Path(path)
        self.signum = signum
        # Agreeing costs one all-reduce (and a host sync) per check; single processes check every batch.
        self.sync_every_n_batches = max(int(sync_every_n_batches), 1)
        self.requested = False
        self.stopped_at_step: Optional[int] = None
        self._previous_handler: Any = None
        self._installed = False
        self._batches = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested, self.stopped_at_step, self._batches = False, None, 0
        if lightning_handles_requeue(trainer) or threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(self.signum, self._on_signal)
        self._installed = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._installed:
            return
        self._batches += 1
        if trainer.world_size > 1:
            # Every rank runs the same number of batches, so all of them reach this collective together.
            if self._batches % self.sync_every_n_batches:
                return
            stop = trainer.strategy.reduce_boolean_decision(self.requested, all=False)
        else:
            stop = self.requested
        if not stop:
            return
        trainer.save_checkpoint(str(self.path))
        self.stopped_at_step = trainer.global_step
        trainer.should_stop = True
        rank_zero_info(
            f"Signal {signal.Signals(self.signum).name}: saved {self.path} at step {trainer.global_step} and "
            "stopped; resume with ckpt=last."
        )

    def _restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous_handler)
            self._installed = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
