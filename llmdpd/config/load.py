"""Compose an experiment from YAML files and command-line overrides into a typed `ExperimentConfig`.

An experiment file may list `defaults:` (other YAML files, relative to `experiments/`, merged in order
before the file itself). Overrides are OmegaConf dot-lists (`trainer.max_steps=1000 policy.eta=0`).
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from llmdpd.config.schema import ExperimentConfig

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


class ConfigError(ValueError):
    """A configuration that cannot be used, with a message that names what is wrong."""


def experiment_path(exp: str) -> Path:
    """Resolve `exp` (a name in `experiments/` or a path to a YAML file) to a file."""
    candidate = Path(exp)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    named = EXPERIMENTS_DIR / f"{exp}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(exp, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown experiment '{exp}': not a YAML file and not one of {known}.{hint}")


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ConfigError(f"Circular 'defaults' in {path}")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    node = OmegaConf.load(path)
    defaults = node.pop("defaults", []) if isinstance(node, DictConfig) else []
    merged = OmegaConf.create()
    for name in defaults:
        base = Path(name)
        base = base if base.is_absolute() else EXPERIMENTS_DIR / base
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


def _check_trainer_keys(trainer: dict[str, Any]) -> None:
    from lightning.pytorch import Trainer

    allowed = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean 'trainer.{close[0]}'?" if close else ""
            raise ConfigError(f"Unknown config key 'trainer.{key}': not an argument of lightning.Trainer.{hint}")


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
        raise ConfigError(f"Invalid value in {path}: {err}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise _unknown_key_error(err, schema, "command-line overrides") from None
    except ValidationError as err:
        raise ConfigError(f"Invalid override value: {err}") from None
    if cfg.name == "experiment":
        cfg.name = path.stem
    if check_trainer:
        _check_trainer_keys(OmegaConf.to_container(cfg.trainer))
    return cfg  # type: ignore[return-value]  # a DictConfig typed as ExperimentConfig


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
