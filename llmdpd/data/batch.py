"""The layout of one training batch, shared by the DataModule, the prompt encoders and the policy.

A batch is a `TensorDict` with batch_size [N] (N tasks). Per task i it holds B transitions and one
trajectory prompt of H steps, all already normalised (observations by the training mean/std, rewards
multiplied by the reward scale):

    task             [N]          long   index into the DataModule's `train_tasks`
    text_emb         [N, E]       float  one randomly chosen paraphrase's LM embedding (only if text prompts on)
    obs              [N, B, S]    float
    action           [N, B, A]    float  in [-1, 1]
    reward           [N, B, 1]    float  the n-step discounted return (n = `policy.n_step`; 1: the reward)
    next_obs         [N, B, S]    float  the state m steps on (m = n, or fewer at the episode's end)
    done             [N, B, 1]    float  1.0 where the episode terminated (not truncated)
    discount         [N, B, 1]    float  gamma^m (1 - done) for the n-step return in `reward` (m <= n steps)
    prompt_obs       [N, H, S]    float
    prompt_action    [N, H, A]    float
    prompt_reward    [N, H, 1]    float
    prompt_position  [N, H]       long   step index of each prompt step within its episode

The alignment stage (`PromptEncoderModule`) reads an alignment batch: a `TensorDict` with batch_size [N, K]
(K prompts per task, each from a prompt episode of that task at a random offset), holding `task` [N, K],
`text_emb` [N, K, E] (an independently drawn paraphrase per prompt) and the four `prompt_*` keys with
shapes [N, K, H, ...].
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

TRANSITION_KEYS = ("obs", "action", "reward", "next_obs", "done", "discount")
PROMPT_KEYS = ("prompt_obs", "prompt_action", "prompt_reward", "prompt_position")


def random_batch(
    n_tasks: int = 3,
    batch_per_task: int = 8,
    prompt_length: int = 20,
    obs_dim: int = 39,
    action_dim: int = 4,
    text_dim: int | None = 32,
    generator: torch.Generator | None = None,
) -> TensorDict:
    """A batch of the right layout with random values (for shape tests and benchmarks)."""
    g = generator
    n, b, h = n_tasks, batch_per_task, prompt_length
    data = {
        "task": torch.arange(n),
        "obs": torch.randn(n, b, obs_dim, generator=g),
        "action": torch.rand(n, b, action_dim, generator=g) * 2 - 1,
        "reward": torch.rand(n, b, 1, generator=g),
        "next_obs": torch.randn(n, b, obs_dim, generator=g),
        "done": torch.zeros(n, b, 1),
        "discount": torch.full((n, b, 1), 0.99),
        "prompt_obs": torch.randn(n, h, obs_dim, generator=g),
        "prompt_action": torch.rand(n, h, action_dim, generator=g) * 2 - 1,
        "prompt_reward": torch.rand(n, h, 1, generator=g),
        "prompt_position": torch.arange(h).repeat(n, 1) * 25,
    }
    if text_dim:
        data["text_emb"] = torch.randn(n, text_dim, generator=g)
    return TensorDict(data, batch_size=[n])
