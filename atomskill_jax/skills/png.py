"""Minimal PNG encoder (zlib + struct) for sending frames to a VLM as data URLs.

Standard library only, so annotation needs no imaging dependency.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a uint8 image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _COLOR_TYPE or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"encode_png: expected [H, W(, 1|3|4)] image, got shape {img.shape}")
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and img.size and img.max() <= 1.0:
            img = img * 255.0  # [0, 1] floats, as some pipelines store frames
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    height, width, channels = img.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    # Filter type 0 (none) before every row.
    raw = np.concatenate([np.zeros((height, 1), np.uint8),
                          np.ascontiguousarray(img).reshape(height, width * channels)], axis=1)
    return (_SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))


def png_data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour downscale so the longer side is at most `max_side`."""
    img = np.asarray(image)
    step = int(np.ceil(max(img.shape[0], img.shape[1]) / max_side)) if max_side > 0 else 1
    return img[::step, ::step] if step > 1 else img
