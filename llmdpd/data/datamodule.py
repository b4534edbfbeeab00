"""`MetaWorldDataModule`: all training tasks' transitions in memory, task-grouped batches by index arithmetic.

Each batch draws B transitions from each of N tasks plus one trajectory prompt per task (the contract in
`llmdpd.data.keys`). Batch i of rank r is drawn from a generator seeded by (seed, r, i) alone, so a
resumed run sees exactly the batches an uninterrupted one would, whatever the loader prefetched.
"""

from __future__ import annotations

from pathlib import Path
from functools import partial
from typing import Callable, Iterator, Optional

import lightning as L
import numpy as np
import torch
from tensordict import TensorDict
from torch.utils.data import DataLoader, IterableDataset

from llmdpd.config.schema import ExperimentConfig
from llmdpd.data import tasks as task_registry
from llmdpd.data.generate import dataset_id
from llmdpd.data import keys as K
from llmdpd.data.keys import PROMPT_SOURCE, PROMPT_STEP_KEYS, TRANSITION_KEYS
from llmdpd.data.episode_store import EpisodeStore, action_chunks, n_step_returns, returns_to_go, prompt_indices, stack_prompt_stores
from llmdpd.data.neighbour_returns import advantage_returns
from llmdpd.data.minari_store import DatasetError, load_dataset, read_episodes, read_metadata
from llmdpd.data.normalizer import Normalizer


class TaskGroupedBatches(IterableDataset):
    """Endless batches `sample(i)` for i = start, start + 1, ... (sampling is a pure function of i)."""

    def __init__(self, sample: Callable[[int], TensorDict], start: int = 0) -> None:
        self.sample = sample
        self.start = start

    def __iter__(self) -> Iterator[TensorDict]:
        i = self.start
        while True:
            yield self.sample(i)
            i += 1


def _identity(batch):
    return batch


class MetaWorldDataModule(L.LightningDataModule):
    """Multi-task offline data for LLMDPD: transitions, trajectory prompts and task-text embeddings.

    `text_embedder` (a `llmdpd.prompts.text_embeddings.TextEmbedder`, or None when text prompts are off)
    embeds each task's descriptions once; training samples one paraphrase per task per batch.
    """

    def __init__(self, cfg: ExperimentConfig, text_embedder=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_embedder = text_embedder
        self.train_tasks, self.unseen_tasks = task_registry.split_tasks(cfg.data)
        self.validation_tasks = task_registry.validation_tasks(cfg.data)
        self.root = Path(cfg.paths.data_dir)
        self.prompt_length = int(cfg.data.prompt_length)
        self.batch_size_per_task = int(cfg.data.batch_size_per_task)
        n = int(cfg.data.tasks_per_batch)
        self.tasks_per_batch = len(self.train_tasks) if n <= 0 else min(n, len(self.train_tasks))
        self.reward_scale = float(cfg.data.reward_scale)
        self.seed = int(cfg.seed)
        self.rank = 0
        self.next_batch = 0
        # Set to K for the alignment stage: the loader then yields alignment batches of K prompts per task.
        self.alignment_prompts_per_task: Optional[int] = None
        self.transitions: Optional[EpisodeStore] = None
        self._prompt_stores: dict[str, EpisodeStore] = {}
        self._text_cache: dict[str, Optional[torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------- loading
    def _make_command(self) -> str:
        return f"llmdpd data {self.cfg.name}  (or: make data EXP={self.cfg.name})"

    def _episodes(self, task: str, kind: str) -> list[dict[str, np.ndarray]]:
        ds_id = dataset_id(self.cfg, task, kind)
        dataset = load_dataset(self.root, ds_id, make_command=self._make_command())
        episodes = read_episodes(dataset)
        if not episodes:
            raise DatasetError(f"Dataset '{ds_id}' holds no episodes")
        return episodes

    def _prompt_store(self, task: str) -> EpisodeStore:
        if task not in self._prompt_stores:
            self._prompt_stores[task] = EpisodeStore([self._episodes(task, "prompt")]).to(self.device)
        return self._prompt_stores[task]

    @property
    def device(self) -> torch.device:
        want = self.cfg.data.device
        if want != "auto":
            return torch.device(want)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.transitions is not None:
            return
        trainer = getattr(self, "trainer", None)
        self.rank = trainer.global_rank if trainer is not None else 0
        store = EpisodeStore([self._episodes(task, "mixed") for task in self.train_tasks])
        self.normalizer = Normalizer.fit(store.transitions[K.OBS], self.reward_scale)
        # Normalise once, here, so that sampling is pure indexing.
        store.transitions.update(self.normalizer.transitions(store.transitions))
        policy = self.cfg.policy
        store.transitions[K.EPISODE_RETURN] = advantage_returns(store, policy.awr_baseline, int(policy.awr_neighbours))
        store.transitions[K.RETURN_TO_GO] = returns_to_go(store, float(self.cfg.policy.gamma))
        # The critic's targets: n-step returns within each episode (reward, discount, next_obs replaced).
        store.transitions.update(n_step_returns(store, int(self.cfg.policy.n_step), float(self.cfg.policy.gamma)))
        # The actor's target: with an action horizon above 1, the chunk of actions from each step on.
        self._action_dim = int(store.transitions[K.ACTION].shape[-1])
        store.transitions[K.ACTION] = action_chunks(store, int(self.cfg.policy.action_horizon))
        self._device = self.device
        self.transitions = store.to(self._device)
        self.normalizer = self.normalizer.to(self._device)
        prompts = [self._prompt_store(task) for task in self.train_tasks]
        self._train_prompts = stack_prompt_stores(prompts, self.normalizer)
        # One packed [steps, S + A + 1 + S + 1] tensor per store: a batch is a single gather, then views.
        self._widths = [store.transitions[k].shape[-1] for k in TRANSITION_KEYS]
        self._packed = torch.cat([store.transitions[k] for k in TRANSITION_KEYS], -1)
        prompt_fields = [PROMPT_SOURCE[k] for k in PROMPT_STEP_KEYS]
        self._prompt_widths = [self._train_prompts.transitions[k].shape[-1] for k in prompt_fields]
        self._packed_prompts = torch.cat([self._train_prompts.transitions[k] for k in prompt_fields], -1)
        self._all_tasks = torch.arange(len(self.train_tasks), device=self._device)
        self.text_table, self.text_count = self._text_table(self.train_tasks)

    def setup_for_evaluation(self, normalizer: Normalizer) -> None:
        """Prompts and texts only, normalised with a checkpoint's normaliser (no training data is loaded)."""
        self._device = self.device
        self.normalizer = normalizer.to(self._device)

    def _text_table(self, tasks: list[str]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if self.text_embedder is None:
            return None, None
        embs = [self.text_embeddings(task) for task in tasks]
        width = max(e.shape[0] for e in embs)
        table = torch.zeros(len(tasks), width, embs[0].shape[1])
        for i, e in enumerate(embs):
            table[i, : e.shape[0]] = e
        return table.to(self.device), torch.tensor([e.shape[0] for e in embs], device=self.device)

    # ------------------------------------------------------------------------------------ properties
    @property
    def obs_dim(self) -> int:
        return int(self.transitions.transitions[K.OBS].shape[-1])

    @property
    def action_dim(self) -> int:
        """The environment's action size (a batch's `action` holds `policy.action_horizon` of them)."""
        return self._action_dim

    @property
    def text_dim(self) -> int:
        return int(self.text_embedder.dim) if self.text_embedder is not None else 0

    # ------------------------------------------------------------------------------------- sampling
    def _generator(self, batch_index: int) -> torch.Generator:
        g = torch.Generator(device=self._device)
        g.manual_seed(hash((self.seed, self.rank, batch_index)) & 0x7FFF_FFFF_FFFF_FFFF)
        return g

    def sample_batch(self, batch_index: int) -> TensorDict:
        """Batch number `batch_index` of this rank (a pure function of seed, rank and index)."""
        store, dev = self.transitions, self._device
        g = self._generator(batch_index)
        n, b = self.tasks_per_batch, self.batch_size_per_task
        num_tasks = len(self.train_tasks)
        if n < num_tasks:
            tasks = torch.randperm(num_tasks, generator=g, device=dev)[:n]
        else:
            tasks = self._all_tasks
        u = torch.rand(n * b + 3 * n, generator=g, device=dev)
        idx = store.task_start[tasks][:, None] + (u[: n * b].view(n, b) * store.task_count[tasks][:, None]).long()
        data = dict(zip(TRANSITION_KEYS, self._packed[idx].split(self._widths, dim=-1)))
        data[K.TASK] = tasks
        data.update(self._sample_prompts(tasks, u[n * b : n * b + n], u[n * b + n : n * b + 2 * n]))
        if self.text_table is not None:
            choice = (u[n * b + 2 * n :] * self.text_count[tasks]).long()
            data[K.TEXT_EMB] = self.text_table[tasks, choice]
        return TensorDict(data, batch_size=[n], device=dev)

    def _sample_prompts(self, tasks: torch.Tensor, u_episode: torch.Tensor, u_offset: torch.Tensor) -> dict:
        prompt = self._train_prompts
        ep = prompt.episode_offset[tasks] + (u_episode * prompt.episodes_per_task[tasks]).long()
        flat, steps = prompt_indices(prompt, ep, self.prompt_length, u_offset)
        steps_data = dict(zip(PROMPT_STEP_KEYS, self._packed_prompts[flat].split(self._prompt_widths, dim=-1)))
        return {**steps_data, K.PROMPT_POSITION: steps}

    def sample_alignment_batch(self, batch_index: int, prompts_per_task: int) -> TensorDict:
        """An alignment batch [N, K]: K prompts per training task, each with an independent paraphrase."""
        g = self._generator(batch_index)
        n, k = len(self.train_tasks), prompts_per_task
        tasks = self._all_tasks[:, None].expand(n, k).reshape(-1)
        u = torch.rand(3, n * k, generator=g, device=self._device)
        data = {K.TASK: tasks, **self._sample_prompts(tasks, u[0], u[1])}
        if self.text_table is not None:
            data[K.TEXT_EMB] = self.text_table[tasks, (u[2] * self.text_count[tasks]).long()]
        return TensorDict(data, batch_size=[n * k], device=self._device).reshape(n, k)

    # --------------------------------------------------------------------- evaluation-side accessors
    def text_embeddings(self, task: str) -> Optional[torch.Tensor]:
        """[P, E] LM embeddings of a task's descriptions (eval overrides, then data config, then registry)."""
        if self.text_embedder is None:
            return None
        if task not in self._text_cache:
            overrides = {**dict(self.cfg.data.descriptions), **dict(self.cfg.eval.descriptions)}
            texts = task_registry.descriptions(task, overrides)
            self._text_cache[task] = self.text_embedder.embed(texts).float()
        return self._text_cache[task]

    def data_episodes(self, task: str) -> list[dict[str, np.ndarray]]:
        """The raw episodes of a task's mixed-quality dataset (the policy stage's transitions)."""
        return self._episodes(task, "mixed")

    def prompt_episodes(self, task: str) -> list[dict[str, np.ndarray]]:
        """The raw episodes of a task's prompt dataset (held out of the policy stage's transitions)."""
        return self._episodes(task, "prompt")

    def prompt_goals(self, task: str) -> Optional[list[int]]:
        """The goal variation each prompt episode of `task` was recorded on (its dataset's metadata), or None
        where the metadata does not say."""
        goals = (read_metadata(self.root, dataset_id(self.cfg, task, "prompt")) or {}).get("episode_goals")
        return [int(goal) for goal in goals] if goals is not None else None

    def prompt(self, task: str, episode: int = 0, offset: int = 0) -> TensorDict:
        """The normalised trajectory prompt of H steps from prompt episode `episode` of `task` (any task)."""
        store = self._prompt_store(task)
        count = int(store.episodes_per_task[0])
        if not 0 <= episode < count:
            raise IndexError(f"Prompt episode {episode} of '{task}' does not exist (it has {count})")
        stride = max(int(store.episode_length[episode]) // self.prompt_length, 1)
        frac = torch.tensor([min(offset, stride - 1) / stride], device=store.episode_length.device)
        flat, _ = prompt_indices(store, torch.tensor([episode], device=frac.device), self.prompt_length, frac)
        steps = store.transitions[flat[0]]
        raw = {key: steps[field] for key, field in PROMPT_SOURCE.items()}
        return TensorDict(self.normalizer.prompt(raw), batch_size=[])

    # ------------------------------------------------------------------------------------- Lightning
    def train_dataloader(self) -> DataLoader:
        if self.alignment_prompts_per_task:
            sample = partial(self.sample_alignment_batch, prompts_per_task=self.alignment_prompts_per_task)
        else:
            sample = self.sample_batch
        return DataLoader(TaskGroupedBatches(sample, start=self.next_batch), batch_size=None, collate_fn=_identity)

    def state_dict(self) -> dict:
        # One batch per optimisation step: the number of batches consumed is the global step.
        trainer = getattr(self, "trainer", None)
        consumed = trainer.global_step if trainer is not None else self.next_batch
        return {"next_batch": int(consumed)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.next_batch = int(state_dict.get("next_batch", 0))
