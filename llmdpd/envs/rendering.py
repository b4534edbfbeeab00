"""Off-screen MuJoCo rendering: which OpenGL backend, fast settings, and recording an episode's frames.

MuJoCo picks its OpenGL backend from `MUJOCO_GL` when it is first imported, and fails to import at all when
that backend's library is missing. `select_gl_backend` (run when `llmdpd.envs` is imported, before anything
imports mujoco) therefore only sets `MUJOCO_GL` / `PYOPENGL_PLATFORM` when the user has not, and only to a
backend whose library is present: EGL on hosts with an NVIDIA GPU, else OSMesa (CPU; Debian's `libosmesa6`),
else EGL (Mesa's software device). With none of them, MuJoCo still simulates; `rendering_error` says why
frames cannot be made.

Default rendering is slow on CPUs (a few frames/s at 224x224, mostly shadows and multisampling):
`fast_rendering` turns off multisampling, shadows and reflections (about 65 frames/s).
"""

from __future__ import annotations

import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

FPS = 20


def select_gl_backend() -> str | None:
    """Set MUJOCO_GL and PYOPENGL_PLATFORM to an available off-screen backend unless already set; returns it."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    gpu = os.path.exists("/dev/nvidiactl")
    egl = ctypes.util.find_library("EGL") is not None
    osmesa = ctypes.util.find_library("OSMesa") is not None
    backend = "egl" if gpu and egl else "osmesa" if osmesa else "egl" if egl else None
    if backend is not None:
        os.environ["MUJOCO_GL"] = backend
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


@functools.lru_cache(maxsize=None)
def rendering_error() -> str | None:
    """None when this process can render off-screen, else the reason (checked once, on a one-body model)."""
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
        with mujoco.Renderer(model, 8, 8) as renderer:
            renderer.update_scene(mujoco.MjData(model))
            renderer.render()
    except Exception as err:  # a missing library, no display, a failed context: all mean "no frames here"
        backend = os.environ.get("MUJOCO_GL") or "none found"
        return (
            f"no off-screen OpenGL backend for MuJoCo (MUJOCO_GL={backend}: {type(err).__name__}: {err}); "
            "install libosmesa6 (Debian/Ubuntu) or EGL"
        )
    return None


def fast_rendering(env: gym.Env) -> None:
    """Cheap off-screen frames for a Gymnasium MuJoCo env in rgb_array mode: no multisampling (must precede
    the first frame), shadows or reflections."""
    import mujoco

    base = env.unwrapped
    model = getattr(base, "model", None)
    renderer = getattr(base, "mujoco_renderer", None)
    if model is None or renderer is None:
        return
    model.vis.quality.offsamples = 0
    scene = renderer._get_viewer(render_mode="rgb_array").scn
    scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


class FrameRecorder(gym.Wrapper):
    """Keeps the rendered frame of every reset and step of one episode and writes them as an mp4 on `close`.

    The wrapped env must render `rgb_array` frames. `upside_down` rotates frames by 180 degrees (Meta-World's
    `corner*` cameras render that way). Writing happens in whichever process steps the env, so recording
    works the same in worker processes.
    """

    def __init__(self, env: gym.Env, path: str | os.PathLike, upside_down: bool = False, fps: int = FPS) -> None:
        super().__init__(env)
        self.path = Path(path)
        self.upside_down = upside_down
        self.fps = fps
        self.frames: list[np.ndarray] = []
        fast_rendering(env)

    def _record(self) -> None:
        frame = np.asarray(self.env.render())
        self.frames.append(np.ascontiguousarray(frame[::-1, ::-1]) if self.upside_down else frame)

    def reset(self, **kwargs: Any):
        out = self.env.reset(**kwargs)
        self.frames = []
        self._record()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._record()
        return out

    def close(self) -> None:
        if self.frames:
            write_mp4(self.path, self.frames, self.fps)
            self.frames = []
        super().close()


def write_mp4(path: str | os.PathLike, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """Write uint8 frames [H, W, 3] as an H.264 mp4 (imageio with the ffmpeg that imageio-ffmpeg bundles)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=1: frame sizes that are not multiples of 16 are written as they are, not resized.
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """The frames of an mp4 as uint8 [T, H, W, 3]."""
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return np.stack([np.asarray(frame) for frame in reader])
