"""Rollout videos: which episodes are rendered (`eval.video` per task), and their TensorBoard summaries.

The environments write each rendered episode as an mp4 (`llmdpd.envs.rendering.FrameRecorder`); this module
reads them back and logs each as an animated GIF image summary, the format TensorBoard's Images tab plays.
`SummaryWriter.add_video` would make the same summary but needs `moviepy.editor`, which moviepy 2 removed
(it then logs nothing, silently), so the GIF is encoded here with Pillow.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from llmdpd.envs.rendering import FPS, read_mp4, rendering_error
from llmdpd.evaluation.environments import video_file_name
from llmdpd.evaluation.plan import EvalEpisode

_warned = False


def plan_videos(episodes: Sequence[EvalEpisode], per_task: int, directory: str | Path) -> dict[EvalEpisode, str]:
    """The mp4 path under `directory` of each episode to render: the first `per_task` of every task.

    Empty when `per_task` is 0, or when this process cannot render (then a warning line says why, once).
    """
    if per_task <= 0 or not episodes:
        return {}
    reason = rendering_error()
    if reason is not None:
        _warn_once(f"{reason}; evaluating without videos")
        return {}
    counts: dict[str, int] = {}
    chosen = {}
    for episode in episodes:
        if counts.get(episode.task, 0) < per_task:
            counts[episode.task] = counts.get(episode.task, 0) + 1
            chosen[episode] = str(Path(directory) / video_file_name(episode))
    return chosen


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        print(f"llmdpd: warning: {message}", file=sys.stderr, flush=True)
        _warned = True


def gif_bytes(frames: np.ndarray, fps: int = FPS) -> bytes:
    """uint8 frames [T, H, W, 3] as an animated GIF that loops."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def video_summary(tag: str, frames: np.ndarray, fps: int = FPS):
    """A TensorBoard `Summary` holding `frames` as an animated GIF image (what `add_video` writes)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def video_tag(episode: EvalEpisode) -> str:
    return f"video/{episode.split}/{episode.task}/episode{episode.episode}"


def log_videos(writer, videos: Mapping[EvalEpisode, str], step: int, fps: int = FPS) -> int:
    """Log every written mp4 of `videos` to `writer` (a torch `SummaryWriter`) at `step`; returns how many."""
    logged = 0
    for episode, path in videos.items():
        if not Path(path).is_file():
            continue
        # add_video's own route into the event file (the writer's file writer takes any Summary).
        writer._get_file_writer().add_summary(video_summary(video_tag(episode), read_mp4(path), fps), step)
        logged += 1
    writer.flush()
    return logged
