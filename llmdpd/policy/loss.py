"""The policy stage's objective as torchrl `LossModule`s (the method's items 4 to 6).

`DiffusionQLLoss` reads a flat TensorDict of transitions and returns named parts, summed by the caller:

    in:  obs [n, S], action [n, A], cond [n, C] (with gradient, for the actor), reward [n, 1] (the n-step
         return), discount [n, 1] (gamma^m (1 - done) for the m steps the return covers), next_obs [n, S]
         (the state m steps on), task [n] (the transition's task index in the batch, in [0, n)) and
         episode_return [n, 1] (its whole episode's return) and return_to_go [n, 1] (its discounted return to the
         episode's end); the last three are read only by the per-task, episode and return-to-go advantages
    out: loss_bc, loss_critic, loss_value (expectile critic), loss_q (already weighted by `eta`),
         loss_outcome_value (return-to-go advantage), and detached statistics (q_mean, q_std, target_mean,
         value_mean, awr_weight_mean, awr_ess)

The twin critic lives in the loss as functional parameters with a target copy
(`convert_to_functional(..., create_target_params=True)`), soft-updated by torchrl's `SoftUpdate`, and is
called with `torch.func.functional_call`. The critics see `cond.detach()`: prompts are shaped by the actor
and alignment losses only. The actor's Q term evaluates the critic through detached parameters, so one
backward of the sum trains every part without sending L_q's gradient into the critic.

The statistics are computed only when `statistics` is true (the caller sets it on the steps it logs), and
nothing in `forward` reads a tensor back to the host, so the loss traces into one graph under
`torch.compile`.

`BehaviourCloningLoss` is the objective of an actor without a critic (the deterministic MLP baseline, or the diffusion
actor with `policy.critic: none`): loss_bc, weighted by an outcome advantage when one is set, and
loss_outcome_value when that is the return-to-go advantage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from torch import Tensor, nn
from torchrl.objectives import LossModule
from torchrl.objectives.iql import IQLLoss

from llmdpd.config.schema import AWR_ADVANTAGES, OUTCOME_ADVANTAGES, Q_ACTIONS
from llmdpd.policy.critic import TwinCritic

# Advantage weights exp(A / beta) are clipped here, as in AWAC/IQL implementations, so one lucky transition
# cannot dominate a batch.
MAX_AWR_WEIGHT = 100.0


def _named_tensors(params: TensorDictBase) -> dict[str, Tensor]:
    """A parameter TensorDict as the flat name -> tensor mapping `functional_call` takes."""
    return dict(params.flatten_keys(".").items())


def standardise_per_task(values: Tensor, task: Tensor) -> Tensor:
    """(x - mean_t x) / std_t x of each entry x [n, 1] within its task t = task[i] (an index in [0, n)).

    Segment sums by `index_add_` over n slots (an upper bound on the number of tasks), so no count is read back
    to the host and the shapes do not depend on the batch's tasks. A task with one entry gets 0.
    """
    flat, slots = values.reshape(-1), values.new_zeros(values.numel())
    count = slots.index_add(0, task, torch.ones_like(flat))
    mean = slots.index_add(0, task, flat) / count.clamp_min(1.0)
    centred = flat - mean[task]
    variance = slots.index_add(0, task, centred.square()) / (count - 1.0).clamp_min(1.0)
    return (centred / variance[task].sqrt().clamp_min(1e-6)).reshape_as(values)


def awr_weights(advantage: Tensor, beta: float) -> Tensor:
    """exp(A / beta), clipped at `MAX_AWR_WEIGHT`."""
    return torch.exp(advantage / beta).clamp(max=MAX_AWR_WEIGHT)


def episode_advantage(td: TensorDictBase) -> Tensor:
    """Each transition's whole-episode return standardised within its task of the batch [n, 1]."""
    return standardise_per_task(td["episode_return"].float(), td["task"])


def return_to_go_advantage(td: TensorDictBase, outcome_value: nn.Module) -> tuple[Tensor, Tensor]:
    """(A, loss_outcome_value): A = G_t - V(s, c) [n, 1] standardised within each task of the batch, with G_t the
    transition's discounted return to its episode's end and V its Monte-Carlo value regressed on G_t by MSE.

    Against the episode advantage, A keeps per-step resolution (a stall or another task's window lowers the
    weights of the steps before it, not of the whole episode); against the critic's Q - V, it carries the
    outcome that followed the action. V sees the condition detached: prompts learn from the actor only.
    """
    target = td["return_to_go"].float()
    value = outcome_value(td["obs"], td["cond"].detach()).float()
    advantage = standardise_per_task(target - value.detach(), td["task"])
    return advantage, F.mse_loss(value, target)



def outcome_advantage(td: TensorDictBase, kind: str, outcome_value: nn.Module | None) -> tuple[Tensor, dict[str, Tensor]]:
    """A [n, 1] of an outcome advantage (`kind` in `OUTCOME_ADVANTAGES`) and the loss parts it trains (the
    outcome value's `loss_outcome_value` for `return_to_go`, none for `episode`)."""
    if kind == "episode":
        return episode_advantage(td), {}
    advantage, loss = return_to_go_advantage(td, outcome_value)
    return advantage, {"loss_outcome_value": loss}


def weight_statistics(weight: Tensor) -> dict[str, Tensor]:
    """The weights' mean and effective sample size as a fraction of the batch, (sum w)^2 / (n sum w^2): near 1
    when the weights are even, near 1/n when one transition carries the batch."""
    ess = weight.sum().square() / weight.square().sum().clamp_min(1e-12) / weight.numel()
    return {"awr_weight_mean": weight.mean(), "awr_ess": ess}


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """|tau - 1(diff < 0)| diff^2, elementwise (torchrl's IQL value loss)."""
    return IQLLoss.loss_value_diff(diff, expectile)


class DiffusionQLLoss(LossModule):
    """L_bc + eta L_q for a diffusion (or MLP) actor, with a `td` or `expectile` twin critic.

    `target_actor` (the EMA actor) draws a' at s' for the `td` target; it is used without gradient and is
    not registered here (the LightningModule owns and averages it). `value` is V(s, c) for the expectile
    critic (None for `td`).
    """

    critic: TwinCritic
    critic_params: TensorDictParams
    target_critic_params: TensorDictParams

    def __init__(
        self,
        actor: nn.Module,
        critic: TwinCritic,
        target_actor: nn.Module,
        value: nn.Module | None = None,
        *,
        critic_kind: str = "td",
        expectile: float = 0.7,
        q_action: str = "chain",
        awr_beta: float = 0.0,
        awr_advantage: str = "raw",
        outcome_value: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if critic_kind not in ("td", "expectile"):
            raise ValueError(f"DiffusionQLLoss needs policy.critic 'td' or 'expectile', not '{critic_kind}'")
        if q_action not in Q_ACTIONS:
            raise ValueError(f"Unknown policy.q_action '{q_action}' (expected one of {Q_ACTIONS})")
        if awr_advantage not in AWR_ADVANTAGES:
            raise ValueError(f"Unknown policy.awr_advantage '{awr_advantage}' (expected one of {AWR_ADVANTAGES})")
        if critic_kind == "expectile" and value is None:
            raise ValueError("The expectile critic needs a value network")
        _check_outcome_value(awr_beta, awr_advantage, outcome_value)
        # The actors are owned (registered, checkpointed, averaged) by the LightningModule; the loss only
        # calls them.
        self.__dict__["actor"] = actor
        self.__dict__["target_actor"] = target_actor
        self.convert_to_functional(critic, "critic", create_target_params=True)
        self.value = value
        self.outcome_value = outcome_value
        self.critic_kind = critic_kind
        self.expectile = float(expectile)
        self.q_action = q_action
        self.awr_beta = float(awr_beta)
        self.awr_advantage = awr_advantage
        self.in_keys = ["obs", "action", "cond", "reward", "discount", "next_obs"]
        self.out_keys = ["loss_bc", "loss_critic", "loss_value", "loss_q"]
        # The weight of L_q this step (the caller ramps it in after the critic warm-up). Compiled callers pass a
        # 0-d tensor, so that compiled code takes the value as an input instead of recompiling for each value,
        # and say in `q_term` whether L_q is computed at all (None: `eta > 0` of a float eta).
        self.eta: float | Tensor = 0.0
        self.q_term: bool | None = None
        # Whether `forward` also returns the detached statistics (q_mean, q_std, ...).
        self.statistics = True

    # ------------------------------------------------------------------------------------------ critics
    def q(self, obs: Tensor, cond: Tensor, action: Tensor, params: TensorDictBase | None = None) -> tuple[Tensor, Tensor]:
        """Both critics' Q(s, c, a) [n, 1] under `params` (default: the online parameters)."""
        params = self.critic_params if params is None else params
        return functional_call(self.critic, _named_tensors(params), (obs, cond, action))

    def target_q_min(self, obs: Tensor, cond: Tensor, action: Tensor) -> Tensor:
        """min_j Q'_j(s, c, a) of the target critics, fp32 [n, 1]."""
        q1, q2 = self.q(obs, cond, action, self.target_critic_params)
        return torch.minimum(q1, q2).float()

    @torch.no_grad()
    def critic_target(self, td: TensorDictBase, cond: Tensor) -> Tensor:
        """y = R + discount * (min_j Q'_j(s', c, a') with a' from the EMA actor, or V(s', c))."""
        if self.critic_kind == "td":
            next_action = self.target_actor.sample(td["next_obs"], cond)
            bootstrap = self.target_q_min(td["next_obs"], cond, next_action)
        else:
            bootstrap = self.value(td["next_obs"], cond).float()
        return td["reward"].float() + td["discount"].float() * bootstrap

    # -------------------------------------------------------------------------------------------- parts
    def forward(self, td: TensorDictBase) -> TensorDict:
        obs, action, cond = td["obs"], td["action"], td["cond"]
        critic_cond = cond.detach()
        out: dict[str, Tensor] = {}

        target = self.critic_target(td, critic_cond)
        q1, q2 = self.q(obs, critic_cond, action)
        out["loss_critic"] = F.mse_loss(q1.float(), target) + F.mse_loss(q2.float(), target)
        if self.statistics:
            out["q_mean"], out["q_std"], out["target_mean"] = q1.detach().float().mean(), q1.detach().float().std(), target.mean()

        advantage = None
        if self.critic_kind == "expectile":
            with torch.no_grad():
                q_data = self.target_q_min(obs, critic_cond, action)
            value = self.value(obs, critic_cond).float()
            out["loss_value"] = expectile_loss(q_data - value, self.expectile).mean()
            if self.statistics:
                out["value_mean"] = value.detach().mean()
            advantage = q_data - value.detach()
        weight = None
        if self.awr_beta > 0 and (advantage is not None or self.awr_advantage in OUTCOME_ADVANTAGES):
            if self.awr_advantage in OUTCOME_ADVANTAGES:
                advantage, parts = outcome_advantage(td, self.awr_advantage, self.outcome_value)
                out.update(parts)
            elif self.awr_advantage == "task":
                advantage = standardise_per_task(advantage, td["task"])
            weight = awr_weights(advantage, self.awr_beta)
            if self.statistics:
                out.update(weight_statistics(weight))

        per_sample_bc, predicted = self.actor.loss_and_prediction(action, obs, cond)
        out["loss_bc"] = (per_sample_bc * weight).mean() if weight is not None else per_sample_bc.mean()

        if self.eta > 0 if self.q_term is None else self.q_term:
            policy_action = predicted if self.q_action == "one_step" else self.actor.sample(obs, cond)
            out["loss_q"] = self.eta * self.q_improvement(obs, critic_cond, policy_action)
        else:
            out["loss_q"] = torch.zeros((), device=obs.device)
        return TensorDict(out, batch_size=[])

    def q_improvement(self, obs: Tensor, cond: Tensor, action: Tensor) -> Tensor:
        """L_q = -mean Q_j(s, c, a) / mean |Q_other(s, c, a)|, head j drawn at random, denominator detached.

        The critic is evaluated through detached parameters: the gradient reaches the action (and through it
        the actor), never the critic.
        """
        q1, q2 = self.q(obs, cond, action, self.critic_params.detach())
        if torch.compiler.is_compiling():
            # Branch-free under torch.compile: one graph, drawn on the device so CUDA graphs can hold it (on CPU the
            # same draw as the eager branch). Eager code keeps the branch, which skips the unused head's backward.
            swap = torch.rand((), device=q1.device) < 0.5
            q1, q2 = torch.where(swap, q2, q1), torch.where(swap, q1, q2)
        elif torch.rand(()) < 0.5:  # a CPU draw: reading it is no device synchronisation
            q1, q2 = q2, q1
        return -q1.float().mean() / q2.float().abs().mean().detach().clamp_min(1e-6)


class BehaviourCloningLoss(LossModule):
    """The actor's own behaviour-cloning loss (`loss_bc`: MSE of the MLP's action, or the diffusion actor's
    denoising loss) on dataset actions, without a critic.

    With `awr_beta > 0` and `awr_advantage` "episode" or "return_to_go", each transition's error is weighted by
    exp(A / beta) with the same A as `DiffusionQLLoss`'s BC term (the latter with its own outcome value). The critic-based
    advantages need a critic: the MLP baseline leaves them unweighted, and `check_critic_use` refuses them
    for a diffusion actor without a critic.
    """

    def __init__(
        self, actor: nn.Module, *, awr_beta: float = 0.0, awr_advantage: str = "raw", outcome_value: nn.Module | None = None
    ) -> None:
        super().__init__()
        if awr_advantage not in AWR_ADVANTAGES:
            raise ValueError(f"Unknown policy.awr_advantage '{awr_advantage}' (expected one of {AWR_ADVANTAGES})")
        _check_outcome_value(awr_beta, awr_advantage, outcome_value)
        self.__dict__["actor"] = actor
        self.outcome_value = outcome_value
        self.weighted = awr_beta > 0 and awr_advantage in OUTCOME_ADVANTAGES
        self.awr_beta = float(awr_beta)
        self.awr_advantage = awr_advantage
        self.in_keys, self.out_keys = ["obs", "action", "cond"], ["loss_bc"]
        self.statistics = True

    def forward(self, td: TensorDictBase) -> TensorDict:
        per_sample, _ = self.actor.loss_and_prediction(td["action"], td["obs"], td["cond"])
        if not self.weighted:
            return TensorDict({"loss_bc": per_sample.mean()}, batch_size=[])
        advantage, out = outcome_advantage(td, self.awr_advantage, self.outcome_value)
        weight = awr_weights(advantage, self.awr_beta)
        out["loss_bc"] = (per_sample * weight).mean()
        if self.statistics:
            out.update(weight_statistics(weight))
        return TensorDict(out, batch_size=[])


def uses_outcome_value(awr_beta: float, awr_advantage: str) -> bool:
    """Whether the BC weights need the Monte-Carlo outcome value V(s, c) (the return-to-go advantage)."""
    return awr_beta > 0 and awr_advantage == "return_to_go"


def _check_outcome_value(awr_beta: float, awr_advantage: str, outcome_value: nn.Module | None) -> None:
    if uses_outcome_value(awr_beta, awr_advantage) and outcome_value is None:
        raise ValueError("policy.awr_advantage 'return_to_go' needs an outcome value network")


def loss_total(losses: TensorDictBase) -> Tensor:
    """The sum of a loss TensorDict's `loss_*` entries (what one backward trains)."""
    return sum(value for key, value in losses.items() if key.startswith("loss_"))
