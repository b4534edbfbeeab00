"""The environment a Minari dataset was recorded in, recovered from the dataset, as a torchrl environment.

`recover_environment(eval_env=True)` gives the dataset's evaluation env (or its recording env when it names
none); torchrl's `GymWrapper` wraps it. What an evaluation needs to know about a dataset's env (whether it
reports success, the reference scores that normalise returns) is read once per process by
`minari_env_info`, which also turns a dataset without an env spec, or an env that cannot be built, into a
one-line `DatasetError` naming the dataset.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from llmdpd.data.minari_store import DatasetError, load_dataset


@dataclass(frozen=True)
class MinariEnvInfo:
    """What an evaluation uses of a Minari dataset's environment."""

    dataset_id: str
    env_id: str
    # The env's own episode limit (None: unlimited); evaluations stop there at the latest.
    max_episode_steps: int | None
    # Whether its steps carry info["success"]; returns are all an env without it reports.
    reports_success: bool
    # The dataset's reference returns (random and expert policies, as D4RL's), when it has them.
    ref_min_score: float | None
    ref_max_score: float | None

    def normalized(self, returns: np.ndarray) -> np.ndarray | None:
        """(return - ref_min) / (ref_max - ref_min), as `minari.get_normalized_score`; None without references."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return (np.asarray(returns, dtype=np.float64) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


@functools.lru_cache(maxsize=None)
def _dataset(root: str, dataset_id: str):
    return load_dataset(Path(root), dataset_id)


def _recover(root: str, dataset_id: str, **make_kwargs) -> gym.Env:
    dataset = _dataset(root, dataset_id)
    if dataset.env_spec is None and getattr(dataset, "_eval_env_spec", None) is None:
        raise DatasetError(
            f"Dataset '{dataset_id}' records no environment spec, so it cannot be evaluated: "
            "write it with an env (minari's DataCollector or create_dataset_from_buffers(env=...)), or drop eval"
        )
    try:
        return dataset.recover_environment(eval_env=True, **make_kwargs)
    except Exception as err:  # gymnasium raises many types (missing package, unregistered id, bad kwargs)
        raise DatasetError(
            f"Dataset '{dataset_id}': its environment cannot be built here ({type(err).__name__}: {err})"
        ) from None


@functools.lru_cache(maxsize=None)
def minari_env_info(root: str, dataset_id: str) -> MinariEnvInfo:
    """Build the dataset's evaluation env once (reset and one random step) to learn what it reports."""
    env = _recover(root, dataset_id)
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(env.action_space.sample())
        spec = env.spec
    except Exception as err:
        raise DatasetError(
            f"Dataset '{dataset_id}': its environment fails to reset or step ({type(err).__name__}: {err})"
        ) from None
    finally:
        env.close()
    metadata = _dataset(root, dataset_id).storage.metadata
    return MinariEnvInfo(
        dataset_id=dataset_id,
        env_id=spec.id if spec is not None else "?",
        max_episode_steps=spec.max_episode_steps if spec is not None else None,
        reports_success="success" in info,
        ref_min_score=_float_or_none(metadata.get("ref_min_score")),
        ref_max_score=_float_or_none(metadata.get("ref_max_score")),
    )


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


class SuccessFlag(gym.Wrapper):
    """info["success"] as a boolean array of shape (1,), also after reset (torchrl's info reader needs arrays)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "success": np.zeros(1, dtype=bool)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "success": np.array([bool(info.get("success", False))])}


def make_minari_env(
    root: str | os.PathLike,
    dataset_id: str,
    reset_seed: int,
    video_path: str | os.PathLike | None = None,
    video_size: int = 224,
):
    """A `GymWrapper` over the dataset's evaluation env, seeded with `reset_seed` (its first reset's state),
    with float32 observations (`DoubleToFloat`).

    It carries a `success` entry when the env reports one. With `video_path`, the episode is rendered and
    written there as an mp4 when the env closes.
    """
    from torchrl.data import Categorical
    from torchrl.envs import DoubleToFloat, GymWrapper, TransformedEnv
    from torchrl.envs.libs.gym import default_info_dict_reader

    root = str(Path(root).resolve())
    info = minari_env_info(root, dataset_id)
    if video_path is None:
        env = _recover(root, dataset_id)
    else:
        from llmdpd.envs.rendering import FrameRecorder

        try:
            env = _recover(root, dataset_id, render_mode="rgb_array", width=video_size, height=video_size)
        except DatasetError:  # an env without width/height arguments renders at its own size
            env = _recover(root, dataset_id, render_mode="rgb_array")
        env = FrameRecorder(env, video_path)
    if info.reports_success:
        env = SuccessFlag(env)
    wrapped = GymWrapper(env)
    if info.reports_success:
        flag = Categorical(2, shape=(1,), dtype=torch.bool)
        wrapped.set_info_dict_reader(default_info_dict_reader(["success"], spec={"success": flag}))
    wrapped.set_seed(int(reset_seed))
    # Per env, not around the batch: partial steps copy the previous (float32) observation of ended episodes
    # into the batch's output, which must then already hold float32.
    return TransformedEnv(wrapped, DoubleToFloat(in_keys=["observation"]))
