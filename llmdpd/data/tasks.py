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
    parsed = yaml.safe_load(text)
    return {**parsed, "splits": resolve_splits(parsed["splits"])}


def resolve_splits(splits: dict) -> dict:
    """The splits with each `holds_out_of: <split>` written out: such a split trains on that split's training
    tasks less its own `test`, in their order, so a benchmark's folds are not copies of its task list."""
    resolved = {}
    for name, split in splits.items():
        base = split.get("holds_out_of")
        if base is None:
            resolved[name] = split
            continue
        where = f"split '{name}' of llmdpd/tasks/metaworld.yaml"
        if "train" in split:
            raise ValueError(f"{where} gives both 'train' and 'holds_out_of'; give one")
        if base not in splits or "train" not in splits[base]:
            raise ValueError(f"{where} holds out of '{base}', which is not a split with a 'train' list")
        strangers = [task for task in split["test"] if task not in splits[base]["train"]]
        if strangers:
            raise ValueError(f"{where} holds out tasks that '{base}' does not train on: {strangers}")
        train = [task for task in splits[base]["train"] if task not in split["test"]]
        resolved[name] = {"train": train, "test": list(split["test"])}
    return resolved


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
