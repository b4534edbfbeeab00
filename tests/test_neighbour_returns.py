"""Episode returns ranked among the episodes nearest by path (`policy.awr_baseline: neighbours`)."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from llmdpd.config.load import ConfigError, load_config
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.episode_store import EpisodeStore, episode_returns
from llmdpd.data.neighbour_returns import advantage_returns, episode_paths, neighbour_relative_returns


def _episode(offset: float, total: float, steps: int) -> dict[str, np.ndarray]:
    """An episode whose states sit at `offset` on every coordinate (its route) and whose rewards sum to `total`."""
    return {
        "observations": np.full((steps + 1, 2), offset, dtype=np.float32),
        "actions": np.zeros((steps, 1), dtype=np.float32),
        "rewards": np.full(steps, total / steps, dtype=np.float32),
        "terminations": np.zeros(steps, dtype=bool),
    }


def _per_episode(store: EpisodeStore, values: torch.Tensor) -> list[float]:
    return [round(float(values[int(start)]), 4) for start in store.episode_start]


def test_each_episode_is_ranked_among_its_own_route():
    # Route A (states at 0) earns 10 and 12; route B (states at 5) 5 and 7, one episode longer than the others.
    store = EpisodeStore([[_episode(0.0, 10.0, 4), _episode(0.1, 12.0, 4), _episode(5.0, 5.0, 6), _episode(5.1, 7.0, 4)]])
    relative = neighbour_relative_returns(store, neighbours=1)
    assert relative.shape == (18, 1)
    # Each episode's nearest path is its route-mate's: every route is centred on its own mean, so both keep their
    # share; against the task (`episode_returns`) route A's episodes would all outrank route B's.
    assert _per_episode(store, relative) == [-2.0, 2.0, -2.0, 2.0]
    assert _per_episode(store, episode_returns(store)) == [10.0, 12.0, 5.0, 7.0]
    # With every other episode as a neighbour it is the return minus the mean of the others.
    assert _per_episode(store, neighbour_relative_returns(store, neighbours=50)) == pytest.approx(
        [10 - 24 / 3, 12 - 22 / 3, 5 - 29 / 3, 7 - 27 / 3], abs=1e-3)


def test_neighbours_are_taken_within_the_task_only():
    # Two tasks with the same paths: an episode of task 1 must not be compared with task 0's (higher) returns.
    store = EpisodeStore([[_episode(0.0, 100.0, 3), _episode(0.0, 100.0, 3)], [_episode(0.0, 1.0, 3), _episode(0.0, 3.0, 3)],
                          [_episode(0.0, 9.0, 3)]])
    # A task with one episode has nobody to be ranked against: 0.
    assert _per_episode(store, neighbour_relative_returns(store, neighbours=1)) == [0.0, 0.0, -2.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="awr_neighbours"):
        neighbour_relative_returns(store, neighbours=0)


def test_paths_are_read_at_fractions_of_each_episode():
    ramp = _episode(0.0, 1.0, 10)
    ramp["observations"] = np.arange(11, dtype=np.float32)[:, None].repeat(2, 1)
    paths = episode_paths(EpisodeStore([[ramp]]), points=3)
    # Observations 0..9 are the stored states (the last observation is only a next state): first, middle, last.
    assert paths.tolist() == [[0.0, 0.0, 4.0, 4.0, 9.0, 9.0]]
    assert torch.equal(advantage_returns(EpisodeStore([[ramp]]), "task", 5), episode_returns(EpisodeStore([[ramp]])))


def test_datamodule_batches_carry_the_neighbour_relative_return(smoke_cfg):
    cfg = OmegaConf.merge(smoke_cfg, {"policy": {"awr_advantage": "episode", "awr_baseline": "neighbours",
                                                 "awr_neighbours": 100000}})
    dm = MetaWorldDataModule(cfg)
    dm.setup("fit")
    # With every other episode of the task as a neighbour: R - mean of the others = n / (n - 1) (R - mean R).
    expected = []
    for task in dm.train_tasks:
        episodes = dm._episodes(task, "mixed")
        totals = np.array([float(e["rewards"].sum()) for e in episodes]) * float(dm.reward_scale)
        relative = len(totals) / (len(totals) - 1) * (totals - totals.mean())
        expected.append(np.repeat(relative, [len(e["actions"]) for e in episodes]))
    expected = torch.tensor(np.concatenate(expected), dtype=torch.float32)[:, None]
    torch.testing.assert_close(dm.transitions.transitions["episode_return"].cpu(), expected, rtol=1e-4, atol=1e-3)


def test_config_refuses_neighbours_without_the_episode_advantage():
    with pytest.raises(ConfigError, match="awr_baseline: neighbours.*needs policy.awr_advantage 'episode'"):
        load_config("smoke", ["policy.awr_baseline=neighbours", "policy.awr_advantage=raw"])
    with pytest.raises(ConfigError, match="Invalid value for 'policy.awr_neighbours': 0"):
        load_config("smoke", ["policy.awr_neighbours=0"])
