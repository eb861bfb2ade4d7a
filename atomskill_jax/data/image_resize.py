"""The training pipeline's image resize, in numpy, for processes without TensorFlow.

`frame_transforms.resize_image` (training) resizes uint8 frames with
`tf.image.resize(..., antialias=True)` (bilinear) and rounds. Evaluation workers render
with OSMesa/EGL and must not import TensorFlow (see envs/metaworld.py), yet a policy
must see frames scaled exactly as in training. This is the same arithmetic: TF's
scale-and-translate with a triangle kernel, widened by the size ratio when shrinking
(the antialiasing), sample positions at pixel centres, weights normalised per output
pixel, separable (rows, then columns), float32. Results equal TensorFlow's up to float
rounding (at most 1 level on a few pixels; tests/test_image_parity.py checks it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32: output pixel i = sum_j w[i, j] * input pixel j."""
    inv_scale = np.float32(in_size / out_size)
    # Shrinking widens the kernel to low-pass filter; enlarging only interpolates.
    kernel_scale = max(float(inv_scale), 1.0)
    centres = (np.arange(out_size, dtype=np.float32) + 0.5) * inv_scale - 0.5
    distance = np.abs(centres[:, None] - np.arange(in_size, dtype=np.float32)[None, :])
    w = np.maximum(0.0, 1.0 - distance / np.float32(kernel_scale)).astype(np.float32)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 1000 * np.finfo(np.float32).eps, w / np.where(total == 0, 1, total), 0)
    return w.astype(np.float32)


def resize_uint8(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 [h, w, C] -> uint8 [H, W, C], as the training pipeline resizes (a no-op copy
    at equal size)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"resize_uint8: expected a uint8 [h, w, C] image, got {image.dtype} "
                         f"{image.shape}")
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image.copy()
    rows = _weights(image.shape[0], height)
    cols = _weights(image.shape[1], width)
    out = np.einsum("ij,jwc->iwc", rows, image.astype(np.float32), optimize=True)
    out = np.einsum("kw,iwc->ikc", cols, out, optimize=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
