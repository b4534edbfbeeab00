"""Rollout videos: rendered off-screen, written as mp4 and logged as GIFs that TensorBoard's own reader gets
back; a machine without an OpenGL backend says so once and evaluates without them."""

from __future__ import annotations

import glob
import io

import lightning as L
import numpy as np
import pytest
import torch

from llmdpd.config.schema import DataConfig, EvalConfig
from llmdpd.envs.rendering import read_mp4, rendering_error
from llmdpd.evaluation import videos as videos_module
from llmdpd.evaluation.callback import EvaluationCallback
from llmdpd.evaluation.environments import EpisodeEnvironments
from llmdpd.evaluation.plan import EvalEpisode
from llmdpd.evaluation.rollout import evaluate_episodes
from tests.tiny_lightning import TinyModule
from llmdpd.evaluation.videos import log_videos, plan_videos, video_tag

needs_gl = pytest.mark.skipif(rendering_error() is not None, reason=str(rendering_error()))
SIZE = 48
STEPS = 4


def _gif_frames(encoded: bytes) -> list[np.ndarray]:
    from PIL import Image, ImageSequence

    return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(Image.open(io.BytesIO(encoded)))]


def _images(events_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    (events,) = glob.glob(f"{events_dir}/events.out.tfevents.*")
    accumulator = EventAccumulator(events, size_guidance={IMAGES: 0})
    accumulator.Reload()
    return accumulator


@needs_gl
def test_one_rendered_episode_reaches_mp4_and_tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    episodes = [EvalEpisode("reach-v3", "seen", 45, 0), EvalEpisode("reach-v3", "seen", 46, 1)]
    videos = plan_videos(episodes, 1, tmp_path / "videos")
    assert list(videos) == [episodes[0]]  # the first episode of the task only
    environments = EpisodeEnvironments(video_paths=videos, video_size=SIZE)
    plain = evaluate_episodes(episodes, lambda obs, live: np.zeros((len(live), 4)), STEPS)
    recorded = evaluate_episodes(episodes, lambda obs, live: np.zeros((len(live), 4)), STEPS, environments=environments)
    assert recorded == plain  # rendering changes nothing in the rollout
    frames = read_mp4(videos[episodes[0]])
    assert frames.shape == (STEPS + 1, SIZE, SIZE, 3) and frames.dtype == np.uint8  # the reset and every step
    assert frames.std() > 10  # a scene, not a blank frame
    assert len(list((tmp_path / "videos").iterdir())) == 1

    with SummaryWriter(str(tmp_path / "tb")) as writer:
        assert log_videos(writer, videos, step=7) == 1
    accumulator = _images(str(tmp_path / "tb"))
    (image,) = accumulator.Images(video_tag(episodes[0]))
    assert image.step == 7 and (image.width, image.height) == (SIZE, SIZE)
    gif = _gif_frames(image.encoded_image_string)
    assert len(gif) == STEPS + 1 and gif[0].shape == (SIZE, SIZE, 3)
    # The GIF shows what the mp4 shows (both lossy: compare coarsely).
    assert np.abs(gif[-1].astype(float) - frames[-1].astype(float)).mean() < 20


@needs_gl
def test_training_with_eval_video_leaves_mp4s_and_tensorboard_videos(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    cfg = EvalConfig(episodes_per_task=2, max_episode_steps=STEPS, video=1, video_size=SIZE)
    callback = EvaluationCallback(
        lambda module, episodes: (lambda obs, live: np.zeros((len(live), 4))), cfg, ["reach-v3"], ["drawer-open-v3"],
        out_path=tmp_path / "run" / "eval.json", data_cfg=DataConfig(),
    )
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=TensorBoardLogger(tmp_path / "run", name="tb"), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(TinyModule(samples=8))
    mp4s = sorted(p.name for p in (tmp_path / "run" / "videos" / "step2").iterdir())
    assert mp4s == ["drawer-open-v3_unseen_ep0.mp4", "reach-v3_seen_ep0.mp4"]
    accumulator = _images(glob.glob(str(tmp_path / "run" / "tb" / "*"))[0])
    tags = ["video/seen/reach-v3/episode0", "video/unseen/drawer-open-v3/episode0"]
    assert sorted(accumulator.Tags()["images"]) == tags
    assert len(_gif_frames(accumulator.Images("video/seen/reach-v3/episode0")[0].encoded_image_string)) == STEPS + 1


def test_without_an_opengl_backend_the_run_says_so_once_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(videos_module, "rendering_error", lambda: "no off-screen OpenGL backend for MuJoCo")
    monkeypatch.setattr(videos_module, "_warned", False)
    episodes = [EvalEpisode("reach-v3", "seen", 45, 0)]
    assert plan_videos(episodes, 1, tmp_path) == {} and plan_videos(episodes, 1, tmp_path) == {}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llmdpd: warning: no off-screen OpenGL backend for MuJoCo; evaluating without videos"]
    assert plan_videos(episodes, 0, tmp_path) == {}
