"""Prompt-encoding stage (the method's item 7 in the README): align trajectory prompts with their task's text by InfoNCE."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from llmdpd.config.schema import ExperimentConfig
from llmdpd.logging_steps import logs_this_step
from llmdpd.data import keys as K
from llmdpd.config.load import config_section
from llmdpd.prompts.encoders import TextPromptEncoder, TrajectoryPromptEncoder

# CLIP's bounds on the learned temperature: sharper than 0.01 is unstable, softer than 1 is useless.
MIN_LOG_TEMPERATURE = math.log(0.01)
MAX_LOG_TEMPERATURE = 0.0


def task_contrastive_loss(
    z_traj: Tensor, z_text: Tensor, task: Tensor, log_temperature: Tensor, accuracy: bool = True
) -> tuple[Tensor, Optional[Tensor]]:
    """Symmetric InfoNCE between M segments and M texts whose positives are decided by task identity.

    Row i of `z_traj` and row i of `z_text` both belong to task `task[i]`. Several segments (and several
    texts) of one task are in the batch, so the target of segment i is not "text i" but every text of its
    task, with equal weight (a soft-target cross-entropy), and symmetrically for each text. Returns the
    loss and the segment->task top-1 accuracy (the most similar text is one of the segment's own task), or
    None for the accuracy when `accuracy` is false.
    """
    temperature = log_temperature.clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()
    logits = F.normalize(z_traj.float(), dim=-1) @ F.normalize(z_text.float(), dim=-1).T / temperature
    positive = (task[:, None] == task[None, :]).float()
    segment_to_text = F.cross_entropy(logits, positive / positive.sum(1, keepdim=True))
    text_to_segment = F.cross_entropy(logits.T, positive.T / positive.T.sum(1, keepdim=True))
    loss = 0.5 * (segment_to_text + text_to_segment)
    if not accuracy:
        return loss, None
    rows = torch.arange(len(task), device=task.device)
    return loss, positive[rows, logits.detach().argmax(1)].mean()


def uses_alignment(cfg: Any) -> bool:
    """Whether an experiment runs the alignment stage: it needs both prompts, since it aligns one with the other."""
    return bool(cfg.alignment.enabled and cfg.trajectory.enabled and cfg.text.enabled)


def freezes_prompt_encoders(cfg: Any) -> bool:
    """Whether the policy stage keeps the prompt encoders fixed: only aligned encoders are worth keeping, so
    `alignment.freeze_in_policy_stage` applies only when the alignment stage runs (a randomly initialised
    encoder is never frozen). The one place this is decided (the policy module and the pipeline ask here)."""
    return uses_alignment(cfg) and bool(cfg.alignment.freeze_in_policy_stage)


class PromptEncoderModule(LightningModule):
    """Stage 1: trains the trajectory encoder (and the text projection) so that a task's demonstration
    segments lie closest to that task's text, with a learned temperature.

    Reads alignment batches ([N, K] TensorDicts, see `llmdpd.data.keys`): every prompt is paired with its
    own independently drawn paraphrase, so one step sees N*K segments and N*K texts, and the loss counts
    all texts of a segment's task as positives (`task_contrastive_loss`). When the text width differs from
    the trajectory width, a linear head maps texts into the trajectory space (identity otherwise).
    """

    def __init__(self, obs_dim: int, action_dim: int, text_dim: int, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: ExperimentConfig = config_section(ExperimentConfig, cfg)
        self.trajectory_encoder = TrajectoryPromptEncoder(obs_dim, action_dim, self.cfg.trajectory)
        self.text_encoder = TextPromptEncoder(text_dim, self.cfg.text)
        width, out_dim = self.cfg.trajectory.width, self.cfg.text.out_dim
        self.text_head = nn.Identity() if out_dim == width else nn.Linear(out_dim, width, bias=False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(self.cfg.alignment.init_temperature)))

    def embed_texts(self, text_emb: Tensor) -> Tensor:
        """[..., E] LM embeddings -> [..., width] in the shared space (not normalised)."""
        return self.text_head(self.text_encoder(text_emb))

    def embed_prompts(self, prompts: Any) -> Tensor:
        """A TensorDict/dict with `prompt_*` keys [..., H, ...] -> [..., width]."""
        return self.trajectory_encoder.encode(prompts)

    def training_step(self, batch: Any, batch_idx: int = 0) -> Tensor:
        task = batch[K.TASK].reshape(-1)
        z_traj = self.embed_prompts(batch).reshape(task.numel(), -1)
        z_text = self.embed_texts(batch[K.TEXT_EMB]).reshape(task.numel(), -1)
        logging = logs_this_step(self._trainer)
        loss, accuracy = task_contrastive_loss(z_traj, z_text, task, self.log_temperature, accuracy=logging)
        if logging:
            temperature = self.log_temperature.detach().clamp(MIN_LOG_TEMPERATURE, MAX_LOG_TEMPERATURE).exp()
            self.log_dict(
                {"align/loss": loss.detach(), "align/accuracy": accuracy, "align/temperature": temperature},
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=task.numel(),
            )
        return loss

    @torch.no_grad()
    def task_scores(self, prompts: Any, text_emb: Tensor) -> Tensor:
        """Cosine similarity [n_prompts, n_tasks] between prompts [n_prompts, H, ...] and texts [n_tasks, E]."""
        z_traj = F.normalize(self.embed_prompts(prompts).float(), dim=-1)
        z_text = F.normalize(self.embed_texts(text_emb.to(self.log_temperature.dtype)).float(), dim=-1)
        return z_traj @ z_text.T

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decayed = [p for name, p in self.named_parameters() if name != "log_temperature"]
        return torch.optim.AdamW(
            [
                {"params": decayed, "weight_decay": self.cfg.alignment.weight_decay},
                {"params": [self.log_temperature], "weight_decay": 0.0},
            ],
            lr=self.cfg.alignment.lr,
        )
