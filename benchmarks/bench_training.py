"""Policy-stage training: Lightning (`PolicyDiffusionModule` + `MetaWorldDataModule`) against a bare PyTorch
loop over the same networks, loss module, batch sizes and updates, eager and compiled; the framework's fixed
cost per step; achieved FLOP/s against the CPU's fp32 matmul peak; peak memory of training and evaluation.

The bare loop shares the objective with the framework: it builds the same networks, a `DiffusionQLLoss` and a
torchrl `SoftUpdate` for the target critics, and writes out only what `PolicyDiffusionModule` adds around
them: prompt encoding once per task, the flat loss input (with `discount` = gamma (1 - done) when the batch
has none), one backward of `loss_total`, per-group clipping, AdamW with the module's schedules (the critic
group on `policy.critic_lr_schedule`), the target update and the EMA actor. So the ratio measures the
framework's cost (Lightning, DataModule, logging), not a difference between two copies of the losses.

Sizes and batch are the `metaworld` experiment's (10 ML10 tasks x 64 transitions, 20-step prompts, 3 x 256
actor and critics, a 3-layer transformer prompt encoder). `policy.critic_warmup_steps=0` and
`policy.eta_ramp_steps=0`, so eta > 0 from the first step and every timed step computes the Q term. The data
is a small generated dataset of the ML10 training tasks; text embeddings are fixed random vectors of
SmolLM2's width (the language model never runs during training). Rounds alternate the variants (bare,
Lightning eager, Lightning with `policy.compile`) pair by pair, so that load from other processes hits all
alike; each variant reports its median round. The compiled variant runs for the default pair only (its first
round includes the compilation, outside the timed steps); on CPU everything runs on one thread. FLOPs of one
step (forward and backward, counted by `torch.utils.flop_counter.FlopCounterMode`) times steps/s give the
achieved FLOP/s, against the best of five 2048^3 fp32 matmuls in the same run. The same comparison with tiny
networks (td, chain) shows the framework's fixed cost per step, which matters when steps are fast. Peak
memory (RSS) is measured in child processes, so the benchmark's own allocations do not count: TRAIN_STEPS
framework steps at `metaworld` sizes, and a lock-step evaluation of the `metaworld` plan's environments with
the policy in the loop.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import ml10_config, report
from llmdpd.config.load import load_config
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data import keys as K
from llmdpd.data.keys import PROMPT_KEYS, PROMPT_SOURCE, PROMPT_STEP_KEYS, TRANSITION_KEYS
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate
from llmdpd.policy.averaging import copy_parameters_, soft_update_
from llmdpd.policy.conditioning import PromptConditioning
from llmdpd.policy.critic import TwinCritic, ValueNetwork
from llmdpd.policy.diffusion import DiffusionActor
from llmdpd.policy.loss import DiffusionQLLoss, loss_total
from llmdpd.policy.module import PolicyDiffusionModule
from llmdpd.prompts.encoders import TextPromptEncoder, TrajectoryPromptEncoder
from llmdpd.training.pipeline import trainer_kwargs

WARMUP, TIMED = 5, 50  # TIMED is a multiple of log_every_n_steps (50): logging is amortised fairly
ROUNDS, TINY_ROUNDS = 3, 3  # rounds per (critic, q_action) pair at metaworld sizes; rounds of the tiny comparison
PAIRS = [(critic, q_action) for critic in ("td", "expectile") for q_action in ("chain", "one_step")]
DEFAULT_PAIR = ("expectile", "one_step")  # the metaworld experiment's; the compiled variant runs for it
TRAIN_STEPS = 20  # framework steps of the training-memory child process
EVAL_STEPS = 20  # lock-step environment steps of the evaluation-memory child process
TEXT_DIM = 576  # SmolLM2-135M's hidden size, the metaworld experiment's language model
# The Q term from the first step, at its full weight: every timed step pays for it.
TIMING = ["policy.critic_warmup_steps=0", "policy.eta_ramp_steps=0"]
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
    """Task-grouped batches by plain tensor indexing over the normalised training data (with the n-step
    `reward` / `discount` / `next_obs` the DataModule stores)."""

    def __init__(self, dm: MetaWorldDataModule) -> None:
        store = dm.transitions
        self.keys = [k for k in TRANSITION_KEYS if k in store.transitions.keys()]
        self.data = {k: store.transitions[k] for k in self.keys}
        self.task_start, self.task_count = store.task_start, store.task_count
        # The prompts come from the tasks' prompt episodes, as the DataModule draws them.
        prompts = dm._train_prompts
        self.prompt_data = {k: prompts.transitions[PROMPT_SOURCE[k]] for k in PROMPT_STEP_KEYS}
        self.episode_start, self.episode_length = prompts.episode_start, prompts.episode_length
        self.episode_offset, self.episodes_per_task = prompts.episode_offset, prompts.episodes_per_task
        self.text_table, self.text_count = dm.text_table, dm.text_count
        self.n, self.b, self.h = len(dm.train_tasks), dm.batch_size_per_task, dm.prompt_length
        self.device = self.task_start.device

    def sample(self) -> dict[str, torch.Tensor]:
        n, b, h, dev = self.n, self.b, self.h, self.device
        tasks = torch.arange(n, device=dev)
        idx = self.task_start[:, None] + (torch.rand(n, b, device=dev) * self.task_count[:, None]).long()
        batch = {K.TASK: tasks, **{k: self.data[k][idx] for k in self.keys}}
        # One demonstration per task, H steps spaced evenly from a random offset.
        episode = self.episode_offset + (torch.rand(n, device=dev) * self.episodes_per_task).long()
        stride = (self.episode_length[episode] // h).clamp(min=1)
        steps = (torch.rand(n, device=dev) * stride).long()[:, None] + stride[:, None] * torch.arange(h, device=dev)
        steps = torch.minimum(steps, self.episode_length[episode][:, None] - 1)
        flat = self.episode_start[episode][:, None] + steps
        batch.update({k: values[flat] for k, values in self.prompt_data.items()})
        batch[K.PROMPT_POSITION] = steps
        batch[K.TEXT_EMB] = self.text_table[tasks, (torch.rand(n, device=dev) * self.text_count).long()]
        return batch


def lr_factor(schedule: str, total: int) -> Callable[[int], float]:
    if schedule == "constant" or total <= 0:
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class BareLearner:
    """The LLMDPD policy-stage update in plain PyTorch around the shared `DiffusionQLLoss`: prompt encoding
    once per task, the flat loss input, one backward of `loss_total`, per-group gradient clipping, AdamW with
    the module's schedules, torchrl's `SoftUpdate` of the target critics, EMA actor."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: ExperimentConfig, device: torch.device) -> None:
        p = self.p = cfg.policy
        self.text = TextPromptEncoder(TEXT_DIM, cfg.text).to(device)
        self.trajectory = TrajectoryPromptEncoder(obs_dim, action_dim, cfg.trajectory).to(device)
        self.cond = PromptConditioning(cfg.text.out_dim, cfg.trajectory.width, True, True, p.prompt_dropout).to(device)
        if cfg.alignment.enabled and cfg.alignment.freeze_in_policy_stage:
            self.text.requires_grad_(False)
            self.trajectory.requires_grad_(False)
        cond_dim = self.cond.cond_dim
        self.actor = DiffusionActor(
            obs_dim, action_dim, cond_dim, p.hidden_dim, p.layers, p.time_dim, p.diffusion_steps, p.beta_schedule
        ).to(device)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        critic = TwinCritic(obs_dim, action_dim, cond_dim, p.critic_hidden_dim, p.critic_layers)
        value = ValueNetwork(obs_dim, cond_dim, p.critic_hidden_dim, p.critic_layers) if p.critic == "expectile" else None
        self.loss = DiffusionQLLoss(
            self.actor, critic, self.ema_actor, value, critic_kind=p.critic, expectile=p.expectile,
            q_action=p.q_action, awr_beta=p.awr_beta,
        ).to(device)  # fmt: skip
        self.target_updater = SoftUpdate(self.loss, tau=p.tau)
        prompt = [w for m in (self.text, self.trajectory, self.cond) for w in m.parameters() if w.requires_grad]
        clip = lambda value: value if value > 0 else math.inf  # noqa: E731
        groups = [
            {"params": [*self.actor.parameters()], "lr": p.actor_lr, "weight_decay": 0.0, "clip": clip(p.actor_grad_clip)},
            {"params": [*self.loss.parameters()], "lr": p.critic_lr, "weight_decay": 0.0, "clip": clip(p.critic_grad_clip)},
            {"params": prompt, "lr": p.prompt_lr, "weight_decay": cfg.alignment.weight_decay, "clip": clip(p.actor_grad_clip)},
        ]  # fmt: skip
        self.optimizer = torch.optim.AdamW(groups)
        total = int(cfg.trainer.max_steps or -1)
        factors = [lr_factor(s, total) for s in (p.lr_schedule, p.critic_lr_schedule, p.lr_schedule)]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factors)
        self.steps_done = 0
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    def eta(self, step: int) -> float:
        p = self.p
        if p.eta <= 0 or step < p.critic_warmup_steps:
            return 0.0
        ramp = int(p.eta_ramp_steps)
        return float(p.eta) * (min(1.0, (step - p.critic_warmup_steps + 1) / ramp) if ramp > 0 else 1.0)

    def loss_input(self, batch: dict[str, torch.Tensor]) -> TensorDict:
        n, b = batch[K.OBS].shape[:2]
        z_text = self.text(batch[K.TEXT_EMB])
        prompt = (batch[k] for k in PROMPT_KEYS)
        z_traj = self.trajectory(*prompt)
        cond = self.cond(z_text, z_traj, n, drop=True).repeat_interleave(b, 0)
        data = {k: batch[k].reshape(n * b, *batch[k].shape[2:]) for k in TRANSITION_KEYS if k in batch}
        if K.DISCOUNT not in data:
            data[K.DISCOUNT] = self.p.gamma * (1.0 - data[K.DONE])
        task = torch.arange(n, device=cond.device).repeat_interleave(b)
        return TensorDict({**data, "cond": cond, "task": task}, batch_size=[n * b])

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.loss.eta = self.eta(self.steps_done)
        with self.autocast:
            loss = loss_total(self.loss(self.loss_input(batch)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], group["clip"])
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1  # Lightning's global_step advances with the optimizer step
        self.target_updater.step()
        if self.steps_done < self.p.ema_start:
            copy_parameters_(self.ema_actor, self.actor)
        elif self.steps_done % self.p.ema_every == 0:
            soft_update_(self.ema_actor, self.actor, 1.0 - self.p.ema_decay)


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


def make_module(dm: MetaWorldDataModule, cfg: ExperimentConfig) -> PolicyDiffusionModule:
    torch.manual_seed(0)
    return PolicyDiffusionModule(
        dm.obs_dim, dm.action_dim, dm.text_dim, OmegaConf.to_container(cfg), dm.normalizer.mean, dm.normalizer.std
    )


def with_pair(cfg: ExperimentConfig, critic: str, q_action: str, *more: str) -> ExperimentConfig:
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"policy.critic={critic}", f"policy.q_action={q_action}", *more]))


def measure(
    cfg: ExperimentConfig, pairs: list[tuple[str, str]], rounds: int, logs: Path, compiled: tuple = ()
) -> tuple[dict[tuple[str, str], dict[str, float]], MetaWorldDataModule]:
    """Per (critic, q_action) pair and variant ("bare", "eager", and "compiled" for the pairs in `compiled`): the
    median seconds per TIMED steps over `rounds` rounds. Rounds run pair by pair, variant after variant."""
    dm = MetaWorldDataModule(cfg, RandomTextEmbedder())
    dm.setup("fit")
    device = dm.device
    runs: dict[tuple[tuple[str, str], str], Callable[[], float]] = {}
    for critic, q_action in pairs:
        pair_cfg = with_pair(cfg, critic, q_action)
        learner, sampler = BareLearner(dm.obs_dim, dm.action_dim, pair_cfg, device), BareSampler(dm)
        runs[(critic, q_action), "bare"] = lambda learner=learner, sampler=sampler: bare_round(learner, sampler, device)
        variants = [("eager", pair_cfg)]
        if (critic, q_action) in compiled:
            variants.append(("compiled", with_pair(cfg, critic, q_action, "policy.compile=true")))
        for variant, variant_cfg in variants:
            module = make_module(dm, variant_cfg)
            runs[(critic, q_action), variant] = lambda module=module, c=variant_cfg: framework_round(module, dm, c, logs)
    seconds: dict[tuple[tuple[str, str], str], list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            seconds[key].append(run())
    results: dict[tuple[str, str], dict[str, float]] = {pair: {} for pair in pairs}
    for (pair, variant), values in seconds.items():
        results[pair][variant] = statistics.median(values)
    return results, dm


# The best validated configuration's objective (`experiments/llmdpd_x0_rwr_t15.yaml`): no Q term, BC weighted by
# episode returns; with the expectile critic it still trains a critic that nothing reads.
OUTCOME_WEIGHTED = ["policy.prediction=sample", "policy.eta=0", "policy.awr_beta=1", "policy.awr_advantage=episode"]
# Variants of the outcome-weighted objective: its critic, and (without one) the per-state read of the demonstration.
CRITIC_FREE = {
    "expectile": ["policy.critic=expectile"],
    "none": ["policy.critic=none"],
    "none, per-state read": ["policy.critic=none", "trajectory.read=per_state"],
}


def critic_free_rounds(dm: MetaWorldDataModule, cfg: ExperimentConfig, rounds: int, logs: Path) -> dict[str, float]:
    """Median seconds per TIMED Lightning steps of the outcome-weighted objective in each variant of
    `CRITIC_FREE`, rounds alternating between them."""
    variants = {name: OmegaConf.merge(cfg, OmegaConf.from_dotlist([*OUTCOME_WEIGHTED, *more]))
                for name, more in CRITIC_FREE.items()}
    modules = {name: make_module(dm, variant) for name, variant in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            seconds[name].append(framework_round(modules[name], dm, variant, logs))
    return {name: statistics.median(values) for name, values in seconds.items()}


class _TotalOnly:
    """Stands in for FlopCounterMode's per-module tracker, which cannot hold torchrl's parameter containers
    (a TensorDictParams compares elementwise, so it cannot be looked up); only the total is wanted here."""

    parents = {"Global"}

    def __enter__(self) -> "_TotalOnly":
        return self

    def __exit__(self, *args: object) -> None:
        return None


def step_flops(dm: MetaWorldDataModule, cfg: ExperimentConfig) -> int:
    """FLOPs of one policy step's forward and backward (matmuls and the like, as FlopCounterMode counts them)."""
    module = make_module(dm, cfg)
    module.loss.eta = float(cfg.policy.eta)
    batch = dm.sample_batch(0)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalOnly()
    with counter:
        loss_total(module.compute_losses(batch)).backward()
    return counter.get_total_flops()


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of the best of `repeats` size^3 matrix products (the CPU's practical peak on these threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ---------------------------------------------------------------------------------------- peak memory
def _child_peak(kind: str, root: str) -> dict[str, float]:
    """Peak RSS (MiB) of a child process running `kind` ("train" or "eval"), and of its own children."""
    command = [sys.executable, "-m", "benchmarks.bench_training", f"--peak-{kind}", root]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(f"{kind} memory child failed: {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def _report_own_peak() -> None:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a child started by a large parent
    # would report the parent's peak.
    status = Path("/proc/self/status").read_text().split("\n")
    hwm = next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), peak_rss_mib())
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"self_mib": hwm, "children_mib": children}), flush=True)


def peak_training(root: str) -> None:
    """Child process: TRAIN_STEPS steps of `Trainer.fit` at metaworld sizes (eager, data on the default device)."""
    torch.set_num_threads(1)
    cfg = ml10_config(root, *TIMING)
    dm = MetaWorldDataModule(cfg, RandomTextEmbedder())
    dm.setup("fit")
    module = make_module(dm, cfg)
    kwargs = trainer_kwargs(cfg)
    kwargs.update(max_steps=TRAIN_STEPS, devices=1, strategy="auto")
    trainer = L.Trainer(logger=TensorBoardLogger(str(Path(root) / "tb"), name="peak"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    _report_own_peak()


def peak_evaluation(root: str) -> None:
    """Child process: the `metaworld` evaluation plan (seen-test goals of the ML10 training tasks and the unseen
    tasks, `eval.episodes_per_task` each), all environments live, EVAL_STEPS lock steps with the policy choosing."""
    from llmdpd.data.batch import random_batch
    from llmdpd.data.tasks import split_tasks
    from llmdpd.evaluation.plan import plan_episodes
    from llmdpd.evaluation.rollout import evaluate_episodes

    torch.set_num_threads(1)
    cfg = ml10_config(root)
    seen, unseen = split_tasks(load_config("metaworld").data)
    episodes = plan_episodes(seen, unseen, cfg.eval.episodes_per_task, cfg.data.train_goals, seed=0,
                             validation_goals=cfg.data.validation_goals)  # fmt: skip
    module = PolicyDiffusionModule(39, 4, TEXT_DIM, OmegaConf.to_container(cfg, resolve=True)).eval()
    prompts = random_batch(len(episodes), 1, cfg.data.prompt_length, text_dim=TEXT_DIM)
    cond = module.prompt_condition(prompts[K.TEXT_EMB], prompts)

    def policy(obs, live):
        with torch.no_grad():
            return module.act(torch.as_tensor(obs), cond[live]).numpy()

    evaluate_episodes(episodes, policy, EVAL_STEPS, workers=1)
    print(f"episodes {len(episodes)}", flush=True)
    _report_own_peak()


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        cfg = ml10_config(root, *TIMING)
        generate(cfg, progress=False)
        peak = matmul_peak_flops()
        full, dm = measure(cfg, PAIRS, ROUNDS, Path(root) / "tb", compiled=(DEFAULT_PAIR,))
        flops = {pair: step_flops(dm, with_pair(cfg, *pair)) for pair in PAIRS}
        critic_free = critic_free_rounds(dm, cfg, ROUNDS, Path(root) / "tb")
        peak_after = matmul_peak_flops()
        # Tiny networks and batches: the step is cheap, so the framework's fixed cost per step shows.
        tiny = OmegaConf.merge(cfg, OmegaConf.from_dotlist(TINY))
        small, _ = measure(tiny, [("td", "chain")], TINY_ROUNDS, Path(root) / "tb")
        small = small[("td", "chain")]
        bench_rss = peak_rss_mib()
        train_peak = _child_peak("train", root)
        try:
            eval_peak: dict[str, float] | None = _child_peak("eval", root)
        except RuntimeError as err:
            print(f"evaluation memory not measured: {err}", flush=True)
            eval_peak = None
    threads = torch.get_num_threads()
    device = "cuda" if torch.cuda.is_available() else f"cpu, {threads} thread(s)"
    print(f"{device}; metaworld sizes, batch {cfg.data.batch_size_per_task} x 10 tasks, eta {cfg.policy.eta} from "
          f"step 0; median of {ROUNDS} rounds of {WARMUP} warm-up + {TIMED} timed steps per variant", flush=True)  # fmt: skip
    peak_flops = max(peak, peak_after)
    report(f"fp32 matmul peak (2048^3, best of 5, before / after: {peak / 1e9:.0f} / {peak_after / 1e9:.0f})",
           peak_flops / 1e9, "GFLOP/s")  # fmt: skip
    for pair, result in full.items():
        name = f"{pair[0]}, {pair[1]}"
        bare = result["bare"]
        report(f"{name}: FLOP per step (forward + backward)", flops[pair] / 1e9, "GFLOP")
        for variant, label in (("bare", "bare PyTorch loop"), ("eager", "Lightning"), ("compiled", "Lightning, compiled")):
            if variant not in result:
                continue
            steps = TIMED / result[variant]
            achieved = steps * flops[pair]
            report(f"{name}: {label}", steps, "steps/s",
                   f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak_flops:.0f} % of peak")  # fmt: skip
            if variant != "bare":
                target = "(target >= 1.0)" if variant == "compiled" else "(target >= 0.85)"
                report(f"{name}: ratio {label} / bare", bare / result[variant], "x", target)
        if "compiled" in result:
            report(f"{name}: ratio compiled / eager Lightning", result["eager"] / result["compiled"], "x")
    for variant, seconds in critic_free.items():
        report(f"eta 0, episode-weighted BC, critic {variant}: Lightning", TIMED / seconds, "steps/s")
    report("policy.critic=none / expectile, eta 0 (speed-up from not training an unread critic)",
           critic_free["expectile"] / critic_free["none"], "x")  # fmt: skip
    report("trajectory.read=per_state / pooled, no critic (cost of reading the demonstration at every state)",
           critic_free["none, per-state read"] / critic_free["none"], "x")  # fmt: skip
    bare_ms, ours_ms = (1e3 * small[k] / TIMED for k in ("bare", "eager"))
    print(f"tiny networks (critic=td, q_action=chain): median of {TINY_ROUNDS} rounds", flush=True)
    report("tiny networks: bare PyTorch loop", bare_ms, "ms/step")
    report("tiny networks: Lightning", ours_ms, "ms/step")
    report("framework overhead per step (tiny networks)", ours_ms - bare_ms, "ms/step", "(target < 1)")
    report("peak RSS of this benchmark process (all variants)", bench_rss, "MiB")
    report(f"peak RSS of training, metaworld sizes ({TRAIN_STEPS} steps, child process)", train_peak["self_mib"], "MiB")
    if eval_peak is not None:
        report(f"peak RSS of evaluation, metaworld plan, {EVAL_STEPS} lock steps (child)", eval_peak["self_mib"], "MiB",
               f"(its worker processes: {eval_peak['children_mib']:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak-train":
        peak_training(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--peak-eval":
        peak_evaluation(sys.argv[2])
    else:
        main()
