"""CLIP (models/clip.py, models/clip_loading.py): parity with Hugging Face transformers
on a tiny random CLIPModel, tokenizer parity, preprocessing, and the loader's refusals.

The fixture (tests/fixtures/tiny_clip/) is written once by scripts/make_tiny_clip_fixture.py
with torch + transformers in a throwaway venv; this test only reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from atomskill_jax.models import clip
from atomskill_jax.models.clip_loading import CLIPTokenizer, load_clip, read_clip_config

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_clip"
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return json.loads((FIXTURE / "reference_texts.json").read_text())["texts"]


@pytest.fixture(scope="module")
def model() -> clip.CLIPModel:
    return load_clip(FIXTURE)


def _close(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    err = float(np.abs(got - want).max())
    assert err < ATOL, f"{name}: max abs error {err:.3g} (values up to {np.abs(want).max():.3g})"


def test_tokenizer_matches_hf(ref, texts):
    ids, mask = CLIPTokenizer(FIXTURE)(texts)
    np.testing.assert_array_equal(ids, ref["input_ids"])  # incl. lowercasing, truncation, padding
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    assert ids.shape == (len(texts), 16) and ids.dtype == np.int32
    assert (ids[:, 0] == 542).all() and (ids[:, -1] == 543).all()  # BOS first; EOS or EOS-padding last


def test_vision_matches_hf(model, ref):
    pixels = clip.preprocess_images(ref["images"], model.vision.cfg.image_size)
    _close(pixels, ref["pixel_values"], "pixel_values")
    out = nnx.jit(lambda m, x: m(x))(model.vision, pixels)
    _close(out.last_hidden_state, ref["vision_last_hidden_state"], "vision last_hidden_state")
    _close(out.patch_tokens, ref["vision_last_hidden_state"][:, 1:], "patch_tokens")
    assert out.patch_tokens.shape == (3, 16, 32)  # (32 / 8)^2 patches, class token dropped
    _close(out.pooled, ref["vision_pooled"], "vision pooled")
    _close(out.image_embeds, ref["image_embeds"], "image_embeds")


def test_text_matches_hf(model, ref):
    ids = jnp.asarray(ref["input_ids"])
    out = nnx.jit(lambda m, x: m(x))(model.text, ids)
    _close(out.last_hidden_state, ref["text_last_hidden_state"], "text last_hidden_state")
    _close(out.pooled, ref["text_pooled"], "text pooled")
    _close(out.text_embeds, ref["text_embeds"], "text_embeds")
    masked = model.text(ids, jnp.asarray(ref["attention_mask"]))
    _close(masked.last_hidden_state, ref["text_last_hidden_state_masked"], "text last_hidden_state (masked)")
    # Padding follows EOS, so the mask changes padded positions only, never the pooled features.
    _close(masked.text_embeds, ref["text_embeds"], "text_embeds (masked)")
    np.testing.assert_allclose(float(model.logit_scale.get_value()), ref["logit_scale"], atol=1e-6)


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "clip"
    shutil.copytree(FIXTURE, d)
    return d


def test_first_eos_pooling_for_updated_configs(tmp_path, ref):
    # Configs after HF PR #24773 name the real EOS id: pool at its first occurrence, not at
    # the largest id. An id that is not the largest (516, "the") tells the two apart.
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = 516
    (d / "config.json").write_text(json.dumps(cfg))
    ids = jnp.asarray(ref["input_ids"][:2])
    out = load_clip(d).text(ids)
    first = np.argmax(np.asarray(ids) == 516, axis=-1)
    assert (first != np.argmax(np.asarray(ids), axis=-1)).all()
    _close(out.pooled, ref["text_last_hidden_state"][np.arange(2), first], "pooled at first EOS")


def _rewrite(d: Path, edit) -> None:
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


def test_loader_names_missing_unexpected_and_misshaped_tensors(tmp_path):
    d = _copy(tmp_path)

    def edit(t):
        del t["vision_model.encoder.layers.1.mlp.fc2.bias"]
        t["text_model.encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((24, 12), np.float32)
        t["vision_model.head.weight"] = np.zeros((2,), np.float32)
        t["vision_model.embeddings.position_ids"] = np.arange(17)[None]  # old exports: ignored

    _rewrite(d, edit)
    with pytest.raises(ValueError) as err:
        load_clip(d)
    msg = str(err.value)
    assert "missing tensor 'vision_model.encoder.layers.1.mlp.fc2.bias'" in msg
    assert "'text_model.encoder.layers.0.self_attn.q_proj.weight' has shape (24, 12)" in msg
    assert "unexpected tensors ['vision_model.head.weight']" in msg
    assert "position_ids" not in msg and str(d / "model.safetensors") in msg


def test_loader_refuses_config_that_does_not_fit_the_weights(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_config"]["patch_size"] = 16  # conv kernel and position table no longer fit
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"patch_embedding.weight' has shape \(32, 3, 8, 8\)"):
        load_clip(d)
    cfg["vision_config"]["hidden_act"] = "swiglu"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="vision_config: hidden_act='swiglu'"):
        load_clip(d)


def test_config_dict_overrides_as_hf(tmp_path):
    # HF's CLIPConfig rebuilds a tower from text_config_dict: its keys win, and keys it
    # lacks take HF's defaults (eos 49407), not text_config's values (eos 2).
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg["text_config_dict"] = {"hidden_size": 40, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    text, vision, top = read_clip_config(tmp_path / "config.json")
    assert (text.hidden_size, text.num_attention_heads, text.eos_token_id) == (40, 4, 49407)
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (2048, 49408, 77)
    assert (vision.hidden_size, vision.patch_size, top["projection_dim"]) == (32, 8, 16)


def test_missing_files_are_named(tmp_path):
    d = _copy(tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        CLIPTokenizer(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_clip(d)


def test_preprocess_resizes_and_normalises():
    frames = np.full((2, 48, 64, 3), [255, 128, 0], np.uint8)  # non-square, not image_size
    x = clip.preprocess_images(frames, 32)
    assert x.shape == (2, 32, 32, 3) and x.dtype == jnp.float32
    want = (np.array([255, 128, 0]) / 255.0 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
    np.testing.assert_allclose(np.asarray(x), np.broadcast_to(want, x.shape), atol=1e-5)


def test_vision_refuses_wrong_image_size(model):
    with pytest.raises(ValueError, match=r"expects pixels \[B, 32, 32, 3\]"):
        model.vision(jnp.zeros((1, 48, 48, 3)))
