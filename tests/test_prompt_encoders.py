"""Prompt encoders and the alignment stage: shapes, the contrastive loss by hand, and that alignment learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tensordict import TensorDict
from torch.utils.data import DataLoader

from llmdpd.config.schema import ExperimentConfig, TextPromptConfig, TrajectoryPromptConfig
from llmdpd.data.batch import random_batch
from llmdpd.prompts.alignment import PromptEncoderModule, task_contrastive_loss
from llmdpd.prompts.encoders import TextPromptEncoder, TrajectoryPromptEncoder

OBS, ACT, TEXT, H = 7, 3, 24, 10


def small_cfg() -> dict:
    cfg = OmegaConf.to_container(OmegaConf.structured(ExperimentConfig))
    cfg["trajectory"].update(width=32, layers=1, heads=2, max_position=64)
    cfg["text"].update(hidden_dim=32, out_dim=32)
    cfg["alignment"].update(lr=3e-3)
    return cfg


def test_trajectory_encoder_shapes_and_positions():
    torch.manual_seed(0)
    enc = TrajectoryPromptEncoder(OBS, ACT, TrajectoryPromptConfig(width=16, layers=2, heads=2, max_position=50))
    for lead in [(3,), (2, 4)]:
        obs, act = torch.randn(*lead, H, OBS), torch.rand(*lead, H, ACT) * 2 - 1
        rew, pos = torch.rand(*lead, H, 1), torch.arange(H).expand(*lead, H) * 3
        z = enc(obs, act, rew, pos)
        assert z.shape == (*lead, 16)
        # z is LayerNorm'd: zero mean, unit variance per vector (affine starts at identity).
        assert torch.allclose(z.mean(-1), torch.zeros(lead), atol=1e-5)
    obs, act, rew = torch.randn(2, H, OBS), torch.randn(2, H, ACT), torch.randn(2, H, 1)
    pos = torch.arange(H).expand(2, H)
    # Positions past the table are clamped to its last entry; positions change the output.
    assert torch.allclose(enc(obs, act, rew, pos + 1000), enc(obs, act, rew, torch.full_like(pos, 49)))
    assert not torch.allclose(enc(obs, act, rew, pos), enc(obs, act, rew, pos + 5))
    # The [CLS] read-out depends on every step.
    obs2 = obs.clone()
    obs2[:, -1] += 1.0
    assert not torch.allclose(enc(obs, act, rew, pos), enc(obs2, act, rew, pos))


def test_text_encoder_shapes_and_dict_config():
    enc = TextPromptEncoder(TEXT, TextPromptConfig(hidden_dim=20, out_dim=12))
    assert enc(torch.randn(5, TEXT)).shape == (5, 12)
    assert enc(torch.randn(2, 3, TEXT)).shape == (2, 3, 12)
    # A plain dict section works too, with schema defaults for the missing keys.
    assert TextPromptEncoder(TEXT, {"out_dim": 8})(torch.randn(TEXT)).shape == (8,)


def test_contrastive_loss_matches_hand_computation():
    torch.manual_seed(0)
    z_traj, z_text = torch.randn(4, 5), torch.randn(4, 5)
    task = torch.tensor([0, 1, 0, 1])
    log_t = torch.tensor(math.log(0.5))
    loss, acc = task_contrastive_loss(z_traj, z_text, task, log_t)
    sim = F.normalize(z_traj, dim=-1) @ F.normalize(z_text, dim=-1).T / 0.5
    logp_rows, logp_cols = sim.log_softmax(1), sim.log_softmax(0)
    s2t = -sum(0.5 * (logp_rows[i, j] + logp_rows[i, j + 2]) for i, j in [(0, 0), (1, 1), (2, 0), (3, 1)]) / 4
    t2s = -sum(0.5 * (logp_cols[j, i] + logp_cols[j + 2, i]) for i, j in [(0, 0), (1, 1), (2, 0), (3, 1)]) / 4
    assert torch.allclose(loss, 0.5 * (s2t + t2s), atol=1e-5)
    expected_acc = (task[sim.argmax(1)] == task).float().mean()
    assert acc == expected_acc
    # One segment per task: the standard CLIP loss (diagonal labels).
    loss1, _ = task_contrastive_loss(z_traj[:2], z_text[:2], task[:2], log_t)
    sim1 = sim[:2, :2]
    clip = 0.5 * (F.cross_entropy(sim1, torch.arange(2)) + F.cross_entropy(sim1.T, torch.arange(2)))
    assert torch.allclose(loss1, clip, atol=1e-5)


def test_alignment_module_step_shapes():
    module = PromptEncoderModule(OBS, ACT, TEXT, small_cfg())
    flat = random_batch(n_tasks=3 * 2, prompt_length=H, obs_dim=OBS, action_dim=ACT, text_dim=TEXT)
    batch = flat.select("text_emb", "prompt_obs", "prompt_action", "prompt_reward", "prompt_position")
    batch["task"] = torch.arange(3).repeat_interleave(2)
    batch = batch.reshape(3, 2)
    module.log_dict = lambda *a, **k: None  # not attached to a trainer
    loss = module.training_step(batch, 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert module.log_temperature.grad is not None
    assert module.trajectory_encoder.token.weight.grad.abs().sum() > 0
    scores = module.task_scores(batch[:, 0], batch["text_emb"][:, 0])
    assert scores.shape == (3, 3) and scores.abs().max() <= 1 + 1e-5


def synthetic_alignment(n_batches: int, tasks: int = 4, k: int = 8, seed: int = 0):
    """Tasks whose prompt observations come from task-specific Gaussians; fixed random texts (3 paraphrases)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, OBS, generator=g) * 1.5
    texts = torch.randn(tasks, 3, TEXT, generator=g)

    def prompts(n_per_task: int) -> TensorDict:
        task = torch.arange(tasks).repeat_interleave(n_per_task)
        m = len(task)
        return TensorDict(
            {
                "task": task,
                "prompt_obs": centres[task, None] + torch.randn(m, H, OBS, generator=g),
                "prompt_action": torch.rand(m, H, ACT, generator=g) * 2 - 1,
                "prompt_reward": torch.rand(m, H, 1, generator=g),
                "prompt_position": torch.arange(H).expand(m, H) * 20 + torch.randint(0, 20, (m, 1), generator=g),
                "text_emb": texts[task, torch.randint(0, 3, (m,), generator=g)],
            },
            batch_size=[m],
        )

    batches = [prompts(k).reshape(tasks, k) for _ in range(n_batches)]
    return batches, prompts(25), texts[:, 0]


def test_alignment_ranks_own_task_first(cpu_trainer):
    torch.manual_seed(0)
    batches, held_out, texts = synthetic_alignment(n_batches=200)
    module = PromptEncoderModule(OBS, ACT, TEXT, small_cfg())
    t = cpu_trainer(len(batches))
    t.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    assert t.global_step == len(batches)
    scores = module.task_scores(held_out, texts)
    accuracy = (scores.argmax(1) == held_out["task"]).float().mean()
    assert accuracy > 0.9, f"alignment accuracy {accuracy:.2f}"
    metrics = t.callback_metrics
    assert {"align/loss", "align/accuracy", "align/temperature"} <= set(metrics)


def test_alignment_bf16_step_runs(cpu_trainer):
    batches, _, _ = synthetic_alignment(n_batches=2)
    module = PromptEncoderModule(OBS, ACT, TEXT, small_cfg())
    t = cpu_trainer(2, precision="bf16-mixed")
    t.fit(module, DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    assert t.global_step == 2
    assert torch.isfinite(t.callback_metrics["align/loss"])
