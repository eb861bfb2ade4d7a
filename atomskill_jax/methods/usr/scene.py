"""Scene tokens for USR, one encoder kind per `model.scene_encoder`:

  "state"   MetaWorld-style state vectors: each part (hand, gripper, object poses of the
            current and previous frame, goal; models/state_tokens.py) is one token,
            proprio one more (`model.use_proprio`)
  "resnet"  a GroupNorm ResNet trained from scratch per camera; each cell of the last
            feature map is one token
  "clip"    frozen CLIP ViT patch tokens per camera. The CLIP module is passed in at
            call time (it lives outside the trained stages, see model.py), so no
            parameter is shared between two places of the module tree.

Images arrive uint8 [B, H, W, 3]; states normalised float [B, S].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.methods.usr.config import SCENE_ENCODERS
from atomskill_jax.models.layers import dense, sinusoidal_2d
from atomskill_jax.models.resnet import ResNet


def check_kind(m) -> str:
    kind = str(m.scene_encoder)
    if kind not in SCENE_ENCODERS:
        raise ValueError(f"model.scene_encoder must be one of {SCENE_ENCODERS}, got {kind!r}")
    if kind in ("resnet", "clip") and not tuple(m.cameras):
        raise ValueError(f"model.scene_encoder={kind!r} reads images: set data.cameras "
                         "(model.cameras follows it)")
    if kind == "clip" and not str(m.clip_dir):
        raise ValueError("model.scene_encoder='clip' needs model.clip_dir: a local Hugging Face "
                         "CLIP directory (config.json + model.safetensors)")
    return kind


class SceneEncoder(nnx.Module):
    """observation dict -> scene tokens [B, N, out_features]."""

    def __init__(self, m, *, rngs: nnx.Rngs, clip_hidden: int = 0, clip_patches: int = 0):
        self.kind = check_kind(m)
        self.cameras = tuple(m.cameras)
        self.use_proprio = bool(m.use_proprio)
        if self.kind == "state":
            from atomskill_jax.models.state_tokens import StateTokenizer, parts_for

            if int(m.state_dim) <= 0:
                raise ValueError("model.scene_encoder='state' needs state observations "
                                 "(data.use_state=True)")
            self.tokenizer = StateTokenizer(
                parts_for(int(m.state_dim)), int(m.dim), rngs=rngs,
                proprio_dim=int(m.proprio_dim) if self.use_proprio else 0)
            self.out_features = int(m.dim)
            self.num_tokens = len(parts_for(int(m.state_dim))) + int(self.use_proprio)
        elif self.kind == "resnet":
            r = m.resnet
            self.nets = nnx.List([ResNet(width=int(r.width), stage_sizes=tuple(r.stage_sizes),
                                         rngs=rngs) for _ in self.cameras])
            self.proj = dense(self.nets[0].out_features, int(m.dim), rngs=rngs)
            # The stem and its pool halve twice, every later stage once more.
            stride = 4 * 2 ** (len(tuple(r.stage_sizes)) - 1)
            h, w = (-(-int(s) // stride) for s in tuple(m.image_size))
            self.grid = (h, w)
            self.out_features = int(m.dim)
            self.num_tokens = h * w * len(self.cameras)
        else:
            self.out_features = int(clip_hidden)
            self.num_tokens = int(clip_patches) * len(self.cameras)

    def __call__(self, observation, *, clip=None):
        if self.kind == "state":
            proprio = observation["proprio"] if self.use_proprio else None
            return self.tokenizer(jnp.asarray(observation["state"], jnp.float32), proprio)
        tokens = []
        for i, cam in enumerate(self.cameras):
            images = observation[f"image_{cam}"]
            if self.kind == "resnet":
                fmap = self.nets[i](jnp.asarray(images, jnp.float32) / 127.5 - 1.0)
                b, h, w, c = fmap.shape
                # 2D positions inside the frame; the fusion adds token positions on top.
                tokens.append(self.proj(fmap.reshape(b, h * w, c))
                              + sinusoidal_2d(h, w, self.out_features)[None])
            else:
                from atomskill_jax.models.clip import preprocess_images

                if clip is None:
                    raise ValueError("scene_encoder='clip': pass the CLIP module")
                pixels = preprocess_images(images, clip.vision.cfg.image_size)
                tokens.append(jax.lax.stop_gradient(clip.vision(pixels).patch_tokens))
        return jnp.concatenate(tokens, axis=1)


def clip_sizes(clip) -> tuple[int, int]:
    """(hidden width, patches per image) of a loaded CLIP vision tower."""
    if clip is None:
        return 0, 0
    return int(clip.vision.cfg.hidden_size), int(clip.vision.num_patches)
