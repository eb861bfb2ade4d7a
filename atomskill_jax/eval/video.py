"""Rollout videos: mp4 through imageio-ffmpeg when installed, else GIF, else PNG frames."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def save_video(frames: Sequence[np.ndarray], path_stem: str, fps: int = 30) -> str:
    """Writes `frames` (uint8 [H, W, 3]) next to `path_stem`; returns the path written."""
    if not len(frames):
        return ""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    frames = [np.asarray(f, np.uint8) for f in frames]
    try:
        import imageio.v2 as imageio
    except ImportError:
        imageio = None
    if imageio is not None:
        try:
            import imageio_ffmpeg  # noqa: F401 - only checks that mp4 can be written

            path = path_stem + ".mp4"
            # macro_block_size=1: keep odd-sized renders as they are (no resize warning).
            imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
            return path
        except ImportError:
            path = path_stem + ".gif"
            imageio.mimwrite(path, frames, duration=1000 / fps, loop=0)
            return path
    from atomskill_jax.skills.png import encode_png

    os.makedirs(path_stem, exist_ok=True)
    for i, frame in enumerate(frames):
        with open(os.path.join(path_stem, f"{i:04d}.png"), "wb") as f:
            f.write(encode_png(frame))
    return path_stem
