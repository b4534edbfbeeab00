"""Batches for shape tests and benchmarks. The layout of a batch (keys, shapes, dtypes, meanings) is the
contract in `llmdpd.data.keys`; the key tuples are re-exported here for existing imports."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from llmdpd.data import keys as K
from llmdpd.data.keys import PROMPT_KEYS, TRANSITION_KEYS  # noqa: F401  (re-exported)


def random_batch(
    n_tasks: int = 3,
    batch_per_task: int = 8,
    prompt_length: int = 20,
    obs_dim: int = 39,
    action_dim: int = 4,
    text_dim: int | None = 32,
    generator: torch.Generator | None = None,
    action_horizon: int = 1,
) -> TensorDict:
    """A batch of the right layout with random values (for shape tests and benchmarks); `action` holds chunks of
    `action_horizon` actions."""
    g = generator
    n, b, h = n_tasks, batch_per_task, prompt_length
    data = {
        K.TASK: torch.arange(n),
        K.OBS: torch.randn(n, b, obs_dim, generator=g),
        K.ACTION: torch.rand(n, b, action_dim * action_horizon, generator=g) * 2 - 1,
        K.REWARD: torch.rand(n, b, 1, generator=g),
        K.NEXT_OBS: torch.randn(n, b, obs_dim, generator=g),
        K.DONE: torch.zeros(n, b, 1),
        K.DISCOUNT: torch.full((n, b, 1), 0.99),
        K.EPISODE_RETURN: torch.rand(n, b, 1, generator=g) * 100,
        K.RETURN_TO_GO: torch.rand(n, b, 1, generator=g) * 50,
        K.PROMPT_OBS: torch.randn(n, h, obs_dim, generator=g),
        K.PROMPT_ACTION: torch.rand(n, h, action_dim, generator=g) * 2 - 1,
        K.PROMPT_REWARD: torch.rand(n, h, 1, generator=g),
        K.PROMPT_POSITION: torch.arange(h).repeat(n, 1) * 25,
    }
    if text_dim:
        data[K.TEXT_EMB] = torch.randn(n, text_dim, generator=g)
    return TensorDict(data, batch_size=[n])
