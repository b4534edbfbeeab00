"""Checkpoint files: written atomically, read with one-line errors, checked against the model they restore.

- `atomic_save` writes to a hidden temporary file beside the target, fsyncs it, renames it into place and
  fsyncs the folder, so an interruption (SIGKILL, power loss, a full disk) leaves either the old file or the
  new one, never a truncated one. `AtomicCheckpointIO` makes every Lightning checkpoint of a run (periodic,
  `last.ckpt`, signal and SLURM requeue checkpoints) go through it.
- `read_checkpoint` / `read_meta` turn torch's errors about a truncated or foreign file into a
  `CheckpointError` naming the file.
- `check_fits` compares a checkpoint's parameters with a module's and names what differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from llmdpd.errors import no_space

PathLike = Union[str, Path]

# Config keys that decide a policy checkpoint's architecture (and what its inputs mean).
ARCHITECTURE_KEYS = (
    "policy.kind",
    "policy.critic",
    "policy.hidden_dim",
    "policy.layers",
    "policy.time_dim",
    "policy.diffusion_steps",
    "policy.critic_hidden_dim",
    "policy.critic_layers",
    "text.enabled",
    "text.model",
    "text.pooling",
    "text.hidden_dim",
    "text.out_dim",
    "trajectory.enabled",
    "trajectory.width",
    "trajectory.layers",
    "trajectory.heads",
    "trajectory.max_position",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or used here, with a message that names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems (and Windows) do not open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(obj: Any, handle) -> None:
    """Serialise `obj` into an open binary file (a seam for tests that simulate a full disk)."""
    torch.save(obj, handle)


def atomic_save(obj: Any, path: PathLike, write: Optional[Callable[[Any, Any], None]] = None) -> Path:
    """`torch.save(obj, path)` that never leaves a partial file at `path`; raises `CheckpointError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            (write or _write)(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, RuntimeError) and not no_space(err) and "write" not in str(err).lower():
            raise
        reason = "no space left on device" if no_space(err) else (getattr(err, "strerror", None) or str(err))
        raise CheckpointError(f"could not write checkpoint {path}: {reason} (nothing was written there)") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with `atomic_save` for writing and `read_checkpoint` for reading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: PathLike, map_location: Optional[Callable] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location)


def read_checkpoint(path: PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint at `path`; a missing, truncated or foreign file raises `CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(str(path), map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as err:  # zip reader, unpickler and EOF errors all mean the same to the user
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or unreadable ({first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def read_meta(path: PathLike) -> dict[str, Any]:
    """Like `read_checkpoint`, memory-mapped, for the few fields a resolver reads (the step, callbacks)."""
    return read_checkpoint(path, map_location="cpu", mmap=True)


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], keys=ARCHITECTURE_KEYS) -> list[str]:
    """`key: saved -> current` for each of `keys` whose value differs between two plain config dicts."""
    return [
        f"{key}={_get(saved, key)!r} in the checkpoint, {_get(current, key)!r} here"
        for key in keys
        if _get(saved, key) != _get(current, key)
    ]


def state_dict_differences(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What keeps `saved` from loading into a module whose state dict is `expected`, worst first."""
    shapes = [
        f"{name} has shape {list(saved[name].shape)} in the checkpoint, {list(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in saved and hasattr(saved[name], "shape") and tuple(saved[name].shape) != tuple(tensor.shape)
    ]
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    out = shapes
    if missing:
        out.append(f"{len(missing)} parameter(s) missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        out.append(f"{len(unexpected)} parameter(s) the model does not have (e.g. {unexpected[0]})")
    return out


def check_fits(checkpoint: Mapping[str, Any], path: PathLike, module: torch.nn.Module, current_cfg: Optional[Mapping] = None) -> None:
    """Raise `CheckpointError` when `checkpoint`'s weights do not load into `module`, naming what differs:
    the architecture config keys that changed (when both configs are known), else the first parameters."""
    problems = state_dict_differences(checkpoint.get("state_dict", {}), module.state_dict())
    if not problems:
        return
    saved_cfg = (checkpoint.get("hyper_parameters") or {}).get("cfg")
    changed = config_differences(saved_cfg, current_cfg) if saved_cfg and current_cfg else []
    detail = "; ".join(changed[:3]) if changed else "; ".join(problems[:2])
    raise CheckpointError(f"checkpoint {path} does not fit this model: {detail}")
