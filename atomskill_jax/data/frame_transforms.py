"""Frame-level transforms: decode and resize each step's images; augment whole batches.

Decoding is per image (PNG/JPEG), resizing too (datasets may differ in native size).
Augmentation (random resized crop + colour jitter) runs once per batch on [B, H, W, 3]
with per-image random parameters: one op per batch instead of a dozen per image,
which on a few CPU cores is most of the cost. It draws only stateless randomness
from (seed, batch position), so results are a function of the seed and position: the
same after an iterator restore, and tf.data iterator checkpoints hold no RNG state.
Images stay uint8 (4x less host-to-device traffic than float32); models scale them.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from atomskill_jax.data.tf_setup import tf

# RGB <-> YIQ: hue jitter is a rotation of the (I, Q) chroma plane, one 3x3 matrix
# per image, instead of TensorFlow's per-pixel HSV round trip.
_RGB_TO_YIQ = [[0.299, 0.596, 0.211], [0.587, -0.274, -0.523], [0.114, -0.322, 0.312]]


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [H, W, 3] (bilinear, antialiased; a no-op at equal size)."""
    size = [int(size[0]), int(size[1])]
    if image.shape[0] == size[0] and image.shape[1] == size[1]:
        return image

    def resize():
        out = tf.image.resize(tf.cast(image, tf.float32), size, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], size[0]), tf.equal(shape[1], size[1]))
    return tf.ensure_shape(tf.cond(same, lambda: image, resize), [*size, 3])


def process_frame(example: dict, *, cameras: Sequence[str], size: Sequence[int]) -> dict:
    """Decode (if still encoded) and resize each camera image of one example."""
    if not cameras:
        return example
    observation = dict(example["observation"])
    for cam in cameras:
        image = observation[f"image_{cam}"]
        if image.dtype == tf.string:
            image = decode_image(image)
        observation[f"image_{cam}"] = resize_image(image, size)
    return {**example, "observation": observation}


def augment_images(images: tf.Tensor, seed: tf.Tensor, *, crop_scale=(0.8, 1.0),
                   crop_ratio=(0.9, 1.1), brightness=0.1, contrast=(0.9, 1.1),
                   saturation=(0.9, 1.1), hue=0.02) -> tf.Tensor:
    """Random resized crop then colour jitter, each image its own draw.

    images: uint8 [B, H, W, 3] -> uint8 [B, H, W, 3]; seed: int [2] (stateless RNG).
    A jitter whose range is empty (0 or (1, 1)) is off.
    """
    images = tf.convert_to_tensor(images)
    batch = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    def uniform(i, lo, hi, shape=None):
        return tf.random.stateless_uniform(shape if shape is not None else [batch], seeds[i],
                                           float(lo), float(hi))

    scale = uniform(0, *crop_scale)
    ratio = tf.exp(uniform(1, math.log(crop_ratio[0]), math.log(crop_ratio[1])))
    crop_h = tf.minimum(tf.sqrt(scale / ratio), 1.0)
    crop_w = tf.minimum(tf.sqrt(scale * ratio), 1.0)
    top = uniform(2, 0, 1) * (1 - crop_h)
    left = uniform(3, 0, 1) * (1 - crop_w)
    boxes = tf.stack([top, left, top + crop_h, left + crop_w], axis=1)
    out = tf.image.crop_and_resize(images, boxes, tf.range(batch), size) / 255.0

    per_image = [batch, 1, 1, 1]
    if brightness:
        out = out + uniform(4, -brightness, brightness, per_image)
    if contrast[1] > contrast[0]:
        mean = tf.reduce_mean(out, axis=[1, 2], keepdims=True)
        out = (out - mean) * uniform(5, *contrast, per_image) + mean
    if saturation[1] > saturation[0]:
        gray = tf.image.rgb_to_grayscale(out)
        out = gray + (out - gray) * uniform(6, *saturation, per_image)
    if hue:
        to_yiq = tf.constant(_RGB_TO_YIQ)
        angle = uniform(7, -hue, hue) * 2.0 * math.pi
        cos, sin = tf.cos(angle), tf.sin(angle)
        zero, one = tf.zeros_like(angle), tf.ones_like(angle)
        rotate = tf.stack([tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1),
                           tf.stack([zero, sin, cos], -1)], -1)  # [B, 3, 3]: rotates (I, Q)
        matrix = tf.einsum("ij,bjk,kl->bil", to_yiq, rotate, tf.linalg.inv(to_yiq))
        out = tf.einsum("bhwc,bcd->bhwd", out, matrix)
    return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0), tf.uint8)


def augment_batch(batch: dict, seed: tf.Tensor, *, cameras: Sequence[str],
                  augment_kwargs: Mapping | None = None) -> dict:
    """`augment_images` on each camera of a batch (cameras get independent draws)."""
    observation = dict(batch["observation"])
    for i, cam in enumerate(cameras):
        cam_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i)
        observation[f"image_{cam}"] = augment_images(observation[f"image_{cam}"], cam_seed,
                                                     **dict(augment_kwargs or {}))
    return {**batch, "observation": observation}
