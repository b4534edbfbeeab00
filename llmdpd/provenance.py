"""What produced a run: the code's commit, the library versions, the threads and the device of each invocation.

Two invocations of the same config.yaml give the same numbers only on the same code, libraries and arithmetic
(the number of intra-op threads changes the order of floating-point sums, and a different order grows into
different training over thousands of steps). `provenance.json` in a run directory lists one entry per invocation
that trained or continued it; `llmdpd comparison` copies it beside the committed results, and adds the
evaluation's own entry for the evaluations of trained runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from llmdpd.files import write_text_atomic

PROVENANCE = "provenance.json"
LIBRARIES = ("torch", "lightning", "torchrl", "tensordict", "metaworld", "minari", "gymnasium", "mujoco", "numpy",
             "transformers")
# The code whose state a run depends on; a change elsewhere (documents, results) does not make it dirty.
CODE_PATHS = ("llmdpd", "experiments", "pyproject.toml")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(command: str) -> dict[str, Any]:
    """This process's entry: `command`, the time (UTC), the commit of the checkout llmdpd runs from (None outside
    git) and whether its code differs from it, Python's and each library's version, torch's intra-op threads,
    OMP_NUM_THREADS and the device."""
    import torch  # here, so that the command line's start does not wait for it

    dirty = _git("status", "--porcelain", "--", *CODE_PATHS)
    return {
        "command": command,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "code_changed": None if dirty is None else bool(dirty),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
    }


def read_provenance(directory: Path) -> list[dict[str, Any]]:
    """The entries of `directory`'s provenance.json (none when it has none or it is unreadable)."""
    try:
        entries = json.loads((Path(directory) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def record_provenance(directory: Path, command: str | None = None, entries: list[dict[str, Any]] | None = None) -> None:
    """Append this process's entry (`provenance(command)`, by default for `llmdpd` and its arguments) to the
    entries already in `directory` (or to `entries`), written atomically."""
    command = command or "llmdpd " + " ".join(sys.argv[1:])
    previous = read_provenance(directory) if entries is None else entries
    write_text_atomic(Path(directory) / PROVENANCE, json.dumps([*previous, provenance(command)], indent=2) + "\n")
