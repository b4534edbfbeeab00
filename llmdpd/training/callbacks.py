"""Training callbacks of the pipeline: stop after a non-finite loss (before any checkpoint holds it), and
checkpoints whose RNG state is the one the next training step would use."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from llmdpd.errors import TrainingError


class NonFiniteLossCheck(L.Callback):
    """Raises `TrainingError` when a loss has been NaN or infinite, before any checkpoint holds its effects.

    Every step (both stages; automatic and manual optimisation) `on_before_backward` folds the summed loss and
    its named parts into a flag on the loss's device, with the first bad step and its values, without reading
    anything back to the host. The flag is read (one host synchronisation; under DDP one all-reduce, so all
    ranks stop together) on the steps Lightning logs (`log_every_n_steps`), when training ends, and before any
    checkpoint is written (`on_save_checkpoint` runs while Lightning builds the checkpoint, before the file):
    a run stops within `log_every_n_steps` steps of its first bad loss and keeps its last good checkpoint.
    The named parts come from the module's `loss_parts` (the policy module's `loss_*` entries) when it has them.

    `last_good()` returns the newest checkpoint on disk, for the message.
    """

    def __init__(self, stage: str, last_good: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.stage = stage
        self.last_good = last_good
        self._reset()

    def _reset(self) -> None:
        self._names: list[str] = []
        self._bad: Optional[Tensor] = None  # any non-finite loss so far
        self._first_step: Optional[Tensor] = None  # the global step of the first one
        self._first_values: Optional[Tensor] = None  # [loss, *parts] at that step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        parts = getattr(pl_module, "loss_parts", None) or {}
        names = ["loss", *parts]
        values = torch.stack([loss.detach().float().reshape(()), *(v.float().reshape(()) for v in parts.values())])
        bad_now = ~torch.isfinite(values).all()
        if self._bad is None or names != self._names:
            self._check(trainer)  # a change of parts (a new fit of the module) starts a new record
            self._names = names
            self._bad = torch.zeros((), dtype=torch.bool, device=values.device)
            self._first_step = torch.full((), -1, dtype=torch.long, device=values.device)
            self._first_values = torch.zeros_like(values)
        first = bad_now & ~self._bad
        self._first_step = torch.where(first, trainer.global_step, self._first_step)
        self._first_values = torch.where(first, values, self._first_values)
        self._bad = self._bad | bad_now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        every = trainer.log_every_n_steps
        if every > 0 and trainer.global_step % every == 0:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        """Read the flag (all ranks must call this together) and raise if any loss so far was not finite."""
        bad = self._bad is not None and bool(self._bad)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        if self._bad is not None and bool(self._bad):
            values = self._first_values.tolist()
            named = [(name, value) for name, value in zip(self._names, values) if not math.isfinite(value)]
            parts = [(name, value) for name, value in named if name != "loss"] or named
            what, step = ", ".join(f"{name} = {value:g}" for name, value in parts), int(self._first_step)
        else:
            what, step = "the loss of another rank", trainer.global_step
        kept = self.last_good() if self.last_good is not None else None
        keeping = f"; the last good checkpoint is {kept}" if kept else "; no checkpoint of this stage was written"
        raise TrainingError(
            f"non-finite {what} in the {self.stage} stage at step {step}; training stopped at step "
            f"{trainer.global_step}, before a checkpoint held it{keeping}"
        )


class SaveLastCheckpoint(L.Callback):
    """Saves `path` when training ends (all ranks take part), before the callbacks after it run.

    Placed first among the callbacks, so the end-of-training evaluation and diagnostics, which draw from the
    global RNG, come after the save: the checkpoint's RNG state is the one the next step would have used,
    and a run continued from it draws what an uninterrupted run would have.
    """

    def __init__(self, path: Any) -> None:
        self.path = str(path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` without its save of `last.ckpt` when training ends.

    `SaveLastCheckpoint` writes that file before the end-of-training callbacks; `ModelCheckpoint` runs last of
    all callbacks, so its own save would hold the RNG state after the final evaluation's draws, and a run
    continued from it would not draw what an uninterrupted run draws.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return None
