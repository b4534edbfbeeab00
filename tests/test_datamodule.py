"""MetaWorldDataModule: batch layout, task grouping, prompt sampling, normalisation, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmdpd.config.load import load_config
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.minari_store import DatasetError


@pytest.fixture
def dm(smoke_cfg):
    module = MetaWorldDataModule(smoke_cfg)
    module.setup("fit")
    return module


def test_batch_shapes(dm, smoke_cfg):
    batch = dm.sample_batch(0)
    n, b, h = len(dm.train_tasks), smoke_cfg.data.batch_size_per_task, smoke_cfg.data.prompt_length
    assert batch.batch_size == torch.Size([n])
    assert batch["obs"].shape == (n, b, 39) and batch["next_obs"].shape == (n, b, 39)
    assert batch["action"].shape == (n, b, 4) and batch["reward"].shape == (n, b, 1)
    assert batch["done"].shape == (n, b, 1)
    assert batch["prompt_obs"].shape == (n, h, 39) and batch["prompt_action"].shape == (n, h, 4)
    assert batch["prompt_reward"].shape == (n, h, 1) and batch["prompt_position"].dtype == torch.long
    assert batch["action"].abs().max() <= 1.0


def test_batches_keep_the_contract_in_keys(dm, smoke_cfg):
    import sys
    from pathlib import Path

    from llmdpd.data.batch import random_batch
    from llmdpd.data.keys import check_alignment_batch, check_batch

    sizes = {"B": smoke_cfg.data.batch_size_per_task, "H": smoke_cfg.data.prompt_length, "S": 39, "A": 4}
    check_batch(dm.sample_batch(0), sizes)
    check_alignment_batch(dm.sample_alignment_batch(0, 3), {"H": smoke_cfg.data.prompt_length, "S": 39, "A": 4})
    check_batch(random_batch(2, 5, 7, text_dim=16), {"B": 5, "H": 7, "S": 39, "A": 4, "E": 16})
    # The training benchmark's bare loop draws batches of the same contract.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_training import BareSampler

    dm.text_table, dm.text_count = torch.zeros(len(dm.train_tasks), 1, 16), torch.ones(len(dm.train_tasks), dtype=torch.long)
    check_batch(BareSampler(dm).sample(), {**sizes, "E": 16})
    bad = dm.sample_batch(0)
    bad["obs"] = bad["obs"][:, :, :5]
    with pytest.raises(ValueError, match=r"batch\['obs'\] has shape \[2, 32, 5\], expected \[2, 32, 39\]"):
        check_batch(bad, sizes)


def test_action_chunks_stay_within_their_episode():
    from llmdpd.data.episode_store import EpisodeStore, action_chunks

    def episode(actions):
        steps = len(actions)
        return {"observations": np.zeros((steps + 1, 2), np.float32), "actions": np.asarray(actions, np.float32),
                "rewards": np.zeros(steps, np.float32), "terminations": np.zeros(steps, bool)}

    store = EpisodeStore([[episode([[1, 10], [2, 20], [3, 30]])], [episode([[4, 40], [5, 50]])]])
    chunks = action_chunks(store, 3)
    expected = [[1, 10, 2, 20, 3, 30], [2, 20, 3, 30, 3, 30], [3, 30, 3, 30, 3, 30],
                [4, 40, 5, 50, 5, 50], [5, 50, 5, 50, 5, 50]]
    assert chunks.tolist() == expected
    assert torch.equal(action_chunks(store, 1), store.transitions["action"])


def test_batches_hold_action_chunks(smoke_cfg):
    smoke_cfg.policy.action_horizon = 3
    chunked = MetaWorldDataModule(smoke_cfg)
    chunked.setup("fit")
    batch = chunked.sample_batch(0)
    n, b = len(chunked.train_tasks), smoke_cfg.data.batch_size_per_task
    assert chunked.action_dim == 4 and batch["action"].shape == (n, b, 12) and batch["prompt_action"].shape[-1] == 4
    # Each chunk starts with its transition's own action, and the next step's action follows it inside an episode.
    store = chunked.transitions
    first = store.transitions["action"][:, :4]
    start = int(store.episode_start[0])
    torch.testing.assert_close(store.transitions["action"][start, 4:8], first[start + 1])
    end = start + int(store.episode_length[0]) - 1
    torch.testing.assert_close(store.transitions["action"][end, 4:8], first[end])


def test_transitions_are_grouped_by_task(dm):
    store = dm.transitions.transitions
    batch = dm.sample_batch(3)
    for row, task in enumerate(batch["task"].tolist()):
        lo = int(dm.transitions.task_start[task])
        own = store["obs"][lo : lo + int(dm.transitions.task_count[task])]
        # Every sampled observation is one of that task's own observations, with its own next observation.
        match = (batch["obs"][row][:, None, :] == own[None]).all(-1)
        assert match.any(1).all()
        idx = match.float().argmax(1) + lo
        torch.testing.assert_close(batch["next_obs"][row], store["next_obs"][idx])
        # ... and the return of the episode it came from: its raw rewards' sum, scaled like the rewards.
        episodes = dm._episodes(dm.train_tasks[task], "mixed")
        ends = np.cumsum([len(e["actions"]) for e in episodes])
        episode_of = np.searchsorted(ends, (idx - lo).numpy(), side="right")
        totals = torch.tensor([float(e["rewards"].sum()) for e in episodes]) * dm.reward_scale
        torch.testing.assert_close(batch["episode_return"][row, :, 0], totals[episode_of].float(), rtol=1e-5, atol=1e-3)
        # ... and its discounted return from that step to the episode's end.
        gamma, step = float(dm.cfg.policy.gamma), (idx - lo).numpy() - np.concatenate([[0], ends])[episode_of]
        to_go = [sum(gamma**k * float(r) for k, r in enumerate(episodes[e]["rewards"][t:])) for e, t in zip(episode_of, step)]
        expected = torch.tensor(to_go) * dm.reward_scale
        torch.testing.assert_close(batch["return_to_go"][row, :, 0], expected.float(), rtol=1e-4, atol=1e-3)


def test_prompts_are_evenly_spaced_steps_of_one_episode(dm, smoke_cfg):
    h, length = smoke_cfg.data.prompt_length, smoke_cfg.data.max_episode_steps
    stride = length // h
    for i in range(5):
        pos = dm.sample_batch(i)["prompt_position"]
        assert torch.all(pos[:, 1:] - pos[:, :-1] == stride)
        assert torch.all((pos[:, 0] >= 0) & (pos[:, 0] < stride))
    # The prompt of a task is that task's prompt episode at those positions (normalised like transitions).
    batch = dm.sample_batch(0)
    prompts = dm._train_prompts
    t = int(batch["task"][0])
    first = prompts.episode_offset[t]
    candidates = [prompts.transitions["obs"][prompts.episode_start[first + e] + batch["prompt_position"][0]]
                  for e in range(int(prompts.episodes_per_task[t]))]
    assert any(torch.equal(c, batch["prompt_obs"][0]) for c in candidates)


def test_normalisation_statistics(dm):
    obs = dm.transitions.transitions["obs"]
    varying = dm.normalizer.std != 1.0
    assert obs.mean(0).abs().max() < 1e-4
    torch.testing.assert_close(obs.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-3, rtol=0)


def test_evaluation_normalises_prompts_with_the_checkpoints_normaliser(dm, smoke_cfg):
    # A checkpoint's statistics, not the command's config, normalise what evaluation feeds the policy.
    from llmdpd.data.normalizer import Normalizer

    stats = Normalizer(dm.normalizer.mean + 1.0, dm.normalizer.std * 2.0, 0.5)
    evaluation = MetaWorldDataModule(smoke_cfg)
    evaluation.setup_for_evaluation(stats)
    trained, evaluated = dm.prompt("drawer-close-v3", 1, 3), evaluation.prompt("drawer-close-v3", 1, 3)
    raw_obs = trained["prompt_obs"] * dm.normalizer.std + dm.normalizer.mean
    torch.testing.assert_close(evaluated["prompt_obs"], (raw_obs - stats.mean) / stats.std)
    torch.testing.assert_close(evaluated["prompt_reward"], trained["prompt_reward"] / 0.1 * 0.5)
    assert torch.equal(evaluated["prompt_action"], trained["prompt_action"])


def test_batches_are_a_function_of_seed_rank_and_index(dm, smoke_cfg):
    a, b = dm.sample_batch(7), dm.sample_batch(7)
    assert torch.equal(a["obs"], b["obs"])
    assert not torch.equal(dm.sample_batch(8)["obs"], a["obs"])
    dm.rank = 1
    assert not torch.equal(dm.sample_batch(7)["obs"], a["obs"])


def test_task_subsets_and_alignment_batch(smoke_cfg):
    smoke_cfg.data.tasks_per_batch = 1
    dm = MetaWorldDataModule(smoke_cfg)
    dm.setup()
    tasks = {int(dm.sample_batch(i)["task"][0]) for i in range(20)}
    assert tasks == {0, 1}
    align = dm.sample_alignment_batch(0, prompts_per_task=4)
    assert align.batch_size == torch.Size([2, 4])
    assert torch.equal(align["task"], torch.tensor([[0] * 4, [1] * 4]))
    assert align["prompt_obs"].shape == (2, 4, smoke_cfg.data.prompt_length, 39)


def test_unseen_task_prompt(dm, smoke_cfg):
    prompt = dm.prompt("drawer-close-v3", episode=1)
    assert prompt["prompt_obs"].shape == (smoke_cfg.data.prompt_length, 39)
    assert prompt["prompt_position"][0] == 0
    with pytest.raises(IndexError):
        dm.prompt("drawer-close-v3", episode=smoke_cfg.data.prompt_episodes)


def test_resume_state_continues_the_batch_sequence(dm):
    loader = iter(dm.train_dataloader())
    expected = [next(loader) for _ in range(4)]
    resumed = MetaWorldDataModule(dm.cfg)
    resumed.load_state_dict({"next_batch": 2})
    resumed.setup()
    again = next(iter(resumed.train_dataloader()))
    assert torch.equal(again["obs"], expected[2]["obs"])


def test_missing_data_names_dataset_and_command(tmp_path):
    cfg = load_config("smoke", [f"paths.data_dir={tmp_path}"])
    with pytest.raises(DatasetError, match=r"metaworld/reach-v3/mixed-v1.*llmdpd data smoke"):
        MetaWorldDataModule(cfg).setup()
