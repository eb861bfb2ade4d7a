"""Frame-level transforms: decode the step's camera images, resize, augment.

Augmentation uses only stateless random ops seeded per example (the pipeline passes
(seed, example counter)), so the result is a function of the seed and position: the
same after an iterator restore, and tf.data iterator checkpoints hold no RNG state.
Images stay uint8 (4x less host-to-device traffic than float32); models scale them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from atomskill_jax.data.tf_setup import tf


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [H, W, 3] (bilinear, antialiased; a no-op at equal size)."""
    size = [int(size[0]), int(size[1])]
    shape = tf.shape(image)
    if image.shape[0] == size[0] and image.shape[1] == size[1]:
        return image

    def resize():
        out = tf.image.resize(tf.cast(image, tf.float32), size, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], size[0]), tf.equal(shape[1], size[1]))
    return tf.ensure_shape(tf.cond(same, lambda: image, resize), [*size, 3])


def augment_image(image: tf.Tensor, seed: tf.Tensor, size: Sequence[int], *,
                  crop_scale=(0.8, 1.0), crop_ratio=(0.9, 1.1), brightness=0.1,
                  contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=0.02) -> tf.Tensor:
    """Random resized crop then colour jitter; uint8 [h, w, 3] -> uint8 [H, W, 3].

    `seed`: int32/int64 [2], as for tf.random.stateless_* ops.
    """
    size = [int(size[0]), int(size[1])]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    scale = tf.random.stateless_uniform([], seeds[0], *crop_scale)
    log_ratio = tf.random.stateless_uniform(
        [], seeds[1], tf.math.log(float(crop_ratio[0])), tf.math.log(float(crop_ratio[1])))
    ratio = tf.exp(log_ratio)  # width / height, in units of the image's own aspect
    crop_h = tf.minimum(tf.sqrt(scale / ratio), 1.0)
    crop_w = tf.minimum(tf.sqrt(scale * ratio), 1.0)
    offset = tf.random.stateless_uniform([2], seeds[2]) * tf.stack([1 - crop_h, 1 - crop_w])
    box = tf.stack([offset[0], offset[1], offset[0] + crop_h, offset[1] + crop_w])
    pixels = tf.cast(image, tf.float32)[None] / 255.0
    out = tf.image.crop_and_resize(pixels, box[None], [0], size)[0]
    out = tf.image.stateless_random_brightness(out, brightness, seeds[3])
    out = tf.image.stateless_random_contrast(out, contrast[0], contrast[1], seeds[4])
    sat_seed, hue_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[5], num=2))
    out = tf.image.stateless_random_saturation(tf.clip_by_value(out, 0, 1), saturation[0],
                                               saturation[1], sat_seed)
    out = tf.image.stateless_random_hue(out, hue, hue_seed)
    return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 1.0) * 255.0), tf.uint8)


def process_frame(example: dict, *, cameras: Sequence[str], size: Sequence[int],
                  augment: bool = False, seed=None,
                  augment_kwargs: Mapping | None = None) -> dict:
    """Decode (if encoded), resize and optionally augment each camera of one example."""
    if not cameras:
        return example
    observation = dict(example["observation"])
    for i, cam in enumerate(cameras):
        key = f"image_{cam}"
        image = observation[key]
        if image.dtype == tf.string:
            image = decode_image(image)
        if augment:
            cam_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), i)
            image = augment_image(image, cam_seed, size, **dict(augment_kwargs or {}))
        else:
            image = resize_image(image, size)
        observation[key] = image
    return {**example, "observation": observation}
