"""BERT encoder (Hugging Face `BertModel` layout) as Flax NNX modules.

Used to embed language instructions (all-MiniLM-L6-v2) without torch. The module
tree is sized from a Hugging Face `config.json`; `load_hf_safetensors` fills it
from a `model.safetensors` file and names every missing, unexpected or mis-shaped
tensor. Only the inference path is implemented (no dropout, no pooler): the
sentence embedding is a mean over the last hidden states, computed by the caller.

Parameters carry no sharding annotations on purpose: the model is a small frozen
preprocessing tool (22M parameters), replicated wherever it runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Matmuls at full float32 precision: TPUs/GPUs otherwise use bf16/tf32 passes and
# the embeddings would no longer match the reference (or each other across hosts).
_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Reads a Hugging Face BERT config.json; fails on settings not implemented here."""
        with open(path, encoding="utf-8") as f:
            raw: dict[str, Any] = json.load(f)
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: model_type={raw.get('model_type')!r}, expected 'bert'")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{path}: position_embedding_type={raw['position_embedding_type']!r}; "
                "only 'absolute' is implemented"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in fields})
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act={cfg.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"{path}: hidden_size {cfg.hidden_size} not divisible by num_attention_heads")
        return cfg


# HF "gelu" is the exact erf form; "gelu_new" the tanh approximation.
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, precision=_PRECISION, rngs=rngs)


def _layer_norm(n: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2] as in torch, not E[x^2]-mean^2 (less exact).
    return nnx.LayerNorm(n, epsilon=eps, use_fast_variance=False, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs)
        self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)
        self.norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.norm(x)


class BertLayer(nnx.Module):
    """Self-attention then MLP, each followed by residual + LayerNorm (post-LN)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, ff = cfg.hidden_size, cfg.intermediate_size
        self.num_heads = cfg.num_attention_heads
        self.act = cfg.hidden_act
        self.query = _linear(d, d, rngs)
        self.key = _linear(d, d, rngs)
        self.value = _linear(d, d, rngs)
        self.attn_out = _linear(d, d, rngs)
        self.attn_norm = _layer_norm(d, cfg.layer_norm_eps, rngs)
        self.mlp_in = _linear(d, ff, rngs)
        self.mlp_out = _linear(ff, d, rngs)
        self.out_norm = _layer_norm(d, cfg.layer_norm_eps, rngs)

    def _attention(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        b, t, d = x.shape
        heads = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION)
        scores = scores / math.sqrt(d // self.num_heads) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_PRECISION)
        return ctx.reshape(b, t, d)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        x = self.attn_norm(x + self.attn_out(self._attention(x, bias)))
        h = self.mlp_out(_ACTIVATIONS[self.act](self.mlp_in(x)))
        return self.out_norm(x + h)


class BertModel(nnx.Module):
    """Returns the last hidden states [B, T, hidden_size] (no pooler)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # Additive key mask [B, 1, 1, T]: the float32 minimum, as HF does, so padded
        # keys get exactly zero weight and padding never changes real tokens' outputs.
        neg = jnp.finfo(x.dtype).min
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x


# ---------------------------------------------------------------------------
# Loading Hugging Face weights.

# In the checkpoint but not needed here: the position-id buffer, and the pooler
# (tanh over [CLS]) that mean-pooled sentence embeddings never use.
_IGNORED_PREFIXES = ("embeddings.position_ids", "pooler.")


def _hf_name_map(cfg: BertConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
    """NNX parameter path -> (HF tensor name, transpose?). torch Linear stores [out, in]."""
    m: dict[tuple[str, ...], tuple[str, bool]] = {}

    def norm(path: tuple[str, ...], hf: str) -> None:
        m[path + ("scale",)] = (f"{hf}.weight", False)
        m[path + ("bias",)] = (f"{hf}.bias", False)

    def dense(path: tuple[str, ...], hf: str) -> None:
        m[path + ("kernel",)] = (f"{hf}.weight", True)
        m[path + ("bias",)] = (f"{hf}.bias", False)

    for ours, theirs in [("word", "word"), ("position", "position"), ("token_type", "token_type")]:
        m[("embeddings", ours, "embedding")] = (f"embeddings.{theirs}_embeddings.weight", False)
    norm(("embeddings", "norm"), "embeddings.LayerNorm")
    for i in range(cfg.num_hidden_layers):
        p, hf = ("layers", i), f"encoder.layer.{i}"
        dense(p + ("query",), f"{hf}.attention.self.query")
        dense(p + ("key",), f"{hf}.attention.self.key")
        dense(p + ("value",), f"{hf}.attention.self.value")
        dense(p + ("attn_out",), f"{hf}.attention.output.dense")
        norm(p + ("attn_norm",), f"{hf}.attention.output.LayerNorm")
        dense(p + ("mlp_in",), f"{hf}.intermediate.dense")
        dense(p + ("mlp_out",), f"{hf}.output.dense")
        norm(p + ("out_norm",), f"{hf}.output.LayerNorm")
    return m


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Checkpoints saved from BertFor*/AutoModel wrappers prefix every name with "bert.".
    if tensors and all(k.startswith("bert.") for k in tensors if not k.startswith("cls.")):
        return {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
    return tensors


def load_hf_safetensors(cfg: BertConfig, path: str | os.PathLike) -> BertModel:
    """Builds a BertModel from a HF `model.safetensors`; raises on any tensor mismatch."""
    from safetensors.numpy import load_file

    tensors = _strip_prefix(load_file(os.fspath(path)))
    # Abstract module: shapes and tree structure only, no random init of 22M params.
    abstract = nnx.eval_shape(lambda: BertModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    name_map = _hf_name_map(cfg)

    problems: list[str] = []
    unmapped = sorted(".".join(map(str, p)) for p in flat if p not in name_map)
    if unmapped:  # a bug in this file, not in the checkpoint
        problems.append(f"no HF name for module parameters: {unmapped}")
    values: dict[tuple, jax.Array] = {}
    for nnx_path, (hf_name, transpose) in name_map.items():
        if hf_name not in tensors:
            problems.append(f"missing tensor {hf_name!r}")
            continue
        arr = tensors[hf_name].T if transpose else tensors[hf_name]
        want = flat[nnx_path].get_value().shape
        if arr.shape != want:
            shown = tensors[hf_name].shape
            problems.append(
                f"tensor {hf_name!r} has shape {shown}, expected "
                f"{tuple(reversed(want)) if transpose else want} for config {cfg}"
            )
            continue
        values[nnx_path] = jnp.asarray(arr, dtype=jnp.float32)
    used = {hf for hf, _ in name_map.values()}
    unexpected = sorted(k for k in tensors if k not in used and not k.startswith(_IGNORED_PREFIXES))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if problems:
        raise ValueError(
            f"{os.fspath(path)} does not match the BERT config "
            f"(check that config.json belongs to these weights):\n  - " + "\n  - ".join(problems)
        )
    for nnx_path, value in values.items():
        flat[nnx_path].set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
