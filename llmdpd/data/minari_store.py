"""Writing and reading Minari datasets under a data directory, safely.

A dataset is written in a scratch folder beside its final place and renamed into place only once whole,
so an interrupted write never leaves a folder that loads as if it were complete. Reads turn Minari's and
h5py's exceptions into `DatasetError`s that name the dataset and say what to do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import llmdpd
from llmdpd.errors import no_space

OBS_SPACE_DIM = 39
ACTION_DIM = 4


class DatasetError(RuntimeError):
    """A dataset that is missing, unreadable or not what the experiment expects."""


@contextlib.contextmanager
def minari_root(root: Path) -> Iterator[None]:
    """Point Minari at `root` (it reads MINARI_DATASETS_PATH at each call) for the duration."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    # Absolute: Minari joins this path with others and a relative one ends up nested inside itself.
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def dataset_dir(root: Path, dataset_id: str) -> Path:
    return Path(root) / dataset_id


def write_episodes(root: Path, dataset_id: str, episodes: list, metadata: dict[str, Any]) -> Path:
    """Write `episodes` (llmdpd.data.collect.Episode) as Minari dataset `dataset_id` under `root`, atomically."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    root = Path(root).resolve()
    final = dataset_dir(root, dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        buffers = []
        for i, ep in enumerate(episodes):
            steps = len(ep.actions)
            buffers.append(
                EpisodeBuffer(
                    id=i,
                    observations=ep.observations,
                    actions=ep.actions,
                    rewards=ep.rewards,
                    terminations=np.zeros(steps, dtype=bool),
                    truncations=np.arange(1, steps + 1) == steps,
                    infos={"success": ep.success},
                )
            )
        with minari_root(scratch), warnings.catch_warnings():
            # Minari nags about optional fields (env spec, e-mail, permalink) that these datasets leave empty.
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            dataset = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_SPACE_DIM,), np.float32),
                action_space=gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32),
                algorithm_name=metadata.get("algorithm_name", "metaworld-scripted-expert+gaussian-noise"),
                author="llmdpd",
                description=metadata.get("summary"),
                data_format="hdf5",
                requirements=[f"metaworld=={_version('metaworld')}", f"llmdpd=={llmdpd.__version__}"],
            )
            dataset.storage.update_metadata({"llmdpd": metadata})
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch / dataset_id, final)
    except Exception as err:
        if no_space(err):
            raise DatasetError(
                f"could not write dataset '{dataset_id}' to {final}: no space left on device "
                "(nothing was written in its place; free space and run again)"
            ) from None
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def read_metadata(root: Path, dataset_id: str) -> dict[str, Any] | None:
    """The llmdpd metadata of a dataset, or None when the dataset is absent or unreadable."""
    import json

    path = dataset_dir(root, dataset_id) / "data" / "metadata.json"
    try:
        return json.loads(path.read_text()).get("llmdpd")
    except (OSError, ValueError):
        return None


def load_dataset(root: Path, dataset_id: str, make_command: str | None = None):
    """`minari.load_dataset(dataset_id)` from `root`, with clear errors for missing or corrupt files."""
    import minari

    path = dataset_dir(root, dataset_id)
    if not (path / "data" / "metadata.json").is_file():
        hint = f" Generate it with: {make_command}" if make_command else ""
        raise DatasetError(f"Dataset '{dataset_id}' not found under {Path(root).resolve()}.{hint}")
    try:
        with minari_root(Path(root)):
            dataset = minari.load_dataset(dataset_id)
            dataset.total_episodes  # noqa: B018  (touches the hdf5 file)
        return dataset
    except Exception as err:  # h5py/json/minari raise many types; all mean the same to the user
        raise DatasetError(
            f"Dataset '{dataset_id}' at {path} is corrupt or truncated ({type(err).__name__}: {err}). "
            f"Delete it or regenerate with force=true."
        ) from None


def ensure_downloaded(root: Path, dataset_id: str) -> str:
    """Make an external Minari dataset available under `root`: "present" when it is there, else "downloaded"
    from Minari's remote (`minari.download_dataset`); a `DatasetError` naming it when that fails."""
    import minari

    if (dataset_dir(root, dataset_id) / "data" / "metadata.json").is_file():
        return "present"
    try:
        with minari_root(Path(root)):
            minari.download_dataset(dataset_id)
    except Exception as err:  # no network, unknown id, remote errors: all mean "not here and not fetchable"
        raise DatasetError(
            f"Dataset '{dataset_id}' is not under {Path(root).resolve()} and could not be downloaded "
            f"({type(err).__name__}: {err}); download it where there is network "
            f"(MINARI_DATASETS_PATH={Path(root).resolve()} minari download {dataset_id}) and copy it here"
        ) from None
    return "downloaded"


def read_episodes(dataset) -> list[dict[str, np.ndarray]]:
    """All episodes of a loaded Minari dataset as numpy dicts, with corrupt-file errors made clear."""
    try:
        episodes = []
        for ep in dataset.iterate_episodes():
            episodes.append(
                {
                    "observations": np.asarray(ep.observations, dtype=np.float32),
                    "actions": np.asarray(ep.actions, dtype=np.float32),
                    "rewards": np.asarray(ep.rewards, dtype=np.float32),
                    "terminations": np.asarray(ep.terminations, dtype=bool),
                    "truncations": np.asarray(ep.truncations, dtype=bool),
                }
            )
    except Exception as err:
        raise DatasetError(
            f"Dataset '{dataset.spec.dataset_id}' could not be read ({type(err).__name__}: {err}); "
            "the file is corrupt or truncated. Delete it or regenerate with force=true."
        ) from None
    check_finite(dataset.spec.dataset_id, episodes)
    return episodes


def check_finite(dataset_id: str, episodes: list[dict[str, np.ndarray]]) -> None:
    """A `DatasetError` naming the dataset, episode, field and step of the first NaN or infinite value."""
    for i, episode in enumerate(episodes):
        for field in ("observations", "actions", "rewards"):
            values = episode[field]
            finite = np.isfinite(values)
            if finite.all():
                continue
            step = int(np.argwhere(~finite.reshape(len(values), -1).all(axis=1))[0, 0])
            raise DatasetError(
                f"Dataset '{dataset_id}' episode {i} holds a non-finite value ({values[step][~finite[step]].flat[0]}) "
                f"in its {field} at step {step}; regenerate it (force=true) or remove the episode"
            )
