"""Observation encoders: every input becomes tokens of width d_model.

- cameras: ResNet-18/GroupNorm (per camera, or one shared when
  `observation.shared_image_encoder`) -> 1x1 projection -> one token per cell of the
  final feature map (7x7 at 224px), plus fixed 2D sinusoidal positions and a learned
  per-camera embedding;
- proprio and (optional) state: an MLP each -> one token each;
- language embedding (sentence encoder output, [E]): a linear projection -> one token;
- or (`observation.joint_low_dim_hidden` non-empty) proprio, state and the language
  embedding concatenated through one deep LayerNorm MLP -> one token in place of the
  proprio and state tokens. Separate tokens meet only through attention; on state
  observations the policy must combine object and hand positions per task precisely,
  which an MLP over the joint vector does well (on rlbench6 a plain MLP on these
  inputs beats the token-per-input encoder).

Images arrive as the pipeline leaves them: uint8 [B, H, W, 3] in 0..255 (float images
are taken to be in 0..1 already); they are standardised with ImageNet statistics.
Token order: cameras (config order), proprio, state (or the joint token), language.
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import (FSDP, MLP, MLPStack, compute_dtype, dense, dropout,
                                         sharded_param, sinusoidal_2d)
from atomskill_jax.models.resnet import ResNet

# numpy, not jnp: a jnp constant made while an importer is tracing leaks a tracer.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def scale_images(images: jax.Array, dtype) -> jax.Array:
    images = jnp.asarray(images)
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return ((x - _MEAN) / _STD).astype(dtype)


def camera_image(observation: dict, camera: str):
    """observation["image_<camera>"], or a KeyError naming the camera and what is there."""
    key = f"image_{camera}"
    if key not in observation:
        raise KeyError(f"observation has no {key!r} but model.cameras lists {camera!r}; "
                       f"present: {sorted(observation)}")
    return observation[key]


class ImageTokenizer(nnx.Module):
    """One ResNet + projection: images [B, H, W, 3] -> tokens [B, h*w, d]."""

    def __init__(self, config, *, rngs: nnx.Rngs, dtype):
        obs = config.observation
        self.backbone = ResNet(width=obs.resnet_width, stage_sizes=tuple(obs.resnet_stage_sizes),
                               rngs=rngs, dtype=dtype)
        self.proj = dense(self.backbone.out_features, config.d_model, rngs=rngs, dtype=dtype)
        self.dtype = dtype

    def __call__(self, images):
        fmap = self.backbone(scale_images(images, self.dtype))
        b, h, w, _ = fmap.shape
        tokens = self.proj(fmap).reshape(b, h * w, -1)
        return tokens + sinusoidal_2d(h, w, tokens.shape[-1]).astype(tokens.dtype)


class ObservationEncoder(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        dtype = compute_dtype(config.dtype)
        d = config.d_model
        obs = config.observation
        self.cameras = tuple(config.cameras)
        self.shared_image_encoder = bool(obs.shared_image_encoder)
        if not self.cameras:
            self.image_tokenizers = nnx.List([])
        elif self.shared_image_encoder:
            self.image_tokenizers = nnx.List([ImageTokenizer(config, rngs=rngs, dtype=dtype)])
        else:
            self.image_tokenizers = nnx.List(
                [ImageTokenizer(config, rngs=rngs, dtype=dtype) for _ in self.cameras])
        self.camera_embed = sharded_param(
            0.02 * jax.random.normal(rngs.params(), (max(len(self.cameras), 1), d)), (None, FSDP))
        self.use_state = int(config.state_dim) > 0
        joint_hidden = tuple(int(h) for h in obs.get("joint_low_dim_hidden", ()))
        self.joint = bool(joint_hidden)
        if self.joint:  # one token for proprio + state + language, no per-input tokens
            joint_in = int(config.proprio_dim) + int(config.state_dim) + int(config.language_dim)
            self.joint_mlp = MLPStack(joint_in, joint_hidden, d, rngs=rngs, dtype=dtype)
            self.proprio_mlp = self.state_mlp = None
        else:
            self.joint_mlp = None
            self.proprio_mlp = MLP(config.proprio_dim, obs.low_dim_hidden, d, rngs=rngs,
                                   dtype=dtype)
            self.state_mlp = (MLP(config.state_dim, obs.low_dim_hidden, d, rngs=rngs,
                                  dtype=dtype) if self.use_state else None)
        self.language_proj = dense(config.language_dim, d, rngs=rngs, dtype=dtype)
        # Learned type embeddings tell proprio, state and language tokens apart.
        self.type_embed = sharded_param(
            0.02 * jax.random.normal(rngs.params(), (3, d)), (None, FSDP))
        self.dropout_rate = float(config.dropout)
        self.dtype = dtype

    def __call__(self, observation: dict, language_embedding, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """Tokens [B, T_obs, d] in the compute dtype."""
        tokens = []
        for i, cam in enumerate(self.cameras):
            tokenizer = self.image_tokenizers[0 if self.shared_image_encoder else i]
            cam_tokens = tokenizer(camera_image(observation, cam))
            tokens.append(cam_tokens + self.camera_embed[...][i].astype(self.dtype))
        type_embed = self.type_embed[...].astype(self.dtype)
        proprio = jnp.asarray(observation["proprio"], self.dtype)
        low_dim = [proprio]
        if self.use_state:
            if "state" not in observation:
                raise KeyError("model.state_dim > 0 but the observation has no 'state'")
            low_dim.append(jnp.asarray(observation["state"], self.dtype))
        language = jnp.asarray(language_embedding, self.dtype)
        if self.joint:
            joint = self.joint_mlp(jnp.concatenate(low_dim + [language], axis=-1))
            tokens.append((joint + type_embed[1])[:, None])
        else:
            tokens.append((self.proprio_mlp(proprio) + type_embed[0])[:, None])
            if self.use_state:
                tokens.append((self.state_mlp(low_dim[1]) + type_embed[1])[:, None])
        tokens.append((self.language_proj(language) + type_embed[2])[:, None])
        out = jnp.concatenate([t.astype(self.dtype) for t in tokens], axis=1)
        return dropout(out, self.dropout_rate, train=train, rngs=rngs)
