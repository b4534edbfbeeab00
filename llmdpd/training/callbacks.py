"""Training callbacks of the pipeline: stop at the first non-finite loss (before it reaches the weights), and
checkpoints whose RNG state is the one the next training step would use."""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from llmdpd.errors import TrainingError


class NonFiniteLossCheck(L.Callback):
    """Raises `TrainingError` before the backward pass of a step whose loss is NaN or infinite.

    The check runs on the summed loss in `on_before_backward` (both stages; automatic and manual
    optimisation), so the optimizer never applies the step and no later checkpoint is written: the run keeps
    its last good checkpoint. The named parts come from the module's `loss` (a torchrl LossModule whose
    output holds `loss_*` entries) when it has one. Under DDP the ranks agree first (one all-reduce per step),
    so all of them stop together instead of one leaving the others in a collective.

    `last_good()` returns the newest checkpoint on disk, for the message.
    """

    def __init__(self, stage: str, last_good: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.stage = stage
        self.last_good = last_good
        self._parts: dict[str, Tensor] = {}
        self._hook: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = getattr(pl_module, "loss", None)
        if isinstance(loss, nn.Module):
            self._hook = loss.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        try:
            self._parts = {k: output[k] for k in output.keys() if str(k).startswith("loss_")}
        except (AttributeError, TypeError, KeyError):
            self._parts = {}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._parts = {}
            return
        names = [name for name, value in self._parts.items() if not bool(torch.isfinite(value.detach()).all())]
        what = ", ".join(f"{name} = {self._parts[name].detach().float().mean().item():g}" for name in names)
        if not what:
            what = f"loss = {loss.detach().float().mean().item():g}" if not bool(torch.isfinite(loss).all()) else (
                "the loss of another rank")
        kept = self.last_good() if self.last_good is not None else None
        keeping = f"; the last good checkpoint is {kept}" if kept else "; no checkpoint of this stage was written"
        raise TrainingError(
            f"non-finite {what} in the {self.stage} stage at step {trainer.global_step}; training stopped before "
            f"the step was applied{keeping}"
        )

    def _remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove()


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
