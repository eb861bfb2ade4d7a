"""Loading a Hugging Face CLIP directory (config.json, model.safetensors, tokenizer.json)
into the NNX modules of `clip.py`, offline: nothing is downloaded.

The directory layout is that of `openai/clip-vit-base-patch16` as saved by
`CLIPModel.save_pretrained`: tensors named `text_model.*`, `vision_model.*`,
`text_projection.weight`, `visual_projection.weight` and `logit_scale`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.clip import TEXT_DEFAULTS, VISION_DEFAULTS, CLIPModel, CLIPTowerConfig

# In checkpoints but not parameters: the position-id buffers older exports carry.
_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def read_clip_config(path: str | os.PathLike) -> tuple[CLIPTowerConfig, CLIPTowerConfig, dict[str, Any]]:
    """(text, vision, top-level fields) from a HF CLIPConfig config.json."""
    with open(path, encoding="utf-8") as f:
        raw: dict[str, Any] = json.load(f)
    if raw.get("model_type", "clip") != "clip":
        raise ValueError(f"{path}: model_type={raw.get('model_type')!r}, expected 'clip' (a CLIPModel "
                         "config with text_config and vision_config)")
    towers = []
    for name, defaults in [("text", TEXT_DEFAULTS), ("vision", VISION_DEFAULTS)]:
        section = dict(raw.get(f"{name}_config") or {})
        override = raw.get(f"{name}_config_dict")
        if override:
            # Old exports (openai/clip-vit-large-patch14) also carry <name>_config_dict. HF's
            # CLIPConfig builds a whole tower config from it and lets every field of that
            # override <name>_config, so its absent keys take HF's defaults, not <name>_config's.
            hf_defaults = {f.name: f.default for f in dataclasses.fields(CLIPTowerConfig)
                           if f.default is not dataclasses.MISSING}
            section = {**section, **hf_defaults, **defaults, **override}
        towers.append(CLIPTowerConfig.from_dict(section, defaults, f"{path}: {name}_config"))
    top = {"projection_dim": int(raw.get("projection_dim", 512)),
           "logit_scale_init_value": float(raw.get("logit_scale_init_value", 2.6592))}
    return towers[0], towers[1], top


def _hf_name_map(text: CLIPTowerConfig, vision: CLIPTowerConfig) -> dict[tuple, tuple[str, str | None]]:
    """NNX parameter path -> (HF tensor name, layout change). torch Linear stores [out, in]
    ('T'); torch Conv2d [out, in, kh, kw] ('conv' -> HWIO)."""
    m: dict[tuple, tuple[str, str | None]] = {}

    def norm(path: tuple, hf: str) -> None:
        m[path + ("scale",)] = (f"{hf}.weight", None)
        m[path + ("bias",)] = (f"{hf}.bias", None)

    def dense(path: tuple, hf: str, bias: bool = True) -> None:
        m[path + ("kernel",)] = (f"{hf}.weight", "T")
        if bias:
            m[path + ("bias",)] = (f"{hf}.bias", None)

    def layers(path: tuple, hf: str, n: int) -> None:
        for i in range(n):
            p, h = path + ("layers", i), f"{hf}.encoder.layers.{i}"
            norm(p + ("layer_norm1",), f"{h}.layer_norm1")
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                dense(p + (proj,), f"{h}.self_attn.{proj}")
            norm(p + ("layer_norm2",), f"{h}.layer_norm2")
            dense(p + ("fc1",), f"{h}.mlp.fc1")
            dense(p + ("fc2",), f"{h}.mlp.fc2")

    t, v = ("text",), ("vision",)
    m[t + ("token_embedding", "embedding")] = ("text_model.embeddings.token_embedding.weight", None)
    m[t + ("position_embedding", "embedding")] = ("text_model.embeddings.position_embedding.weight", None)
    layers(t, "text_model", text.num_hidden_layers)
    norm(t + ("final_layer_norm",), "text_model.final_layer_norm")
    dense(t + ("projection",), "text_projection", bias=False)
    m[v + ("patch_embedding", "kernel")] = ("vision_model.embeddings.patch_embedding.weight", "conv")
    m[v + ("class_embedding",)] = ("vision_model.embeddings.class_embedding", None)
    m[v + ("position_embedding", "embedding")] = ("vision_model.embeddings.position_embedding.weight", None)
    norm(v + ("pre_layernorm",), "vision_model.pre_layrnorm")  # sic: HF's spelling
    layers(v, "vision_model", vision.num_hidden_layers)
    norm(v + ("post_layernorm",), "vision_model.post_layernorm")
    dense(v + ("projection",), "visual_projection", bias=False)
    m[("logit_scale",)] = ("logit_scale", None)
    return m


def _to_ours(arr: np.ndarray, change: str | None) -> np.ndarray:
    if change == "T":
        return arr.T
    if change == "conv":
        return arr.transpose(2, 3, 1, 0) if arr.ndim == 4 else arr  # wrong ndim: shape error below
    return arr


def load_clip(directory: str | os.PathLike) -> CLIPModel:
    """A CLIPModel from `directory`/config.json and model.safetensors; raises naming every
    missing, unexpected or mis-shaped tensor."""
    from safetensors.numpy import load_file

    d = Path(directory)
    config_path, weights_path = d / "config.json", d / "model.safetensors"
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: a CLIP directory holds config.json and "
                                    "model.safetensors (CLIPModel.save_pretrained layout)")
    text, vision, top = read_clip_config(config_path)
    tensors = load_file(os.fspath(weights_path))
    # Abstract module: shapes and tree structure only, no random init of 150M params.
    abstract = nnx.eval_shape(lambda: CLIPModel(text, vision, top["projection_dim"], rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    name_map = _hf_name_map(text, vision)

    problems: list[str] = []
    unmapped = sorted(".".join(map(str, p)) for p in flat if p not in name_map)
    if unmapped:  # a bug in this file, not in the checkpoint
        problems.append(f"no HF name for module parameters: {unmapped}")
    values: dict[tuple, jax.Array] = {}
    for nnx_path, (hf_name, change) in name_map.items():
        if hf_name not in tensors:
            problems.append(f"missing tensor {hf_name!r}")
            continue
        arr = _to_ours(tensors[hf_name], change)
        want = tuple(flat[nnx_path].get_value().shape)
        if arr.shape != want:
            problems.append(f"tensor {hf_name!r} has shape {tuple(tensors[hf_name].shape)}, expected "
                            f"{want} in our layout ({change or 'same'} of HF's)")
            continue
        values[nnx_path] = jnp.asarray(arr, dtype=jnp.float32)
    used = {hf for hf, _ in name_map.values()}
    unexpected = sorted(k for k in tensors if k not in used and not k.startswith(_IGNORED))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if problems:
        raise ValueError(f"{weights_path} does not match {config_path} (check that config.json "
                         f"belongs to these weights):\n  - " + "\n  - ".join(problems))
    for nnx_path, value in values.items():
        flat[nnx_path].set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _special_token(d: Path, key: str, default: str) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (d / name).is_file():
            with open(d / name, encoding="utf-8") as f:
                value = json.load(f).get(key)
            if isinstance(value, dict):  # {"content": "<|endoftext|>", "lstrip": ...}
                value = value.get("content")
            if value:
                return str(value)
    return default


class CLIPTokenizer:
    """CLIP's BPE from `directory`/tokenizer.json (the `tokenizers` library, no
    transformers), padded and truncated to a fixed length like HF's
    `tokenizer(texts, padding="max_length", truncation=True, max_length=...)`:
    <|startoftext|> ... <|endoftext|>, then the pad token (<|endoftext|> for OpenAI CLIP)."""

    def __init__(self, directory: str | os.PathLike, max_length: int | None = None):
        from tokenizers import Tokenizer

        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the CLIP tokenizer is read from tokenizer.json (the fast-tokenizer "
                "file the openai/clip-* repositories ship; vocab.json + merges.txt alone are not read)")
        if max_length is None:
            max_length = read_clip_config(d / "config.json")[0].max_position_embeddings
        self.max_length = int(max_length)
        self._tok = Tokenizer.from_file(os.fspath(path))
        pad = _special_token(d, "pad_token", "<|endoftext|>")
        self.pad_id = self._tok.token_to_id(pad)
        if self.pad_id is None:
            raise ValueError(f"{path}: pad token {pad!r} (from tokenizer_config.json) is not in the vocabulary")
        # Truncation counts the BOS/EOS the post-processor adds, as HF's truncation=True.
        self._tok.enable_truncation(max_length=self.max_length)
        self._tok.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=pad)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int32 [len(texts), max_length]."""
        if isinstance(texts, str):
            raise TypeError("CLIPTokenizer takes a list of strings, got one string")
        encodings = self._tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(encodings), self.max_length)
        mask = np.asarray([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
        return ids, mask
