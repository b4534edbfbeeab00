"""The batch contract as code: every key a batch holds, its shape, dtype and meaning, in one place.

The DataModule writes these keys, the prompt encoders, the alignment module and the policy's loss read them,
and the benchmarks build their bare loops from them; `check_batch` and `check_alignment_batch` verify a batch
against the contract (the tests call them on the DataModule's batches).

A policy batch is a `TensorDict` with batch_size [N] (N tasks). Per task it holds B transitions and one
trajectory prompt of H steps, all already normalised (observations by the training mean/std, rewards
multiplied by the reward scale; `llmdpd.data.normalizer`). An alignment batch has batch_size [N, K] (K prompts
per task, each from a prompt episode of that task at a random offset): `task`, `text_emb` (an independently
drawn paraphrase per prompt) and the prompt keys, each with [N, K] in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

TASK = "task"
TEXT_EMB = "text_emb"
OBS = "obs"
ACTION = "action"
REWARD = "reward"
NEXT_OBS = "next_obs"
DONE = "done"
DISCOUNT = "discount"
EPISODE_RETURN = "episode_return"
RETURN_TO_GO = "return_to_go"
PROMPT_OBS = "prompt_obs"
PROMPT_ACTION = "prompt_action"
PROMPT_REWARD = "prompt_reward"
PROMPT_POSITION = "prompt_position"
# Per stored step of an episode (EpisodeStore): its position within the episode.
POSITION = "position"

TRANSITION_KEYS = (OBS, ACTION, REWARD, NEXT_OBS, DONE, DISCOUNT, EPISODE_RETURN, RETURN_TO_GO)
PROMPT_KEYS = (PROMPT_OBS, PROMPT_ACTION, PROMPT_REWARD, PROMPT_POSITION)
# The floating-point prompt keys, in the order the trajectory encoder concatenates them into tokens.
PROMPT_STEP_KEYS = (PROMPT_OBS, PROMPT_ACTION, PROMPT_REWARD)
# Which stored step field each prompt key is drawn from.
PROMPT_SOURCE = {PROMPT_OBS: OBS, PROMPT_ACTION: ACTION, PROMPT_REWARD: REWARD, PROMPT_POSITION: POSITION}


@dataclass(frozen=True)
class Key:
    """One key of a policy batch: its trailing shape after [N] (symbols N, B, H, S, A, E; AT is A times the action
    horizon T), dtype and meaning."""

    name: str
    shape: tuple[str, ...]
    dtype: torch.dtype
    meaning: str
    optional: bool = False


POLICY_BATCH = (
    Key(TASK, ("N",), torch.long, "index into the DataModule's `train_tasks`"),
    Key(TEXT_EMB, ("N", "E"), torch.float32, "one randomly chosen paraphrase's LM embedding (text prompts on)", True),
    Key(OBS, ("N", "B", "S"), torch.float32, "normalised observation"),
    Key(ACTION, ("N", "B", "AT"), torch.float32, "the actions in [-1, 1] of T = policy.action_horizon steps from this one "
        "(T = 1: the step's action), concatenated; steps past the episode's end repeat its last action"),
    Key(REWARD, ("N", "B", "1"), torch.float32, "n-step discounted return, scaled (n = policy.n_step; 1: the reward)"),
    Key(NEXT_OBS, ("N", "B", "S"), torch.float32, "normalised observation m steps on (m = n, fewer at an episode's end)"),
    Key(DONE, ("N", "B", "1"), torch.float32, "1.0 where the episode terminated (not truncated)"),
    Key(DISCOUNT, ("N", "B", "1"), torch.float32, "gamma^m (1 - done) for the n-step return in `reward`"),
    Key(EPISODE_RETURN, ("N", "B", "1"), torch.float32,
        "undiscounted scaled return of the transition's whole episode (minus its path neighbours' mean under "
        "policy.awr_baseline: neighbours)"),
    Key(RETURN_TO_GO, ("N", "B", "1"), torch.float32, "discounted scaled return from this step to its episode's end"),
    Key(PROMPT_OBS, ("N", "H", "S"), torch.float32, "normalised observations of the trajectory prompt"),
    Key(PROMPT_ACTION, ("N", "H", "A"), torch.float32, "actions of the trajectory prompt"),
    Key(PROMPT_REWARD, ("N", "H", "1"), torch.float32, "scaled rewards of the trajectory prompt"),
    Key(PROMPT_POSITION, ("N", "H"), torch.long, "step index of each prompt step within its episode"),
)


def _check(batch: Mapping[str, Any], keys: tuple[Key, ...], sizes: Mapping[str, int], lead: tuple[int, ...]) -> None:
    present = set(batch.keys())
    for key in keys:
        if key.name not in present:
            if key.optional:
                continue
            raise KeyError(f"batch lacks '{key.name}' ({key.meaning})")
        tensor = batch[key.name]
        want = (*lead, *(sizes.get(s, int(s) if s.isdigit() else -1) for s in key.shape[1:]))
        got = tuple(tensor.shape)
        if len(got) != len(want) or any(w >= 0 and w != g for w, g in zip(want, got)):
            raise ValueError(f"batch['{key.name}'] has shape {list(got)}, expected {list(want)} ({', '.join(key.shape)})")
        if tensor.dtype != key.dtype:
            raise ValueError(f"batch['{key.name}'] has dtype {tensor.dtype}, expected {key.dtype}")
    unknown = present - {key.name for key in keys}
    if unknown:
        raise KeyError(f"batch holds keys outside the contract: {sorted(unknown)}")


def check_batch(batch: Mapping[str, Any], sizes: Optional[Mapping[str, int]] = None) -> None:
    """Raise when a policy batch breaks the contract; `sizes` may pin symbols (B, H, S, A, E, and T, the action
    horizon, 1 unless given)."""
    n = int(batch[TASK].shape[0])
    sizes = dict(sizes or {})
    if "A" in sizes:
        sizes.setdefault("AT", sizes["A"] * sizes.get("T", 1))
    _check(batch, POLICY_BATCH, sizes, (n,))


def check_alignment_batch(batch: Mapping[str, Any], sizes: Optional[Mapping[str, int]] = None) -> None:
    """Raise when an alignment batch ([N, K] in front of every key) breaks the contract."""
    lead = tuple(batch[TASK].shape)
    keys = tuple(k for k in POLICY_BATCH if k.name in (TASK, TEXT_EMB, *PROMPT_KEYS))
    _check(batch, keys, dict(sizes or {}), lead)
