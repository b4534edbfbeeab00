"""Typed experiment configuration. Every default lives here; YAML files in `experiments/` override them.

An experiment is an `ExperimentConfig`. Code reads these dataclasses (through OmegaConf), never raw dicts,
so an unknown key anywhere is an error at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


# The allowed values of every key that names a choice; `load_config` refuses anything else in one line.
POLICY_KINDS = ("diffusion", "mlp_bc")
CRITIC_KINDS = ("td", "expectile", "none")
Q_ACTIONS = ("chain", "one_step")
AWR_ADVANTAGES = ("raw", "task", "episode", "return_to_go")
# The advantages that need no critic: they come from the episodes' outcomes.
OUTCOME_ADVANTAGES = ("episode", "return_to_go")
# What the episode advantage ranks an episode's return against: its task's other episodes, or the episodes of its
# task nearest to it by path (llmdpd/data/neighbour_returns.py).
AWR_BASELINES = ("task", "neighbours")
ACTING_RULES = ("sample", "mean", "softmax", "argmax")
# When the acting sampler draws its noise: at every call ("step"), once per episode ("episode"), or its initial
# latent once per episode and its reverse-step noise at every call ("latent").
SAMPLE_NOISE = ("step", "episode", "latent")
# The acting rules that choose among candidates by the critic's Q.
Q_ACTING_RULES = ("softmax", "argmax")
LR_SCHEDULES = ("cosine", "constant")
# How the transition model of imagined practice sees the object (llmdpd/world_model/model.py).
OBJECT_FRAMES = ("absolute", "hand")
# Where imagined practice lets the imagined object go (llmdpd/world_model/path.py).
OBJECT_PATHS = ("free", "demonstration")
# What the transition model reads beside the state and action (llmdpd/world_model/context.py).
WORLD_MODEL_CONTEXTS = ("none", "demonstration")
# What a state is matched to the demonstration's steps on (llmdpd/world_model/context.py).
CONTEXT_MATCHES = ("object_and_hand", "object")
# What a data episode stores as its actions (llmdpd/data/collect.py).
ACTION_LABELS = ("executed", "expert")
CHOICES: dict[str, tuple[str, ...]] = {
    "data.action_labels": ACTION_LABELS,
    "policy.kind": POLICY_KINDS,
    "policy.critic": CRITIC_KINDS,
    "policy.q_action": Q_ACTIONS,
    "policy.awr_advantage": AWR_ADVANTAGES,
    "policy.awr_baseline": AWR_BASELINES,
    "policy.acting": ACTING_RULES,
    "policy.sample_noise": SAMPLE_NOISE,
    "policy.lr_schedule": LR_SCHEDULES,
    "policy.critic_lr_schedule": LR_SCHEDULES,
    "policy.beta_schedule": ("vp", "linear", "cosine"),
    "policy.prediction": ("epsilon", "sample"),
    "policy.denoiser": ("mlp", "film"),
    "text.pooling": ("mean", "last", "cls"),
    "trajectory.read": ("pooled", "per_state"),
    "eval.split": ("test", "validation"),
    "eval.prompt_retrieval": ("none", "demonstration", "motion", "text", "practice", "imagined", "distilled"),
    "eval.prompt_parts": ("both", "text", "trajectory"),
    "world_model.object_frame": OBJECT_FRAMES,
    "world_model.object_path": OBJECT_PATHS,
    "world_model.context": WORLD_MODEL_CONTEXTS,
    "world_model.context_match": CONTEXT_MATCHES,
}
# The retrieval rules that consult the policy (and so can offer its unconditional behaviour as a candidate).
POLICY_RETRIEVAL_RULES = ("demonstration", "practice", "imagined")


@dataclass
class PathsConfig:
    """Where datasets, runs and caches live (relative paths are relative to the working directory)."""

    data_dir: str = "data"
    runs_dir: str = "runs"
    # Language-model embeddings and converted model folders.
    cache_dir: str = ".cache/llmdpd"


@dataclass
class NoiseComponent:
    """One component of the per-episode action-noise mixture: Gaussian std `scale`, drawn with `weight`."""

    scale: float = 0.0
    weight: float = 1.0


@dataclass
class BehaviourComponent:
    """One behaviour of the v1 data mixture, drawn per episode with `weight`.

    `noisy`: the scripted expert with Gaussian action noise (scale from `data.noise`); `wrong_goal`: the
    expert driven toward another goal variation's goal; `other_task`: windows of another task's expert;
    `stall`: the expert with windows of standing still or retreating. All but `noisy` fail visibly: in
    the states they visit and in success.
    """

    kind: str = "noisy"
    weight: float = 1.0


@dataclass
class DataConfig:
    """Which tasks an experiment uses, how their offline data is generated, and how batches are drawn."""

    benchmark: str = "metaworld"
    # Named split from llmdpd/tasks/metaworld.yaml (ml10, ml45, mt10, mt50); explicit lists below override it.
    split: str = "ml10"
    train_tasks: list[str] = field(default_factory=list)
    unseen_tasks: list[str] = field(default_factory=list)
    # Validation tasks: training tasks of the split held out of training (no data, no prompts in batches) and
    # evaluated as unseen tasks are, under `eval.split=validation` only, on their validation goals (split label
    # "validation_unseen"). Settings meant for unseen tasks are chosen on them, never on the test's unseen tasks.
    validation_tasks: list[str] = field(default_factory=list)
    # Minari dataset names are `<benchmark>/<task>/<kind>-<version>`, e.g. metaworld/push-v3/mixed-v0.
    dataset_version: str = "v1"
    # Seed of data generation; separate from the training seed so that runs over seeds share one dataset.
    seed: int = 0
    episodes_per_task: int = 50
    prompt_episodes: int = 5
    max_episode_steps: int = 500
    noise: list[NoiseComponent] = field(
        default_factory=lambda: [
            NoiseComponent(0.1, 0.3),
            NoiseComponent(0.3, 0.3),
            NoiseComponent(0.6, 0.2),
            NoiseComponent(1.0, 0.2),
        ]
    )
    # v1 adds behaviours whose failures show in states and success; `dataset_version: v0` is noise only.
    behaviours: list[BehaviourComponent] = field(
        default_factory=lambda: [
            BehaviourComponent("noisy", 0.55),
            BehaviourComponent("wrong_goal", 0.15),
            BehaviourComponent("other_task", 0.15),
            BehaviourComponent("stall", 0.15),
        ]
    )
    # A name part that keeps a collection apart from others of the same tasks, routes and version (e.g. "dense" for
    # ten times the episodes): `mixed-dense-v1`. Letters and digits.
    dataset_tag: str = ""
    # Tasks whose expert takes one of several routes, drawn per episode: task -> {route: weight}, e.g.
    # {push-wall-v3: {left: 0.5, right: 0.5}} (routes in llmdpd/envs/expert_routes.py). Such a task's datasets
    # are named after their routes (`mixed-left-right-v1`), so the one-route data stay as they are.
    routes: dict[str, dict[str, float]] = field(default_factory=dict)
    # The actions the training data store: "executed" (what drove the arm, noise and behaviour included) or
    # "expert" (at each visited state, what the episode's expert, on its route, would do there: DART's labels).
    # With "expert" the behaviours only choose which states are visited; returns stay those of the execution, and
    # the datasets are named `...-relabelled-...`. Prompt datasets always store what was executed.
    action_labels: str = "executed"
    prompt_noise: float = 0.05
    # Meta-World's 50 goal variations per task: [0, train_goals) feed the datasets (data goals), the next
    # `validation_goals` are for every tuning choice, and the rest are seen-test goals, evaluated once.
    train_goals: int = 32
    validation_goals: int = 8
    workers: int = 2
    force: bool = False
    # Batches: B transitions from each of N tasks (0 = all training tasks) plus one prompt per task.
    batch_size_per_task: int = 256
    tasks_per_batch: int = 0
    prompt_length: int = 20
    reward_scale: float = 0.1
    # "auto": the GPU when there is one, else the CPU.
    device: str = "auto"
    # Any other Minari dataset: task name -> dataset id, with its descriptions under `descriptions`.
    minari_ids: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TextPromptConfig:
    """Frozen language model that embeds task descriptions (cached on disk), and its trained projection."""

    enabled: bool = True
    # "smollm2" and "minilm" are packaged offline; anything else is a hub id or a local folder.
    model: str = "smollm2"
    pooling: str = "mean"
    hidden_dim: int = 256
    out_dim: int = 128


@dataclass
class TrajectoryPromptConfig:
    """Transformer over H (s, a, r) steps of one demonstration, read through a [CLS] token."""

    enabled: bool = True
    width: int = 128
    layers: int = 3
    heads: int = 4
    dropout: float = 0.0
    # Largest episode position that gets its own learned embedding.
    max_position: int = 512
    # How the policy reads the demonstration: "pooled" (the [CLS] output, one vector per task) or "per_state"
    # (also the current state's attention over the H step tokens, one vector per state: one-shot imitation's
    # reading; needs the diffusion actor without a critic, whose target would read the demonstration at s').
    read: str = "pooled"


@dataclass
class AlignmentConfig:
    """Prompt-encoding stage: symmetric InfoNCE between trajectory prompts and task texts."""

    enabled: bool = True
    max_steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    prompts_per_task: int = 8
    init_temperature: float = 0.07
    # Policy stage: fine-tune the aligned trajectory encoder (False) or keep it fixed (True).
    freeze_in_policy_stage: bool = False


@dataclass
class PolicyConfig:
    """Diffusion policy, twin critics and their optimisation (the method's items 3 to 9 in the README)."""

    # "diffusion" (LLMDPD / Diffusion-QL) or "mlp_bc" (deterministic MLP behaviour cloning baseline).
    kind: str = "diffusion"
    diffusion_steps: int = 5
    beta_schedule: str = "vp"
    # What the denoiser predicts: "epsilon" (the noise, DDPM and Diffusion-QL) or "sample" (the clean action).
    prediction: str = "epsilon"
    # The denoiser: "mlp" (Diffusion-QL's MLP over [a_k; k; s; c]) or "film" (residual blocks over a_k whose
    # features (k, s, c) scale and shift at every layer, as Diffusion Policy conditions).
    denoiser: str = "mlp"
    # Share of each BC batch trained at the noisiest denoising step, the rest uniform over all steps (0: uniform,
    # 1/K at the top). At the top the clean-action loss is the regression to E[a | s, c] that one-call acting
    # (`sample_steps: 1`) reads; more of the batch there trains it faster.
    top_step_share: float = 0.0
    hidden_dim: int = 256
    layers: int = 3
    time_dim: int = 16
    critic_hidden_dim: int = 256
    critic_layers: int = 3
    gamma: float = 0.99
    tau: float = 0.005
    # Chosen on ML10 validation goals (docs/results.md): eta 0.1 over 1.0, n_step 10 and awr_beta 1 over
    # n_step 1 without AWR, `sample` acting over softmax and sample temperature 0. These defaults are the first
    # frozen configuration (`llmdpd`); the best validated one since, `experiments/llmdpd_x0_rwr_t15.yaml`, sets
    # prediction "sample", eta 0, awr_beta 1, awr_advantage "episode" and sample_temperature 1.5.
    eta: float = 0.1
    prompt_dropout: float = 0.1
    guidance_weight: float = 1.0
    num_candidates: int = 16
    ema_decay: float = 0.995
    ema_every: int = 5
    ema_start: int = 1000
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    prompt_lr: float = 1e-4
    lr_schedule: str = "cosine"
    actor_grad_clip: float = 1.0
    critic_grad_clip: float = 1.0
    # Critic: "td" (Diffusion-QL: target from EMA-actor samples at s'), "expectile" (IDQL/IQL in-sample:
    # V(s, c) by expectile regression on min-Q of dataset actions, Q toward r + gamma V(s', c)) or "none" (no
    # critic is built or trained: for settings nothing of which reads Q, i.e. eta 0, an outcome advantage or
    # none, and acting without selection by Q; a third of the step cost of the same settings with the
    # expectile critic, measured on ML45 CPU runs).
    critic: str = "expectile"
    expectile: float = 0.7
    # n-step returns from the stored episodes (1 = one-step TD).
    n_step: int = 10
    # The critic's own schedule ("constant" or "cosine"); annealing it to 0 freezes an unconverged critic.
    critic_lr_schedule: str = "constant"
    # The actor ignores Q before this step; eta then ramps linearly to its value over `eta_ramp_steps`.
    critic_warmup_steps: int = 1000
    eta_ramp_steps: int = 1000
    # The action the Q term scores: "chain" (the differentiable reverse chain, the paper) or "one_step" (the
    # clean action predicted in one call from a noised data action, EDP's approximation).
    q_action: str = "one_step"
    # Advantage-weighted BC: weight exp(A / beta) on each transition's BC loss (0 = off).
    awr_beta: float = 1.0
    # The advantage A in exp(A / beta): "raw" (Q - V of the expectile critic), "task" (Q - V standardised within
    # each task of the batch, so the weights rank transitions inside a task instead of tasks against each other;
    # beta is then in standard deviations) or "episode" (no critic: the return of the transition's whole episode,
    # standardised within each task of the batch, so whole behaviours are ranked by their outcome) or
    # "return_to_go" (G_t - V(s, c), G_t the discounted return to the episode's end and V regressed on it by MSE,
    # standardised within each task: the outcome's signal with per-step resolution; no critic needed).
    awr_advantage: str = "raw"
    # With awr_advantage "episode": "task" ranks each episode's return among its task's episodes; "neighbours"
    # first subtracts the mean return of the `awr_neighbours` episodes of its task nearest by path, so an episode
    # is ranked only among those that went its way and a longer route keeps its share of the weight.
    awr_baseline: str = "task"
    awr_neighbours: int = 50
    # Acting: M candidates from the EMA actor, then "sample" (the first), "mean" (their average: the policy's
    # expected action, without the behaviour's noise), "softmax" (Boltzmann over the target critic's Q
    # standardised across a state's candidates, temperature `acting_temperature`) or "argmax".
    acting: str = "sample"
    acting_temperature: float = 1.0
    # Temperature of the acting sampler's noise (1: DDPM; 0: the deterministic chain from the zero latent).
    sample_temperature: float = 1.0
    # When the acting sampler's noise (initial latent and reverse-step noise) is drawn: afresh at every call
    # ("step"), or once per episode and reused at every call of that episode ("episode"), so that the episode's
    # policy is one fixed function of the state and stays in the mode its latent picks instead of redrawing the
    # mode at every step; or "latent": the initial latent once per episode, the reverse steps' noise afresh at every
    # call. Evaluation and `diagnose --rollouts` only (their agents keep one draw per episode).
    sample_noise: str = "step"
    # Network calls of the acting sampler's reverse chain (0: all `diffusion_steps`); fewer stop the chain early
    # and act on that call's clean-action estimate. 1 call from the zero latent (sample_temperature 0) is the
    # actor's own regression to the mean action E[a | s, c] (`DiffusionActor.sample`).
    sample_steps: int = 0
    # Standard deviation of Gaussian noise added to the chosen action before clipping to the action box (0: none);
    # what a deterministic policy (`mlp_bc`) has in place of the diffusion sampler's temperature.
    action_noise: float = 0.0
    # Action chunks (Diffusion Policy's prediction horizon): the actor predicts the actions of this many steps
    # from each state (its output is their concatenation; the training target repeats an episode's last action
    # past its end). 1: one action per state.
    action_horizon: int = 1
    # How many of a predicted chunk's actions are executed before the policy is asked again (1 to
    # `action_horizon`; 1: re-plan at every step and execute the chunk's first action).
    action_execute: int = 1
    # Temporal ensembling of chunks (ACT): plan at every step and execute the average of every live plan's action
    # for this step, the plan made i steps before the oldest weighted exp(-decay * i) (older plans weigh more for
    # decay > 0). Needs `action_execute: 1`; keeps closed-loop correction while smoothing across plans.
    action_ensemble: bool = False
    action_ensemble_decay: float = 0.01
    # Compile the training update (prompt encoders, losses and, through AOTAutograd, their backward) with
    # torch.compile; on CUDA in "reduce-overhead" mode (CUDA graphs). The first steps pay the compilation.
    compile: bool = False
    # torch.compile's backend: "inductor" (generated kernels), or "aot_eager" (the same graphs run by eager
    # kernels: compiles in seconds, for debugging and tests).
    compile_backend: str = "inductor"


@dataclass
class EvalConfig:
    """Rollouts on seen tasks (held-out goals) and unseen tasks (held-out tasks)."""

    every_n_steps: int = 0
    # "validation": training tasks on validation goals (for every choice); "test": seen-test goals of the
    # training tasks plus the unseen tasks (evaluated once per frozen configuration).
    split: str = "test"
    episodes_per_task: int = 10
    seen: bool = True
    unseen: bool = True
    max_episode_steps: int = 500
    workers: int = 1
    # At most this many Meta-World environments (about 20 MB each) live at once; larger plans run in waves.
    max_envs: int = 256
    # Which prompt episode of an unseen task's prompt dataset conditions the agent.
    prompt_episode: int = 0
    # Condition every episode on this training task's descriptions and demonstration instead of its own task's
    # ("": its own; "unconditional": the all-null condition). What one training behaviour scores on other tasks:
    # `llmdpd diagnose --retrieval`.
    prompt_task: str = ""
    # Condition each unseen task on a training task chosen from its demonstration or descriptions
    # (llmdpd/evaluation/behaviour_retrieval.py): "demonstration" (the behaviour whose actions best imitate its
    # demonstration), "motion" (the training demonstration that moves most alike), "text" (the nearest
    # description); "practice" (the behaviour whose own rollout, one reward-free practice episode per candidate from
    # the demonstration's start, moves most like the demonstration); "imagined" (the same, with the episodes
    # rolled out in a transition model learned from the training data instead of the task's environment:
    # zero-shot); "distilled" (imagined practice's choices on the training tasks, learned as a ranking of the
    # prompt-only signals: zero-shot, nothing imagined on the unseen task); "none": on its own prompt.
    prompt_retrieval: str = "none"
    # Retrieve for the training tasks too, each among the other training tasks: with eval.split=validation,
    # a retrieval rule's validation (how well the behaviour it calls up serves a task it was not trained for).
    prompt_retrieval_leave_one_out: bool = False
    # Offer the policy's unconditional behaviour (the all-null condition that prompt dropout trains, which asks for
    # no task in particular) as one more candidate, named "unconditional", to the rules that consult the policy
    # (demonstration, practice, imagined).
    prompt_retrieval_unconditional: bool = False
    # Offer the task's own prompt (its description and demonstration, as without retrieval) as one more candidate,
    # named as the task, to the rules that consult the policy: the rule keeps it where it serves best. Unseen tasks
    # only (under leave-one-out a training task would be offered itself).
    prompt_retrieval_own: bool = False
    # Which half of an unseen task's own prompt the policy reads: "both", "text" (the description only) or
    # "trajectory" (the demonstration only); the other half is its learned null vector, which prompt dropout
    # trains for each half alone. Training tasks always read both.
    prompt_parts: str = "both"
    # Override the descriptions of a task at evaluation time: task -> list of texts.
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 1000
    # Critic and acting diagnostics (selection bias, Q linearity, ranking accuracy, calibration) on the
    # training tasks' evaluation states, logged at every evaluation.
    diagnostics: bool = True
    # Render this many episodes of every task off-screen at each evaluation: mp4 files in the run directory
    # and animated images in TensorBoard (0: none). Rendering costs about 15 ms per frame on a CPU core.
    video: int = 0
    # Frame size of those videos, in pixels (square).
    video_size: int = 224


@dataclass
class WorldModelConfig:
    """The transition model that imagined practice (`eval.prompt_retrieval=imagined`) rolls policies out in:
    fitted once on the training tasks' datasets and cached (llmdpd/world_model/)."""

    width: int = 256
    layers: int = 3
    steps: int = 4000
    # The loss follows the model's own predictions for this many steps from each sampled state (step k weighted
    # 1 / k): one-step fitting alone drifts within 50 steps of a rollout.
    unroll: int = 16
    sequences: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # The last this many episodes of each training task are held out to measure the fit (reported and cached).
    holdout_episodes: int = 3
    # The fit (initialisation and sampling) is seeded by the experiment's seed plus this offset: another offset is
    # another fit of the same data, to measure how much imagined practice's choices depend on the fit.
    seed_offset: int = 0
    # An ensemble of this many models, member k fitted from seed + seed_offset + 100 k: imagined practice rolls every
    # candidate out in each and averages the members' motion distances.
    members: int = 1
    # The comparison stops where the members' imagined hand and object positions spread more than this (m, the std
    # across members; llmdpd/evaluation/imagined_practice.py): 0 compares the whole window.
    max_spread: float = 0.0
    # Before imagining a task's candidates, fine-tune a copy of each member on the task's demonstration for this many
    # steps (the fit's unrolled loss, `unroll` and `sequences`, at the constant rate `adapt_lr`): the demonstration
    # is the one record of the new task's objects. 0: imagine in the models as fitted.
    adapt_steps: int = 0
    adapt_lr: float = 1e-4
    # The share of each adaptation step's windows drawn from the training episodes the model was fitted on instead of
    # the demonstration, so that the copy learns the new object without forgetting the rest. 0: the demonstration only.
    adapt_replay: float = 0.0
    # "absolute": one network predicts the hand's, the gripper's and the object's change from every input. "hand":
    # the object's change has a network of its own that sees no absolute position (the object relative to the
    # hand, the gripper, the last changes, the action), so that object dynamics learned on the training objects can
    # carry to a new object wherever it stands.
    object_frame: str = "absolute"
    # "free": the object goes where the model moves it. "demonstration": after each imagined step the object is moved
    # to the nearest point of the path the task's demonstration moved its object along (relative to the object's
    # start), since Meta-World's objects are held by absolute constraints (hinges, slides) the model cannot know.
    object_path: str = "free"
    # "none": the model reads the state and the action. "demonstration": it also reads, at every state, what the
    # task's demonstration's object did where the demonstration looked most like that state (its object's
    # displacement and position relative to the hand), fitted with a demonstration of the same training task beside
    # every window, so that a new task's demonstration can tell it how the new object moves.
    context: str = "none"
    # What each state is matched to the demonstration's steps on: "object_and_hand" (the object's displacement from
    # its start and its position relative to the hand) or "object" (the displacement alone: where the hand starts
    # then does not spoil the match of an object that moves on its own).
    context_match: str = "object_and_hand"


@dataclass
class ExperimentConfig:
    """One experiment: everything `llmdpd data|train|eval` needs."""

    name: str = "experiment"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextPromptConfig = field(default_factory=TextPromptConfig)
    trajectory: TrajectoryPromptConfig = field(default_factory=TrajectoryPromptConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    # Passed to lightning.Trainer for the policy stage; keys are checked against Trainer's signature.
    # precision null = bf16-mixed on CUDA, 32-true on CPU.
    trainer: dict[str, Any] = field(
        default_factory=lambda: {
            "max_steps": 20000,
            "accelerator": "auto",
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "precision": None,
            "log_every_n_steps": 50,
        }
    )
    checkpoint_every_n_steps: int = 5000
    # Resume: a checkpoint path, or "last" for the run directory's last checkpoint.
    ckpt: Optional[str] = None
    # Run directory name under paths.runs_dir; null = "<name>/seed<seed>".
    run_name: Optional[str] = None
