"""The task registry: Meta-World v3 task names, their hand-written descriptions and benchmark splits."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

from llmdpd.config.load import ConfigError
from llmdpd.config.schema import DataConfig


@functools.lru_cache(maxsize=None)
def registry() -> dict:
    """The parsed `llmdpd/tasks/metaworld.yaml`."""
    text = resources.files("llmdpd").joinpath("tasks/metaworld.yaml").read_text()
    return yaml.safe_load(text)


def all_tasks() -> list[str]:
    return list(registry()["tasks"])


def descriptions(task: str, overrides: dict[str, list[str]] | None = None) -> list[str]:
    """A task's descriptions: from `overrides` when given there, else from the registry."""
    if overrides and task in overrides:
        return list(overrides[task])
    tasks = registry()["tasks"]
    if task not in tasks:
        raise KeyError(f"No descriptions for task '{task}': give them under data.descriptions.{task}")
    return list(tasks[task]["descriptions"])


def split_tasks(data: DataConfig) -> tuple[list[str], list[str]]:
    """(training tasks, unseen tasks) of an experiment: explicit lists, else the named split; the validation
    tasks (`validation_tasks`) are left out of the training tasks."""
    train, unseen, held_out = _three_way(data)
    return [task for task in train if task not in held_out], unseen


def validation_tasks(data: DataConfig) -> list[str]:
    """The experiment's validation tasks: training tasks of its split held out of training, evaluated as
    unseen tasks under `eval.split=validation`."""
    return _three_way(data)[2]


def _three_way(data: DataConfig) -> tuple[list[str], list[str], list[str]]:
    splits = registry()["splits"]
    if data.split not in splits:
        raise KeyError(f"Unknown split '{data.split}'; known: {sorted(splits)}")
    train = list(data.train_tasks) or list(splits[data.split]["train"])
    unseen = list(data.unseen_tasks) if data.unseen_tasks or data.train_tasks else list(splits[data.split]["test"])
    held_out = list(data.validation_tasks)
    known = set(all_tasks()) | set(data.minari_ids)
    for task in train + unseen:
        if task not in known:
            raise KeyError(f"Unknown task '{task}': not a Meta-World v3 task and not in data.minari_ids")
    overlap = set(train) & set(unseen)
    if overlap:
        raise ValueError(f"Tasks both trained on and held out as unseen: {sorted(overlap)}")
    strangers = [task for task in held_out if task not in train]
    if strangers:
        raise ConfigError(f"data.validation_tasks must be training tasks of the experiment; not: {strangers}")
    if held_out and len(set(held_out)) == len(set(train)):
        raise ConfigError("data.validation_tasks holds out every training task; nothing would be trained on")
    return train, unseen, held_out
