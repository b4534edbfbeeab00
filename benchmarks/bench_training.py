"""Policy-stage training steps/s: Lightning (`PolicyDiffusionModule` + `MetaWorldDataModule`) against a bare
PyTorch loop over the same networks, losses, batch sizes and updates (target ratio >= 0.85).

Sizes and batch are the `metaworld` experiment's (10 ML10 tasks x 64 transitions, 20-step prompts, 3 x 256
actor and critics, a 3-layer transformer prompt encoder). The data is a small generated dataset of the ML10
training tasks; text embeddings are fixed random vectors of SmolLM2's width (the language model never runs
during training). Rounds alternate bare / framework so that load from other processes hits both alike; each
variant reports its best round. On CPU everything runs on one thread. The same comparison with tiny networks
shows the framework's fixed cost per step (hooks, `self.log` of 16 scalars), which matters when steps are fast.
"""

from __future__ import annotations

import copy
import math
import resource
import tempfile
import time
import zlib
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from torch.func import functional_call

from benchmarks.common import ml10_config, report
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate
from llmdpd.policy.averaging import copy_parameters_, soft_update_
from llmdpd.policy.conditioning import PromptConditioning
from llmdpd.policy.critic import TwinCritic
from llmdpd.policy.diffusion import DiffusionActor
from llmdpd.policy.module import PolicyDiffusionModule
from llmdpd.prompts.encoders import TextPromptEncoder, TrajectoryPromptEncoder
from llmdpd.training.pipeline import trainer_kwargs

WARMUP, TIMED, ROUNDS = 5, 50, 4  # TIMED is a multiple of log_every_n_steps (50): logging is amortised fairly
TEXT_DIM = 576  # SmolLM2-135M's hidden size, the metaworld experiment's language model
TINY = ["data.batch_size_per_task=4", "policy.hidden_dim=32", "policy.critic_hidden_dim=32", "trajectory.width=32",
        "trajectory.layers=1", "text.hidden_dim=32", "text.out_dim=16"]  # fmt: skip


class RandomTextEmbedder:
    """Stands in for the frozen language model: fixed random vectors, seeded by the texts."""

    dim = TEXT_DIM

    def embed(self, texts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32("\n".join(texts).encode()))
        return torch.randn(len(texts), self.dim, generator=g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- bare loop
class BareSampler:
    """Task-grouped batches by plain tensor indexing over the normalised training data."""

    def __init__(self, dm: MetaWorldDataModule) -> None:
        store = dm.transitions
        self.data = {k: store.transitions[k] for k in ("obs", "action", "reward", "next_obs", "done", "position")}
        self.task_start, self.task_count = store.task_start, store.task_count
        self.episode_start, self.episode_length = store.episode_start, store.episode_length
        self.episode_offset, self.episodes_per_task = store.episode_offset, store.episodes_per_task
        self.text_table, self.text_count = dm.text_table, dm.text_count
        self.n, self.b, self.h = len(dm.train_tasks), dm.batch_size_per_task, dm.prompt_length
        self.device = self.task_start.device

    def sample(self) -> dict[str, torch.Tensor]:
        n, b, h, dev = self.n, self.b, self.h, self.device
        tasks = torch.arange(n, device=dev)
        idx = self.task_start[:, None] + (torch.rand(n, b, device=dev) * self.task_count[:, None]).long()
        batch = {k: self.data[k][idx] for k in ("obs", "action", "reward", "next_obs", "done")}
        # One demonstration per task, H steps spaced evenly from a random offset.
        episode = self.episode_offset + (torch.rand(n, device=dev) * self.episodes_per_task).long()
        stride = (self.episode_length[episode] // h).clamp(min=1)
        steps = (torch.rand(n, device=dev) * stride).long()[:, None] + stride[:, None] * torch.arange(h, device=dev)
        steps = torch.minimum(steps, self.episode_length[episode][:, None] - 1)
        flat = self.episode_start[episode][:, None] + steps
        batch.update(prompt_obs=self.data["obs"][flat], prompt_action=self.data["action"][flat])
        batch.update(prompt_reward=self.data["reward"][flat], prompt_position=steps)
        batch["text_emb"] = self.text_table[tasks, (torch.rand(n, device=dev) * self.text_count).long()]
        return batch


class BareLearner:
    """The LLMDPD policy-stage update written out in plain PyTorch: BC + critic + Q losses, one backward,
    per-group gradient clipping, AdamW with a cosine schedule, soft target update, EMA actor."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: ExperimentConfig, device: torch.device) -> None:
        p = self.p = cfg.policy
        self.text = TextPromptEncoder(TEXT_DIM, cfg.text).to(device)
        self.trajectory = TrajectoryPromptEncoder(obs_dim, action_dim, cfg.trajectory).to(device)
        self.cond = PromptConditioning(cfg.text.out_dim, cfg.trajectory.width, True, True, p.prompt_dropout).to(device)
        cond_dim = self.cond.cond_dim
        self.actor = DiffusionActor(
            obs_dim, action_dim, cond_dim, p.hidden_dim, p.layers, p.time_dim, p.diffusion_steps, p.beta_schedule
        ).to(device)
        self.critic = TwinCritic(obs_dim, action_dim, cond_dim, p.critic_hidden_dim, p.critic_layers).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        prompt = [*self.text.parameters(), *self.trajectory.parameters(), *self.cond.parameters()]
        groups = [
            {"params": [*self.actor.parameters()], "lr": p.actor_lr, "weight_decay": 0.0, "clip": p.actor_grad_clip},
            {"params": [*self.critic.parameters()], "lr": p.critic_lr, "weight_decay": 0.0, "clip": p.critic_grad_clip},
            {"params": prompt, "lr": p.prompt_lr, "weight_decay": cfg.alignment.weight_decay, "clip": p.actor_grad_clip},
        ]
        self.optimizer = torch.optim.AdamW(groups)
        total = int(cfg.trainer.max_steps)
        cosine = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.steps_done = 0
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    def losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        p, actor = self.p, self.actor
        n, b = batch["obs"].shape[:2]
        obs, action, reward, next_obs, done = (
            batch[k].reshape(n * b, -1) for k in ("obs", "action", "reward", "next_obs", "done")
        )
        z_text = self.text(batch["text_emb"])
        prompt = (batch[k] for k in ("prompt_obs", "prompt_action", "prompt_reward", "prompt_position"))
        z_traj = self.trajectory(*prompt)
        cond = self.cond(z_text, z_traj, n, drop=True).repeat_interleave(b, 0)

        # Behaviour cloning: predict the noise added at a random diffusion step.
        k = torch.randint(0, actor.steps, (n * b,), device=obs.device)
        noise = torch.randn_like(action)
        noisy = actor.sqrt_abar[k, None] * action + actor.sqrt_one_minus_abar[k, None] * noise
        bc_loss = F.mse_loss(actor.model(noisy, k, obs, cond).float(), noise)

        # Critic: TD target from the target critics at an EMA-policy action; the condition is detached.
        c = cond.detach()
        with torch.no_grad():
            next_action = self.ema_actor.sample(next_obs, c)
            q1_next, q2_next = self.critic_target(next_obs, c, next_action)
            target = reward + p.gamma * (1.0 - done) * torch.minimum(q1_next, q2_next).float()
        q1, q2 = self.critic(obs, c, action)
        critic_loss = F.mse_loss(q1.float(), target) + F.mse_loss(q2.float(), target)

        # Policy improvement through the reverse chain, against the critic's current (frozen) weights.
        new_action = actor.sample(obs, cond)
        frozen = {name: w.detach() for name, w in self.critic.named_parameters()}
        q1_new, q2_new = functional_call(self.critic, frozen, (obs, c, new_action))
        q_loss = -q1_new.float().mean() / q2_new.float().abs().mean().detach().clamp_min(1e-6)
        return critic_loss + bc_loss + p.eta * q_loss

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        with self.autocast:
            loss = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], group["clip"])
        self.optimizer.step()
        self.scheduler.step()
        soft_update_(self.critic_target, self.critic, self.p.tau)
        if self.steps_done < self.p.ema_start:
            copy_parameters_(self.ema_actor, self.actor)
        elif self.steps_done % self.p.ema_every == 0:
            soft_update_(self.ema_actor, self.actor, 1.0 - self.p.ema_decay)
        self.steps_done += 1


def bare_round(learner: BareLearner, sampler: BareSampler, device: torch.device) -> float:
    """Seconds for TIMED steps after WARMUP steps."""
    for _ in range(WARMUP):
        learner.step(sampler.sample())
    sync(device)
    start = time.perf_counter()
    for _ in range(TIMED):
        learner.step(sampler.sample())
    sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- framework
class StepTimer(L.Callback):
    """Wall time from the start of batch WARMUP to the end of batch WARMUP + TIMED - 1."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == WARMUP:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == WARMUP + TIMED:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start


def framework_round(module: PolicyDiffusionModule, dm: MetaWorldDataModule, cfg: ExperimentConfig, logs: Path) -> float:
    """Seconds for TIMED steps after WARMUP steps of `Trainer.fit` (logger on, no checkpoints or progress bar)."""
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=WARMUP + TIMED, devices=1, strategy="auto")
    timer = StepTimer(dm.device)
    trainer = L.Trainer(
        logger=TensorBoardLogger(str(logs), name="bench"), callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip
    dm.next_batch = 0
    trainer.fit(module, datamodule=dm)
    return timer.seconds


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(cfg: ExperimentConfig, rounds: int, logs: Path) -> dict[str, dict[str, float]]:
    """Best seconds per TIMED steps, peak RSS after the first round and CUDA peak, per variant."""
    dm = MetaWorldDataModule(cfg, RandomTextEmbedder())
    dm.setup("fit")
    device = dm.device
    torch.manual_seed(0)
    module = PolicyDiffusionModule(
        dm.obs_dim, dm.action_dim, dm.text_dim, OmegaConf.to_container(cfg), dm.normalizer.mean, dm.normalizer.std
    )
    learner, sampler = BareLearner(dm.obs_dim, dm.action_dim, cfg, device), BareSampler(dm)
    runs = {
        "bare": lambda: bare_round(learner, sampler, device),
        "framework": lambda: framework_round(module, dm, cfg, logs),
    }
    results = {name: {"seconds": math.inf, "rss_mib": 0.0, "cuda_mib": 0.0} for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result = results[name]
            result["seconds"] = min(result["seconds"], run())
            result["rss_mib"] = result["rss_mib"] or peak_rss_mib()
            if device.type == "cuda":
                result["cuda_mib"] = max(result["cuda_mib"], torch.cuda.max_memory_allocated(device) / 2**20)
    return results


def main() -> None:
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        cfg = ml10_config(root)
        generate(cfg, progress=False)
        full = measure(cfg, ROUNDS, Path(root) / "tb")
        # Tiny networks and batches: the step is cheap, so the framework's fixed cost per step shows.
        tiny = OmegaConf.merge(cfg, OmegaConf.from_dotlist(TINY))
        small = measure(tiny, ROUNDS, Path(root) / "tb")
    bare, ours = full["bare"], full["framework"]
    device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"{device}; metaworld sizes, batch {cfg.data.batch_size_per_task} x 10 tasks; best of {ROUNDS} rounds "
          f"of {WARMUP} warm-up + {TIMED} timed steps", flush=True)  # fmt: skip
    report("bare PyTorch loop", TIMED / bare["seconds"], "steps/s")
    report("Lightning (PolicyDiffusionModule + DataModule + logger)", TIMED / ours["seconds"], "steps/s")
    report("ratio framework / bare", bare["seconds"] / ours["seconds"], "x", "(target >= 0.85)")
    report("peak RSS after the first bare round", bare["rss_mib"], "MiB")
    report("peak RSS after the first framework round (process peak)", ours["rss_mib"], "MiB")
    if torch.cuda.is_available():
        report("CUDA max allocated, bare", bare["cuda_mib"], "MiB")
        report("CUDA max allocated, framework", ours["cuda_mib"], "MiB")
    bare_ms, ours_ms = (1e3 * small[k]["seconds"] / TIMED for k in ("bare", "framework"))
    report("tiny networks: bare PyTorch loop", bare_ms, "ms/step")
    report("tiny networks: Lightning", ours_ms, "ms/step")
    report("framework overhead per step (tiny networks)", ours_ms - bare_ms, "ms/step")


if __name__ == "__main__":
    main()
