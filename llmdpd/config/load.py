"""Compose an experiment from YAML files and command-line overrides into a typed `ExperimentConfig`.

An experiment file may list `defaults:` (other YAML files, relative to `experiments/`, merged in order
before the file itself). Overrides are OmegaConf dot-lists (`trainer.max_steps=1000 policy.eta=0`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from llmdpd.config.schema import CHOICES, OUTCOME_ADVANTAGES, POLICY_RETRIEVAL_RULES, Q_ACTING_RULES, ExperimentConfig

SectionT = typing.TypeVar("SectionT")


def config_section(cls: type[SectionT], cfg: Any) -> SectionT:
    """`cfg` (a dataclass, DictConfig or plain dict) as a typed config node of `cls`, with defaults filled in."""
    if isinstance(cfg, cls):
        return cfg
    return OmegaConf.merge(OmegaConf.structured(cls), cfg or {})  # type: ignore[return-value]


# A source checkout's experiments/, and the copy an installed package carries (setup.cfg's data_files).
SOURCE_EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
INSTALLED_EXPERIMENTS = Path("share") / "llmdpd" / "experiments"
EXPERIMENTS_ENV = "LLMDPD_EXPERIMENTS"


def experiments_dir() -> Path:
    """Where experiment names are looked up: `$LLMDPD_EXPERIMENTS` if set, else the source checkout's
    `experiments/`, else the copy installed with the package (`<prefix>/share/llmdpd/experiments`, also
    under the user scheme's prefix for `pip install --user`)."""
    import site
    import sys

    if os.environ.get(EXPERIMENTS_ENV):
        return Path(os.environ[EXPERIMENTS_ENV])
    if SOURCE_EXPERIMENTS_DIR.is_dir():
        return SOURCE_EXPERIMENTS_DIR
    for prefix in (sys.prefix, sys.base_prefix, site.getuserbase()):
        candidate = Path(prefix) / INSTALLED_EXPERIMENTS
        if candidate.is_dir():
            return candidate
    return SOURCE_EXPERIMENTS_DIR


EXPERIMENTS_DIR = experiments_dir()


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message that names what is wrong."""


def experiment_path(exp: str) -> Path:
    """Resolve `exp` (a name in `experiments/` or a path to a YAML file) to a file."""
    candidate = Path(exp)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    folder = experiments_dir()
    named = folder / f"{exp}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    close = difflib.get_close_matches(exp, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown experiment '{exp}': not a YAML file and not one of {known}.{hint}")


def _yaml_error(err: yaml.YAMLError, where: str) -> ConfigError:
    """A YAML syntax error as one line: where, line and column (1-based), and what the parser expected."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    detail = f"{context}: {problem}" if context else problem
    if mark is None:
        return ConfigError(f"{where}: YAML syntax error: {detail}")
    return ConfigError(f"{where}, line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {detail}")


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ConfigError(f"Circular 'defaults' in {path}")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise _yaml_error(err, str(path)) from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: an experiment file must be a mapping of keys to values, not a {type(node).__name__}")
    defaults = node.pop("defaults", []) if isinstance(node, DictConfig) else []
    merged = OmegaConf.create()
    for name in defaults:
        base = Path(name)
        base = base if base.is_absolute() else experiments_dir() / base
        merged = OmegaConf.merge(merged, _compose(base.with_suffix(".yaml"), seen + (path,)))
    return OmegaConf.merge(merged, node)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            keys.extend(_valid_keys(node._get_node(key), f"{full}."))
    return keys


def _unknown_key_error(err: Exception, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or str(err)
    valid = _valid_keys(schema)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"Unknown config key '{key}' (in {source}).{hint}")


def _type_name(tp: Any) -> str:
    """A readable name of a type annotation: `int`, `float or None`, `one of 32, 'bf16-mixed'`, `list of str`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is typing.Union:
        literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [_type_name(a) for a in args if typing.get_origin(a) is not typing.Literal]
        names = (["one of " + ", ".join(repr(v) for v in literals)] if literals else []) + others
        return " or ".join(dict.fromkeys(names))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    """Whether a plain YAML value (int, float, str, bool, None, list, dict) fits annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is not None:
        return isinstance(value, origin if origin is not tuple else (list, tuple))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this check does not understand: leave it to Lightning


def _check_trainer_keys(trainer: dict[str, Any]) -> None:
    """Every `trainer.*` key is an argument of `lightning.Trainer`, and its value has the argument's type."""
    from lightning.pytorch import Trainer

    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    try:
        hints = typing.get_type_hints(Trainer.__init__)
    except Exception:  # unresolvable annotations in some Lightning version: names are still checked
        hints = {}
    for key, value in trainer.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean 'trainer.{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key 'trainer.{key}': not an argument of lightning.Trainer.{hint}")
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"Invalid value for 'trainer.{key}': {value!r}; expected {_type_name(hints[key])}")


def _schema_type(key: str) -> Any:
    """The annotation of dotted `key` in `ExperimentConfig` (None when it is not a dataclass field)."""
    from llmdpd.config.schema import ExperimentConfig

    node: Any = ExperimentConfig
    tp: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        tp = node = hints[part]
    return tp


def _validation_error(err: ValidationError, source: str) -> ConfigError:
    """OmegaConf's multi-line validation error as one line: key, value and the expected type."""
    key = getattr(err, "full_key", None)
    if not key:
        first = str(err).strip().splitlines()[0]
        return ConfigError(f"Invalid value (in {source}): {first}; a section takes a mapping of its keys")
    tp = _schema_type(str(key))
    expected = _type_name(tp) if tp is not None else "another type"
    if dataclasses.is_dataclass(tp):
        expected = "a mapping of its keys"
    value = getattr(err, "value", None)
    return ConfigError(f"Invalid value for '{key}' (in {source}): {value!r}; expected {expected}")


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value")
    for item in overrides:  # one at a time, so that an error names its override
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as err:
            raise _yaml_error(err, f"override '{item}'") from None
    return OmegaConf.from_dotlist(list(overrides))


def load_config(exp: str, overrides: Sequence[str] = (), check_trainer: bool = True) -> ExperimentConfig:
    """Load experiment `exp` with dot-list `overrides` applied; unknown keys raise `ConfigError`."""
    path = experiment_path(exp)
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema
    try:
        cfg = OmegaConf.merge(cfg, _compose(path))
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise _unknown_key_error(err, schema, str(path)) from None
    except ValidationError as err:
        raise _validation_error(err, str(path)) from None
    dotlist = _parse_overrides(overrides)
    try:
        cfg = OmegaConf.merge(cfg, dotlist)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise _unknown_key_error(err, schema, "command-line overrides") from None
    except ValidationError as err:
        raise _validation_error(err, "command-line overrides") from None
    if cfg.name == "experiment":
        cfg.name = path.stem
    check_choices(cfg)
    if check_trainer:
        _check_trainer_keys(OmegaConf.to_container(cfg.trainer))
    return cfg  # type: ignore[return-value]  # a DictConfig typed as ExperimentConfig


def check_choices(cfg: DictConfig) -> None:
    """Keys that name a choice (policy.acting, eval.split, ...) must hold one of their allowed values,
    `policy.sample_steps` must lie within the chain, `policy.top_step_share` in [0, 1], `policy.action_execute`
    within the action horizon (1 with `policy.action_ensemble`), a diffusion actor without a critic must not be
    asked for anything that reads Q (`check_critic_use`), per-state reading of the demonstration comes without a
    critic, the neighbours' baseline ranks whole episodes, the expert's labels are given to generated data only,
    one of `eval.prompt_task` and `eval.prompt_retrieval` chooses the prompt, the retrieval rule has what it reads,
    and the world model's sizes are positive."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"Invalid value for '{key}': {value!r}; expected one of {', '.join(allowed)}")
    steps = cfg.policy.diffusion_steps
    if not 0 <= cfg.policy.sample_steps <= steps:
        raise ConfigError(f"Invalid value for 'policy.sample_steps': {cfg.policy.sample_steps}; expected 0 (all) "
                          f"to policy.diffusion_steps ({steps})")
    if not 0.0 <= cfg.policy.top_step_share <= 1.0:
        raise ConfigError(f"Invalid value for 'policy.top_step_share': {cfg.policy.top_step_share}; expected a share "
                          "in [0, 1]")
    horizon, execute = cfg.policy.action_horizon, cfg.policy.action_execute
    if horizon < 1:
        raise ConfigError(f"Invalid value for 'policy.action_horizon': {horizon}; expected at least 1")
    check_chunk_acting(horizon, execute, cfg.policy.action_ensemble)
    check_critic_use(cfg)
    if cfg.policy.awr_baseline == "neighbours" and cfg.policy.awr_advantage != "episode":
        raise ConfigError(f"'policy.awr_baseline: neighbours' ranks whole episodes; it needs policy.awr_advantage "
                          f"'episode', not '{cfg.policy.awr_advantage}'")
    if cfg.policy.awr_neighbours < 1:
        raise ConfigError(f"Invalid value for 'policy.awr_neighbours': {cfg.policy.awr_neighbours}; expected at least 1")
    if cfg.data.action_labels == "expert" and cfg.data.minari_ids:
        raise ConfigError(f"'data.action_labels: expert' relabels the data this project generates; the datasets of "
                          f"data.minari_ids ({', '.join(cfg.data.minari_ids)}) are read as they are")
    if cfg.trajectory.read == "per_state" and cfg.policy.kind == "diffusion" and cfg.policy.critic != "none":
        raise ConfigError(f"'trajectory.read: per_state' reads the demonstration at the current state, but policy.critic "
                          f"'{cfg.policy.critic}' bootstraps at the next one; set policy.critic to none")
    if cfg.eval.prompt_task and cfg.eval.prompt_retrieval != "none":
        raise ConfigError("eval.prompt_task and eval.prompt_retrieval both choose the prompt; set one of them")
    if cfg.eval.prompt_parts != "both" and (cfg.eval.prompt_task or cfg.eval.prompt_retrieval != "none"):
        raise ConfigError(f"eval.prompt_parts={cfg.eval.prompt_parts} reads part of an unseen task's own prompt; "
                          "it cannot be combined with eval.prompt_task or eval.prompt_retrieval")
    if cfg.eval.prompt_parts != "both" and not (cfg.text.enabled and cfg.trajectory.enabled):
        raise ConfigError(f"eval.prompt_parts={cfg.eval.prompt_parts} needs both prompts (text.enabled and "
                          "trajectory.enabled)")
    if cfg.eval.prompt_retrieval_leave_one_out and cfg.eval.prompt_retrieval == "none":
        raise ConfigError("eval.prompt_retrieval_leave_one_out needs a retrieval rule (eval.prompt_retrieval)")
    for key in ("prompt_retrieval_unconditional", "prompt_retrieval_own"):
        if cfg.eval[key] and cfg.eval.prompt_retrieval not in POLICY_RETRIEVAL_RULES:
            raise ConfigError(f"eval.{key} needs a retrieval rule that consults the policy "
                              f"({', '.join(POLICY_RETRIEVAL_RULES)}), not '{cfg.eval.prompt_retrieval}'")
    if cfg.eval.prompt_retrieval_own and cfg.eval.prompt_retrieval_leave_one_out:
        raise ConfigError("eval.prompt_retrieval_own offers a task its own prompt; under "
                          "eval.prompt_retrieval_leave_one_out every training task would be offered itself")
    if cfg.eval.prompt_retrieval == "distilled" and cfg.eval.prompt_retrieval_leave_one_out:
        raise ConfigError("eval.prompt_retrieval=distilled fits its ranker on the training tasks; under "
                          "eval.prompt_retrieval_leave_one_out a training task would be among its own targets")
    if cfg.eval.prompt_retrieval == "text" and not cfg.text.enabled:
        raise ConfigError("eval.prompt_retrieval=text needs the text prompt (text.enabled is false)")
    for key in ("width", "layers", "steps", "unroll", "sequences", "members"):
        if cfg.world_model[key] < 1:
            raise ConfigError(f"Invalid value for 'world_model.{key}': {cfg.world_model[key]}; expected at least 1")
    if cfg.world_model.holdout_episodes < 0:
        raise ConfigError(f"Invalid value for 'world_model.holdout_episodes': {cfg.world_model.holdout_episodes}; "
                          "expected at least 0")
    for key in ("lr", "adapt_lr"):
        if not cfg.world_model[key] > 0:
            raise ConfigError(f"Invalid value for 'world_model.{key}': {cfg.world_model[key]}; expected a positive rate")
    if cfg.world_model.adapt_steps < 0:
        raise ConfigError(f"Invalid value for 'world_model.adapt_steps': {cfg.world_model.adapt_steps}; expected at "
                          "least 0 (0: no adaptation)")
    if not 0.0 <= cfg.world_model.adapt_replay < 1.0:
        raise ConfigError(f"Invalid value for 'world_model.adapt_replay': {cfg.world_model.adapt_replay}; expected a "
                          "share in [0, 1) (the demonstration keeps the rest of each step)")
    if not cfg.world_model.max_spread >= 0:
        raise ConfigError(f"Invalid value for 'world_model.max_spread': {cfg.world_model.max_spread}; expected a "
                          "distance of at least 0 (0: no limit)")


def check_chunk_acting(horizon: int, execute: int, ensemble: bool) -> None:
    """`policy.action_execute` within the action horizon, and 1 under `policy.action_ensemble`. Also checked by the
    evaluation agent, where the horizon comes from the checkpoint and the acting keys from the command line."""
    if not 1 <= execute <= horizon:
        raise ConfigError(f"Invalid value for 'policy.action_execute': {execute}; expected 1 to policy.action_horizon "
                          f"({horizon})")
    if ensemble and execute != 1:
        raise ConfigError(f"'policy.action_ensemble' plans at every step; 'policy.action_execute' is {execute}, expected 1")


def check_critic_use(cfg: DictConfig) -> None:
    """With `policy.critic: none` the diffusion actor has no Q: refuse the Q term, a critic-based advantage
    and the acting rules that select by Q, naming the setting."""
    policy = cfg.policy
    if policy.kind != "diffusion" or policy.critic != "none":
        return
    needs = []
    if policy.eta > 0:
        needs.append(f"policy.eta={policy.eta} (the Q term)")
    if policy.awr_beta > 0 and policy.awr_advantage not in OUTCOME_ADVANTAGES:
        needs.append(f"policy.awr_advantage={policy.awr_advantage} with policy.awr_beta={policy.awr_beta}")
    if policy.acting in Q_ACTING_RULES:
        needs.append(f"policy.acting={policy.acting}")
    if needs:
        raise ConfigError(f"policy.critic is 'none', but these settings read Q: {'; '.join(needs)} (set policy.critic to td or expectile)")


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
