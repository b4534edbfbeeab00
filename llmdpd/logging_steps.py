"""Which training steps log their scalars: the one rule both stages' LightningModules follow."""

from __future__ import annotations

from typing import Any, Optional


def logs_this_step(trainer: Optional[Any]) -> bool:
    """Whether the training step about to run logs its scalars.

    Lightning writes logged values every `trainer.log_every_n_steps` steps (its logger connector counts
    `global_step + 1` with one optimizer step per batch); the last step logs too, so `trainer.callback_metrics`
    holds the final values. On other steps a module computes no statistics and reads nothing back to the host.
    False without a trainer.
    """
    if trainer is None:
        return False
    step, every = trainer.global_step + 1, trainer.log_every_n_steps
    return (every > 0 and step % every == 0) or (trainer.max_steps > 0 and step >= trainer.max_steps)
