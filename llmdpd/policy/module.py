"""Policy stage (the method's items 3-6, 8, 9): a prompt-conditioned diffusion policy trained with BC + Q-learning."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from lightning.pytorch import LightningModule
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.objectives import SoftUpdate

from llmdpd.config.schema import ExperimentConfig
from llmdpd.logging_steps import logs_this_step
from llmdpd.data.batch import TRANSITION_KEYS
from llmdpd.data.normalizer import Normalizer
from llmdpd.config.load import check_choices, config_section
from llmdpd.prompts.alignment import freezes_prompt_encoders
from llmdpd.prompts.encoders import TextPromptEncoder, TrajectoryPromptEncoder
from llmdpd.policy.averaging import copy_parameters_, soft_update_
from llmdpd.policy.acting import select_candidates
from llmdpd.policy.conditioning import PromptConditioning
from llmdpd.policy.critic import TwinCritic, ValueNetwork
from llmdpd.policy.demonstration_reader import DemonstrationReader
from llmdpd.policy.diffusion import DiffusionActor
from llmdpd.policy.loss import BehaviourCloningLoss, DiffusionQLLoss, loss_total, uses_outcome_value
from llmdpd.policy.mlp_bc import MLPActor



def compile_options(device: torch.device, backend: str = "inductor") -> dict[str, Any]:
    """`torch.compile` keyword arguments for the policy update on `device`: Inductor's CUDA graphs
    ("reduce-overhead") on CUDA, where these small MLPs would otherwise wait on kernel launches; the default
    mode elsewhere. Shapes are fixed (one batch layout per run), so nothing is compiled for dynamic shapes."""
    options: dict[str, Any] = {"backend": backend, "dynamic": False}
    if backend == "inductor":
        options["mode"] = "reduce-overhead" if torch.device(device).type == "cuda" else "default"
    return options


def _optional(batch: Any, key: str) -> Optional[Tensor]:
    return batch[key] if key in batch.keys() else None


class _Overridden:
    """A read-only view of a config section with some keys replaced (cheap enough for every acting call)."""

    def __init__(self, section: Any, overrides: Mapping[str, Any]) -> None:
        self._section, self._overrides = section, overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_section"], name)

    __getitem__ = __getattr__


def _with_overrides(section: Any, overrides: Optional[Mapping[str, Any]]) -> Any:
    return section if not overrides else _Overridden(section, overrides)


@contextmanager
def _eval_mode(*modules: Optional[nn.Module]) -> Iterator[None]:
    """Temporarily switch modules to eval mode, restoring each one's previous mode."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(present, modes):
            m.train(mode)


class PolicyDiffusionModule(LightningModule):
    """Stage 2: a diffusion actor and twin critics conditioned on c = [z_text; z_traj] (no critic with
    `policy.critic: none`).

    The objective lives in `self.loss` (`llmdpd.policy.loss`: torchrl LossModules with named parts); this
    module owns the networks, optimisation, logging, checkpoints and `act`. One training step = one AdamW
    step over three parameter groups (actor, critic with V, prompt encoders with the null vectors), from ONE
    backward of the summed loss parts, so DDP sees one backward per forward and `global_step` advances by
    one per batch. After the step torchrl's `SoftUpdate` moves the target critics and the EMA actor is
    updated (a plain copy before `policy.ema_start`).

    Observation mean/std and the reward scale are buffers, so a checkpoint carries its normaliser; `act`
    takes raw observations. With `policy.kind: mlp_bc` the actor is a deterministic tanh MLP trained by
    MSE, there is no critic, and acting returns the (EMA) actor's output. Precision: fp32 or bf16-mixed
    (per-group gradient clipping assumes unscaled gradients, so fp16 with a grad scaler is not supported).

    A step reads nothing back to the host: scalars are computed and logged only on the steps Lightning logs
    (`llmdpd.logging_steps`). With `policy.compile` the prompt encoding and the losses run compiled
    (`torch.compile`, CUDA graphs on CUDA; the backward through AOTAutograd) and AdamW takes its fused kernel;
    clipping, the optimizer step's hooks, the target and EMA updates stay eager, inside Lightning's manual
    optimisation.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        text_dim: int,
        cfg: dict,
        obs_mean: Optional[Tensor] = None,
        obs_std: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        # The normaliser lives in the state dict, not in the hyperparameters.
        self.save_hyperparameters(ignore=["obs_mean", "obs_std"])
        self.automatic_optimization = False
        self.cfg: ExperimentConfig = config_section(ExperimentConfig, cfg)
        check_choices(self.cfg)  # also when built from a dict rather than by load_config
        policy = self.cfg.policy
        self.kind = policy.kind

        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean).float()
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std).float()
        self.register_buffer("obs_mean", mean.clone())
        self.register_buffer("obs_std", std.clone())
        self.register_buffer("reward_scale", torch.tensor(float(self.cfg.data.reward_scale)))

        text_on = bool(self.cfg.text.enabled) and text_dim > 0
        trajectory_on = bool(self.cfg.trajectory.enabled)
        # A disabled prompt has no encoder at all (its parameters would get no gradients, which DDP rejects).
        self.text_encoder = TextPromptEncoder(text_dim, self.cfg.text) if text_on else None
        self.trajectory_encoder = (
            TrajectoryPromptEncoder(obs_dim, action_dim, self.cfg.trajectory) if trajectory_on else None
        )
        per_state = trajectory_on and self.cfg.trajectory.read == "per_state"
        self.conditioning = PromptConditioning(
            self.cfg.text.out_dim,
            self.cfg.trajectory.width,
            text_on,
            trajectory_on,
            policy.prompt_dropout,
            step_tokens=int(self.cfg.data.prompt_length) if per_state else 0,
        )
        self.reader = (
            DemonstrationReader(
                obs_dim,
                self.conditioning.pooled_dim,
                self.cfg.trajectory.width,
                int(self.cfg.data.prompt_length),
                self.cfg.trajectory.heads,
            )
            if per_state
            else None
        )
        # The width of c as the networks see it (after the per-state read, if any).
        cond_dim = self.reader.out_dim if self.reader is not None else self.conditioning.cond_dim
        # The actor (and the critic) see a chunk of `action_horizon` actions, concatenated.
        self.action_dim = action_dim
        chunk_dim = action_dim * int(policy.action_horizon)
        outcome_value = None
        if uses_outcome_value(policy.awr_beta, policy.awr_advantage):
            outcome_value = ValueNetwork(obs_dim, cond_dim, policy.critic_hidden_dim, policy.critic_layers)

        if self.kind == "diffusion":
            self.actor: nn.Module = DiffusionActor(
                obs_dim,
                chunk_dim,
                cond_dim,
                hidden_dim=policy.hidden_dim,
                layers=policy.layers,
                time_dim=policy.time_dim,
                steps=policy.diffusion_steps,
                schedule=policy.beta_schedule,
                prediction=policy.prediction,
                denoiser=policy.denoiser,
                top_step_share=policy.top_step_share,
            )
            self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        else:
            self.actor = MLPActor(obs_dim, chunk_dim, cond_dim, policy.hidden_dim, policy.layers)
            self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_updater: Optional[SoftUpdate] = None
        if self.kind == "diffusion" and policy.critic != "none":
            critic = TwinCritic(obs_dim, chunk_dim, cond_dim, policy.critic_hidden_dim, policy.critic_layers)
            value = None
            if policy.critic == "expectile":
                value = ValueNetwork(obs_dim, cond_dim, policy.critic_hidden_dim, policy.critic_layers)
            self.loss = DiffusionQLLoss(
                self.actor,
                critic,
                self.ema_actor,
                value,
                critic_kind=policy.critic,
                expectile=policy.expectile,
                q_action=policy.q_action,
                awr_beta=policy.awr_beta,
                awr_advantage=policy.awr_advantage,
                outcome_value=outcome_value,
            )
            self.target_updater = SoftUpdate(self.loss, tau=policy.tau)
        else:
            self.loss = BehaviourCloningLoss(
                self.actor, awr_beta=policy.awr_beta, awr_advantage=policy.awr_advantage, outcome_value=outcome_value
            )

        # Freezing only makes sense for aligned weights (`freezes_prompt_encoders`, the one rule); decided here
        # (not when weights are loaded) so that a resumed run builds the same optimizer parameter groups.
        if freezes_prompt_encoders(self.cfg):
            for encoder in (self.text_encoder, self.trajectory_encoder):
                if encoder is not None:
                    encoder.requires_grad_(False)

    @property
    def critic(self) -> Optional[TwinCritic]:
        """The twin critic (its online parameters live in `self.loss.critic_params`); None for MLP-BC and for
        `policy.critic: none`."""
        return getattr(self.loss, "critic", None)

    @property
    def value(self) -> Optional[ValueNetwork]:
        """V(s, c) of the expectile critic (None otherwise)."""
        return getattr(self.loss, "value", None)

    # ------------------------------------------------------------------------------------------ prompts
    def load_prompt_encoders(self, align_module: nn.Module) -> None:
        """Initialise the text and trajectory encoders from a trained `PromptEncoderModule`."""
        for name in ("text_encoder", "trajectory_encoder"):
            mine, theirs = getattr(self, name), getattr(align_module, name, None)
            if mine is not None and theirs is not None:
                mine.load_state_dict(theirs.state_dict())

    def _encode(self, text_emb: Optional[Tensor], prompt: Any, n: int, drop: bool) -> Tensor:
        z_text = z_trajectory = steps = None
        if self.text_encoder is not None and text_emb is not None:
            z_text = self.text_encoder(text_emb)
        if self.trajectory_encoder is not None and prompt is not None and "prompt_obs" in prompt.keys():
            z_trajectory, steps = self._encode_trajectory(prompt)
        return self.conditioning(z_text, z_trajectory, n, drop=drop, trajectory_steps=steps)

    def _encode_trajectory(self, prompt: Any) -> tuple[Tensor, Optional[Tensor]]:
        """z_traj, and the step tokens when the policy reads the demonstration per state."""
        if self.reader is None:
            return self.trajectory_encoder.encode(prompt), None
        return self.trajectory_encoder.encode_steps(prompt)

    def condition_at(self, state: Tensor, cond: Tensor) -> Tensor:
        """The condition the networks see at normalised states [n, S]: the task-level c [n, C] itself, or with
        `trajectory.read: per_state` its step tokens replaced by the state's read of them (`DemonstrationReader`)."""
        return cond if self.reader is None else self.reader(state, cond)

    @property
    def normalizer(self) -> Normalizer:
        """The normaliser whose statistics this module owns (buffers `obs_mean`, `obs_std`, `reward_scale`)."""
        return Normalizer(self.obs_mean, self.obs_std, self.reward_scale)

    def normalize_obs(self, obs: Tensor) -> Tensor:
        return self.normalizer.obs(obs)

    @torch.no_grad()
    def prompt_condition(self, text_emb: Optional[Tensor], prompt: Any, normalized: bool = True) -> Tensor:
        """The condition c [n, C] for acting: no dropout, encoders in eval mode.

        `text_emb` [n, E] (or [E]) LM embeddings; `prompt` a TensorDict/dict with `prompt_*` keys
        [n, H, ...] (or [H, ...]), normalised like the training data (as `DataModule.prompt` returns it;
        pass `normalized=False` for raw observations and rewards). A missing or disabled prompt gives its
        null vector; a single text or prompt is broadcast against n of the other.
        """
        weight = self.conditioning.null_text
        if text_emb is not None:
            text_emb = text_emb.to(weight.device, weight.dtype)
            text_emb = text_emb[None] if text_emb.dim() == 1 else text_emb
        if prompt is not None:
            prompt = {k: prompt[k].to(weight.device) for k in prompt.keys() if k.startswith("prompt_")}
            if prompt["prompt_obs"].dim() == 2:
                prompt = {k: v[None] for k, v in prompt.items()}
            if not normalized:
                prompt = self.normalizer.prompt(prompt)
        sizes = [x.shape[0] for x in (text_emb, None if prompt is None else prompt["prompt_obs"]) if x is not None]
        n = max(sizes, default=1)
        with _eval_mode(self.text_encoder, self.trajectory_encoder):
            z_text = self.text_encoder(text_emb) if self.text_encoder is not None and text_emb is not None else None
            z_trajectory, steps = None, None
            if self.trajectory_encoder is not None and prompt is not None:
                z_trajectory, steps = self._encode_trajectory(prompt)
        z_text = None if z_text is None else z_text.expand(n, -1)
        z_trajectory = None if z_trajectory is None else z_trajectory.expand(n, -1)
        steps = None if steps is None else steps.expand(n, -1, -1)
        return self.conditioning(z_text, z_trajectory, n, trajectory_steps=steps)

    # ------------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def candidates(
        self,
        obs: Tensor,
        cond: Tensor,
        count: Optional[int] = None,
        score: bool = True,
        acting: Optional[Mapping[str, Any]] = None,
        noise: Optional[Tensor] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """M candidates [n, M, A·T] per raw observation from the EMA actor (chunks of T = `policy.action_horizon`
        actions), in one batched call, and the target critics' min_j Q'_j of each [n, M] (None without a critic or
        with `score=False`).

        Classifier-free guidance applies when `policy.guidance_weight != 1`. `acting` overrides acting-time
        `policy.*` settings for this call (see `act`). `noise` [n, M, J, A·T] replaces the sampler's first J random
        draws (see `sampler_noise`).
        """
        policy = _with_overrides(self.cfg.policy, acting)
        obs = obs.to(self.obs_mean.device, self.obs_mean.dtype)
        n = obs.shape[0]
        state = self.normalize_obs(obs)
        cond = cond.to(state.device, self.conditioning.null_text.dtype).expand(n, -1)
        m = max(int(policy.num_candidates if count is None else count), 1)
        state_rep = state.repeat_interleave(m, 0)
        cond_rep = self.condition_at(state_rep, cond.repeat_interleave(m, 0))
        guidance = float(policy.guidance_weight)
        null = None
        if guidance != 1.0:
            null = self.condition_at(state_rep, self.conditioning.null(1).expand(n * m, -1))
        actions = self.ema_actor.sample(
            state_rep, cond_rep, guidance_weight=guidance, null_cond=null, temperature=float(policy.sample_temperature),
            calls=int(policy.sample_steps),
            noise=None if noise is None else noise.reshape(n * m, *noise.shape[2:]),
        ).float()
        q = None
        if score and self.critic is not None:
            q = self.loss.target_q_min(state_rep, cond_rep, actions).reshape(n, m)
        return actions.reshape(n, m, -1), q

    def sampler_noise(self, n: int, acting: Optional[Mapping[str, Any]] = None) -> Optional[Tensor]:
        """Standard normal draws [n, M, J, A·T] that replace the acting sampler's first J draws in `plan` for n rows
        (M the candidates `plan` draws under `acting`; J = K, the denoising steps, under `policy.sample_noise:
        episode`, 1 under `latent`). Drawn once per episode and passed at every step, the K draws make each
        episode's policy one fixed function of the state; the latent alone fixes where each chain starts. None
        for an actor that draws no noise (the MLP)."""
        steps = getattr(self.ema_actor, "steps", None)
        if steps is None:
            return None
        policy = _with_overrides(self.cfg.policy, acting)
        m = 1 if self._draws_one(policy) else max(int(policy.num_candidates), 1)
        given = 1 if policy.sample_noise == "latent" else steps
        return torch.randn(n, m, given, self.ema_actor.action_dim, device=self.obs_mean.device)

    def _draws_one(self, policy: Any) -> bool:
        """Whether `plan` draws one candidate under these acting settings (`sample`, or a rule by Q without a
        critic) rather than `policy.num_candidates`."""
        return policy.acting != "mean" and (self.critic is None or policy.acting == "sample")

    @torch.no_grad()
    def act(self, obs: Tensor, cond: Tensor, acting: Optional[Mapping[str, Any]] = None) -> Tensor:
        """Actions [n, A] in [-1, 1] for raw observations [n, S] under conditions [n, C] (or [1, C]): the first
        action of each state's plan (`plan`), what re-planning at every step executes."""
        return self.plan(obs, cond, acting)[:, 0]

    @torch.no_grad()
    def plan(self, obs: Tensor, cond: Tensor, acting: Optional[Mapping[str, Any]] = None,
             noise: Optional[Tensor] = None) -> Tensor:
        """Action chunks [n, T, A] in [-1, 1] (T = `policy.action_horizon`, 1 without chunks) for raw observations
        [n, S] under conditions [n, C] (or [1, C]).

        `policy.acting`: "sample" draws one action from the EMA actor; "mean" averages `policy.num_candidates`
        draws (the policy's expected action; no critic involved); "softmax" and "argmax" draw
        `policy.num_candidates` and choose by the target critics' Q (see `llmdpd.policy.acting`). The MLP
        baseline returns its single action. `policy.action_noise` adds Gaussian noise of that standard deviation
        to the chosen action before clipping. `acting` (e.g. `{"num_candidates": 32}`, keys of `policy.*`)
        overrides the trained config's acting-time settings for this call, without changing `self.cfg`. `noise`
        (from `sampler_noise`, for these n rows) replaces the sampler's random draws.
        """
        policy = _with_overrides(self.cfg.policy, acting)
        if policy.acting == "mean":
            actions, _ = self.candidates(obs, cond, score=False, acting=acting, noise=noise)
            action = actions.clamp(-1.0, 1.0).mean(1)
        elif self._draws_one(policy):
            actions, _ = self.candidates(obs, cond, count=1, score=False, acting=acting, noise=noise)
            action = actions[:, 0]
        else:
            actions, q = self.candidates(obs, cond, acting=acting, noise=noise)
            chosen = select_candidates(q, policy.acting, policy.acting_temperature)
            action = actions[torch.arange(actions.shape[0], device=chosen.device), chosen]
        if policy.action_noise > 0:
            action = action + float(policy.action_noise) * torch.randn_like(action)
        return action.clamp(-1.0, 1.0).reshape(action.shape[0], -1, self.action_dim)

    # ----------------------------------------------------------------------------------------- training
    def eta_at(self, step: int) -> float:
        """The weight of L_q at `step`: 0 during the critic warm-up, then a linear ramp to `policy.eta`."""
        policy = self.cfg.policy
        if policy.eta <= 0 or step < policy.critic_warmup_steps:
            return 0.0
        ramp = int(policy.eta_ramp_steps)
        return float(policy.eta) * (min(1.0, (step - policy.critic_warmup_steps + 1) / ramp) if ramp > 0 else 1.0)

    def loss_input(self, batch: Any) -> TensorDict:
        """The loss's input: the batch's [N, B] transitions flattened, with the condition of each task's prompt
        (encoded once per task, with prompt dropout) and the task's index in the batch repeated over its B
        transitions."""
        n, b = batch["obs"].shape[:2]
        cond = self._encode(_optional(batch, "text_emb"), batch, n, drop=True).repeat_interleave(b, 0)
        data = {k: batch[k].reshape(n * b, *batch[k].shape[2:]) for k in TRANSITION_KEYS if k in batch.keys()}
        if "discount" not in data:
            data["discount"] = self.cfg.policy.gamma * (1.0 - data["done"])
        cond = self.condition_at(data["obs"], cond)
        task = torch.arange(n, device=cond.device).repeat_interleave(b)
        return TensorDict({**data, "cond": cond, "task": task}, batch_size=[n * b])

    def compute_losses(self, batch: Any) -> TensorDict:
        """The named loss parts (and, when `self.loss.statistics`, the statistics) of one batch: prompt encoding
        once per task, the flat loss input, the loss module. What `policy.compile` compiles."""
        return self.loss(self.loss_input(batch))

    def _loss_function(self) -> Callable[[Any], TensorDict]:
        """`compute_losses`, compiled on first use when `policy.compile` is on (see `compile_options`)."""
        if not self.cfg.policy.compile:
            return self.compute_losses
        compiled = self.__dict__.get("_compiled_losses")
        if compiled is None:
            compiled = torch.compile(self.compute_losses, **compile_options(self.device, self.cfg.policy.compile_backend))
            self.__dict__["_compiled_losses"] = compiled  # a plain attribute: not a submodule, not in the state dict
        return compiled

    def training_step(self, batch: Any, batch_idx: int = 0) -> Tensor:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        logging = logs_this_step(self._trainer)
        # Compiled code always computes the statistics (one graph, and they are nearly free there).
        self.loss.statistics = logging or bool(self.cfg.policy.compile)
        eta = self.eta_at(self.global_step)
        if self.cfg.policy.compile:
            # A tensor, so that the ramp of eta does not recompile; only switching L_q on does.
            self.loss.eta, self.loss.q_term = torch.full((), eta, device=self.device), eta > 0
        else:
            self.loss.eta, self.loss.q_term = eta, None
        losses = self._loss_function()(batch)
        # The named parts, for the non-finite check (`llmdpd.training.callbacks`); detached, so nothing holds the graph.
        self.loss_parts = {key: value.detach() for key, value in losses.items() if key.startswith("loss_")}
        loss = loss_total(losses)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norms = self._clip_gradients(optimizer, measure=logging)
        rates = {group["name"]: group["lr"] for group in optimizer.param_groups}  # this step's, before the schedule
        optimizer.step()
        scheduler.step()
        self.update_targets()
        self.update_ema(self.global_step)
        if logging:
            self._log_step(losses, eta, norms, rates, batch["obs"].shape[0] * batch["obs"].shape[1])
        return loss.detach()

    def _clip_gradients(self, optimizer: Any, measure: bool) -> dict[str, Tensor]:
        """Clip each parameter group's gradients to its own limit; return the pre-clip norms when `measure`
        (a group without a limit is only measured then: scaling by 1 would change nothing)."""
        clips = {"actor": self.cfg.policy.actor_grad_clip, "critic": self.cfg.policy.critic_grad_clip}
        clips["prompt"] = clips["actor"]  # the prompt encoders learn from the actor's loss
        norms: dict[str, Tensor] = {}
        for group in optimizer.param_groups:
            name, clip = group["name"], clips[group["name"]]
            if clip > 0:
                norms[name] = torch.nn.utils.clip_grad_norm_(group["params"], clip)
            elif measure:
                grads = [p.grad for p in group["params"] if p.grad is not None]
                norms[name] = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        return norms

    def _log_step(
        self, losses: TensorDict, eta: float, norms: Mapping[str, Tensor], rates: Mapping[str, Any], batch_size: int
    ) -> None:
        logs = {f"train/{key}": value.detach() for key, value in losses.items()}
        logs["train/eta"] = torch.tensor(eta)
        for name, rate in rates.items():
            logs[f"train/{name}_grad_norm"] = norms[name].detach()
            logs[f"lr/{name}"] = torch.tensor(float(rate))
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)

    @torch.no_grad()
    def update_targets(self) -> None:
        """Soft update of the target critics: Q' <- (1 - tau) Q' + tau Q."""
        if self.target_updater is not None:
            self.target_updater.step()

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """After `step` optimizer steps: copy the actor before `ema_start`, then every `ema_every` steps
        ema <- decay * ema + (1 - decay) * actor."""
        policy = self.cfg.policy
        if step < policy.ema_start:
            copy_parameters_(self.ema_actor, self.actor)
        elif step % policy.ema_every == 0:
            soft_update_(self.ema_actor, self.actor, 1.0 - policy.ema_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        policy = self.cfg.policy
        prompt_params = [
            p
            for module in (self.text_encoder, self.trajectory_encoder, self.conditioning)
            if module is not None
            for p in module.parameters()
            if p.requires_grad
        ]
        # Actor and critic use Adam as in Diffusion-QL; the prompt encoders keep the alignment weight decay.
        # The per-state reader is new at the policy stage (nothing aligned it), so it learns at the actor's rate.
        actor_params = list(self.actor.parameters()) + ([] if self.reader is None else list(self.reader.parameters()))
        groups = [{"name": "actor", "params": actor_params, "lr": policy.actor_lr, "weight_decay": 0.0}]
        critic_params = list(self.loss.parameters())  # online critics, V and the outcome value; targets are buffers
        if critic_params:
            groups.append({"name": "critic", "params": critic_params, "lr": policy.critic_lr, "weight_decay": 0.0})
        prompt_decay = self.cfg.alignment.weight_decay
        groups.append({"name": "prompt", "params": prompt_params, "lr": policy.prompt_lr, "weight_decay": prompt_decay})
        # Compiled updates take AdamW's fused kernel (one vectorised pass per parameter, what Inductor would generate
        # for the step) instead of a compiled step, which would recompile as the schedule changes the learning rate.
        optimizer = torch.optim.AdamW(groups, fused=True if policy.compile else None)
        factors = [
            self._lr_factor(policy.critic_lr_schedule if group["name"] == "critic" else policy.lr_schedule)
            for group in groups
        ]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, schedule: str) -> Callable[[int], float]:
        """The learning-rate multiplier per step: cosine to 0 over `trainer.max_steps`, or constant."""
        total = int(self.cfg.trainer.get("max_steps") or -1)
        if total <= 0 and self._trainer is not None:
            total = int(self.trainer.max_steps)
        if schedule == "constant" or total <= 0:
            return lambda step: 1.0
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    # -------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The RNG drives diffusion noise, prompt dropout and target sampling; saving it lets a resumed run
        # continue the same random stream (exactly so in a single process).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        checkpoint["rng_state"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only when resuming a fit: loading a checkpoint for evaluation must not reseed the caller.
        rng = checkpoint.get("rng_state")
        if rng is None or self._trainer is None:
            return
        # Applied at the first batch: creating the data iterator after this hook draws from the global RNG.
        self._resumed_rng_state = rng

    def on_train_start(self) -> None:
        # Under DDP every rank must draw its own diffusion noise, timesteps and prompt dropout. A checkpoint
        # holds rank 0's RNG state only, so ranks seed from (seed, rank, step) at every (re)start instead.
        if self.trainer.world_size > 1:
            self._resumed_rng_state = None
            torch.manual_seed(hash((int(self.cfg.seed), self.global_rank, self.global_step)) & 0x7FFF_FFFF_FFFF_FFFF)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        rng = getattr(self, "_resumed_rng_state", None)
        if rng is None:
            return
        self._resumed_rng_state = None
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"].cpu())
