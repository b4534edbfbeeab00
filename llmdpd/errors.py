"""The errors a user can cause or fix, each printed by the command line as one line (no stack trace).

`ConfigError` (a config or command line that cannot be used), `DatasetError` (a dataset that is missing,
unreadable, non-finite or cannot be written), `CheckpointError` (a checkpoint that cannot be written, read
or used here) exit with status 2; `TrainingError` (training cannot go on, e.g. a non-finite loss) with 1.
"""

from __future__ import annotations

import errno


def no_space(err: BaseException) -> bool:
    """Whether `err` reports a full disk or an exhausted quota (by errno, or in the text h5py/torch give)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says what happened and what was kept."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types the command line reports in one line with exit status 2."""
    from llmdpd.checkpoints import CheckpointError
    from llmdpd.config.load import ConfigError
    from llmdpd.data.minari_store import DatasetError

    return ConfigError, DatasetError, CheckpointError
