"""Camera images as one flat feature vector for the MLP floor.

Each camera goes through the project's GroupNorm ResNet (models/resnet.py, sized by
`model.observation.resnet_width` / `resnet_stage_sizes`, one per camera or one shared
with `observation.shared_image_encoder`), as AtomSkill's observation encoder does. The
final feature map is flattened, not pooled: an MLP has no attention over spatial tokens,
and global pooling would discard where things are, which is what a manipulation policy
reads from the image (at 64 px and stride 32 the map is 2x2, so the vector stays small).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.obs_encoders import camera_image, scale_images
from atomskill_jax.models.resnet import ResNet


def feature_map_size(image_size: Sequence[int], num_stages: int) -> tuple[int, int]:
    """(h, w) of the ResNet's last map: SAME padding halves (rounding up) at the stem
    conv, the max-pool and the first block of every stage after the first."""
    halvings = 2 + max(int(num_stages) - 1, 0)
    h, w = (int(s) for s in image_size)
    for _ in range(halvings):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


class FlatImageFeatures(nnx.Module):
    """{image_<camera>: uint8 [B, H, W, 3]} -> float [B, cameras * h * w * C]."""

    def __init__(self, config, *, rngs: nnx.Rngs, dtype):
        obs = config.observation
        self.cameras = tuple(config.cameras)
        self.shared = bool(obs.shared_image_encoder)
        stages = tuple(int(s) for s in obs.resnet_stage_sizes)

        def backbone():
            return ResNet(width=int(obs.resnet_width), stage_sizes=stages, rngs=rngs,
                          dtype=dtype)

        count = 1 if self.shared else len(self.cameras)
        self.backbones = nnx.List([backbone() for _ in range(count)])
        self.image_size = tuple(int(s) for s in config.image_size)
        self.map_size = feature_map_size(self.image_size, len(stages))
        h, w = self.map_size
        self.out_features = len(self.cameras) * h * w * self.backbones[0].out_features
        self.dtype = dtype

    def __call__(self, observation: dict):
        parts = []
        for i, cam in enumerate(self.cameras):
            images = camera_image(observation, cam)
            net = self.backbones[0 if self.shared else i]
            fmap = net(scale_images(images, self.dtype))
            if tuple(fmap.shape[1:3]) != self.map_size:  # the MLP's input width is fixed
                raise ValueError(f"image_{cam}: images of shape {tuple(images.shape)} give "
                                 f"a {tuple(fmap.shape[1:3])} feature map; the MLP was built "
                                 f"for model.image_size {self.image_size} "
                                 f"({self.map_size}): resize them to it")
            parts.append(fmap.reshape(fmap.shape[0], -1))
        return jnp.concatenate(parts, axis=-1)
