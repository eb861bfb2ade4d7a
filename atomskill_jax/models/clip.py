"""CLIP image and text towers (Hugging Face `CLIPModel` layout) as Flax NNX modules.

USR reads CLIP ViT patch tokens and CLIP text features. The modules are sized from a
Hugging Face CLIP `config.json` (`openai/clip-vit-base-patch16` and alike) and filled
by `clip_loading.load_clip`, which names every missing, unexpected or mis-shaped
tensor. Only the inference path is implemented (no dropout, no position-embedding
interpolation: images must be `image_size` square, see `preprocess_images`).

Images are NHWC (the data pipeline's layout), not torch's NCHW. Sharding: CLIP is a
frozen feature extractor, but its 150M parameters (ViT-B/16 with the text tower,
~600 MB) would be the largest thing on every device of an FSDP mesh, so kernels and
embeddings carry fsdp metadata on their width axis like the trained models
(models/layers.py; metadata only: one device, and the values, are unchanged).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import EMBED_INIT, FSDP, sharded

# Matmuls at full float32 precision: TPUs/GPUs otherwise use bf16/tf32 passes and the
# features would no longer match the reference (nor each other across hosts).
_PRECISION = jax.lax.Precision.HIGHEST

# HF's ACT2FN names. "quick_gelu" (x * sigmoid(1.702 x)) is what OpenAI's CLIP was
# trained with; HF "gelu" is the exact erf form.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}

# OpenAI CLIP's pixel statistics (CLIPImageProcessor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPTowerConfig:
    """The fields of HF's CLIPTextConfig / CLIPVisionConfig used here (HF's defaults:
    ViT-B/32 vision and the 512-wide text tower)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # text only
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407
    # vision only
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3

    @classmethod
    def from_dict(cls, raw: dict[str, Any], defaults: dict[str, Any], where: str) -> CLIPTowerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{**defaults, **{k: v for k, v in raw.items() if k in fields}})
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{where}: hidden_act={cfg.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"{where}: hidden_size {cfg.hidden_size} is not divisible by "
                             f"num_attention_heads {cfg.num_attention_heads}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"{where}: image_size {cfg.image_size} is not a multiple of patch_size "
                             f"{cfg.patch_size}")
        return cfg


TEXT_DEFAULTS = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)


_KERNEL_INIT = nnx.initializers.lecun_normal()  # nnx.Linear's and nnx.Conv's default


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs, use_bias: bool = True,
            shard: str = "out") -> nnx.Linear:
    """`shard` 'out' | 'in': the kernel axis split along fsdp (as layers.dense)."""
    spec = (None, FSDP) if shard == "out" else (FSDP, None)
    return nnx.Linear(n_in, n_out, use_bias=use_bias, precision=_PRECISION, rngs=rngs,
                      kernel_init=sharded(_KERNEL_INIT, spec))


def _embed(n: int, d: int, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(n, d, rngs=rngs, embedding_init=sharded(EMBED_INIT, (None, FSDP)))


def _layer_norm(n: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2] as in torch, not E[x^2]-mean^2 (less exact).
    return nnx.LayerNorm(n, epsilon=eps, use_fast_variance=False, rngs=rngs)


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN: x + attn(LN1(x)), then x + fc2(act(fc1(LN2(x)))) (HF CLIPEncoderLayer)."""

    def __init__(self, cfg: CLIPTowerConfig, *, rngs: nnx.Rngs):
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.num_heads = cfg.num_attention_heads
        self.act = cfg.hidden_act
        self.layer_norm1 = _layer_norm(d, eps, rngs)
        self.q_proj, self.k_proj, self.v_proj = (_linear(d, d, rngs) for _ in range(3))
        self.out_proj = _linear(d, d, rngs, shard="in")
        self.layer_norm2 = _layer_norm(d, eps, rngs)
        self.fc1 = _linear(d, cfg.intermediate_size, rngs)
        self.fc2 = _linear(cfg.intermediate_size, d, rngs, shard="in")

    def _attention(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        b, t, d = x.shape
        hd = d // self.num_heads
        heads = lambda y: y.reshape(b, t, self.num_heads, hd)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION) * hd ** -0.5
        if bias is not None:
            scores = scores + bias
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_PRECISION)
        return self.out_proj(ctx.reshape(b, t, d))

    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        x = x + self._attention(self.layer_norm1(x), bias)
        return x + self.fc2(ACTIVATIONS[self.act](self.fc1(self.layer_norm2(x))))


class VisionOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, 1 + N, D]: class token first; no post-LayerNorm
    patch_tokens: jax.Array  # [B, N, D] = last_hidden_state[:, 1:] (row-major patch grid)
    pooled: jax.Array  # [B, D]: post_layernorm(class token)
    image_embeds: jax.Array  # [B, P]: visual_projection(pooled), not L2-normalised


class TextOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, T, D], after final_layer_norm
    pooled: jax.Array  # [B, D]: last_hidden_state at the EOS token
    text_embeds: jax.Array  # [B, P]: text_projection(pooled), not L2-normalised


class CLIPVisionModel(nnx.Module):
    """ViT image tower + `visual_projection` (HF CLIPVisionModelWithProjection).

    Patch tokens are the encoder's last hidden state without the class token, *before*
    any LayerNorm: HF's `post_layernorm` is applied to the pooled class token only, and
    `last_hidden_state` (what USR uses) is not normalised.
    """

    def __init__(self, cfg: CLIPTowerConfig, projection_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.num_patches = (cfg.image_size // p) ** 2
        # A stride-p conv without bias, as HF's patch_embedding; kernel HWIO.
        self.patch_embedding = nnx.Conv(cfg.num_channels, d, kernel_size=(p, p), strides=(p, p),
                                        padding="VALID", use_bias=False, precision=_PRECISION,
                                        rngs=rngs, kernel_init=sharded(
                                            _KERNEL_INIT, (None, None, None, FSDP)))
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,)))
        self.position_embedding = _embed(self.num_patches + 1, d, rngs)
        self.pre_layernorm = _layer_norm(d, cfg.layer_norm_eps, rngs)
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.post_layernorm = _layer_norm(d, cfg.layer_norm_eps, rngs)
        self.projection = _linear(d, projection_dim, rngs, use_bias=False)

    def __call__(self, pixels: jax.Array) -> VisionOutput:
        """pixels: float [B, image_size, image_size, C], normalised (`preprocess_images`)."""
        s = self.cfg.image_size
        if pixels.ndim != 4 or pixels.shape[1:3] != (s, s) or pixels.shape[3] != self.cfg.num_channels:
            raise ValueError(f"CLIP vision expects pixels [B, {s}, {s}, {self.cfg.num_channels}] (NHWC), "
                             f"got {pixels.shape}; resize with preprocess_images")
        x = self.patch_embedding(pixels.astype(jnp.float32))  # [B, s/p, s/p, D]
        b = x.shape[0]
        x = x.reshape(b, self.num_patches, -1)  # row-major grid, as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_embedding.get_value(), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding.embedding.get_value()[None]
        x = self.pre_layernorm(x)
        for layer in self.layers:
            x = layer(x)
        pooled = self.post_layernorm(x[:, 0])
        return VisionOutput(x, x[:, 1:], pooled, self.projection(pooled))


class CLIPTextModel(nnx.Module):
    """Causal text transformer + `text_projection` (HF CLIPTextModelWithProjection)."""

    def __init__(self, cfg: CLIPTowerConfig, projection_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.token_embedding = _embed(cfg.vocab_size, d, rngs)
        self.position_embedding = _embed(cfg.max_position_embeddings, d, rngs)
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = _layer_norm(d, cfg.layer_norm_eps, rngs)
        self.projection = _linear(d, projection_dim, rngs, use_bias=False)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> TextOutput:
        """input_ids int [B, T] with T <= max_position_embeddings, each row holding an EOS.

        Attention is causal. `attention_mask` (1 = token, 0 = padding) additionally hides
        padded keys, as HF does when given one; the original CLIP passes none, and
        since padding follows EOS, the pooled features are the same either way.
        """
        b, t = input_ids.shape
        if t > self.cfg.max_position_embeddings:
            raise ValueError(f"CLIP text: {t} tokens exceed max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}; truncate in the tokenizer")
        x = self.token_embedding(input_ids) + self.position_embedding.embedding.get_value()[None, :t]
        allowed = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, Tq, Tk]
        if attention_mask is not None:
            allowed = allowed & (attention_mask[:, None, None, :] > 0)
        # The float32 minimum, as HF: masked keys get exactly zero weight.
        bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)
        for layer in self.layers:
            x = layer(x, bias)
        x = self.final_layer_norm(x)
        if self.cfg.eos_token_id == 2:
            # Legacy configs (openai/clip-*: eos_token_id 2, predating HF PR #24773): EOS
            # is the largest id in the vocabulary, found by argmax as the original CLIP.
            eos = jnp.argmax(input_ids, axis=-1)
        else:  # the first EOS (padding may reuse the EOS id)
            eos = jnp.argmax(input_ids == self.cfg.eos_token_id, axis=-1)
        pooled = x[jnp.arange(b), eos]
        return TextOutput(x, pooled, self.projection(pooled))


class CLIPModel(nnx.Module):
    """Both towers and the contrastive temperature (`logit_scale`, a log scale)."""

    def __init__(self, text: CLIPTowerConfig, vision: CLIPTowerConfig, projection_dim: int, *,
                 rngs: nnx.Rngs, logit_scale_init_value: float = 2.6592):
        self.text = CLIPTextModel(text, projection_dim, rngs=rngs)
        self.vision = CLIPVisionModel(vision, projection_dim, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init_value, jnp.float32))


def preprocess_images(images: jax.Array, image_size: int, *, mean=CLIP_MEAN, std=CLIP_STD,
                      method: str = "bicubic") -> jax.Array:
    """uint8 [..., H, W, C] -> float32 [..., image_size, image_size, C] for CLIPVisionModel.

    Resizes the whole frame to image_size x image_size with `jax.image.resize`
    (antialiased; bicubic as CLIP's processor), scales to [0, 1] and normalises with
    CLIP's per-channel mean and std. Unlike HF's CLIPImageProcessor it neither keeps the
    aspect ratio nor centre-crops (robot camera frames are kept whole; crop before if
    wanted), so only already-square images match HF's processor up to resampling.
    Frames already at image_size are not resampled.
    """
    x = jnp.asarray(images)
    if x.ndim < 3:
        raise ValueError(f"images must be [..., H, W, C], got shape {x.shape}")
    x = x.astype(jnp.float32) / 255.0
    if x.shape[-3:-1] != (image_size, image_size):
        shape = (*x.shape[:-3], image_size, image_size, x.shape[-1])
        x = jnp.clip(jax.image.resize(x, shape, method=method, antialias=True), 0.0, 1.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
