"""Writes tests/fixtures/tiny_clip/: a tiny random Hugging Face CLIPModel and its outputs.

The fixture pins `atomskill_jax.models.clip` to what transformers computes, with the
same file layout as `openai/clip-vit-base-patch16` (config.json with text_config and
vision_config, model.safetensors, tokenizer.json). torch must never enter the
project's environment, so run this from a throwaway venv:

    /work/main/.venv/bin/python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 transformers safetensors numpy
    /tmp/torchvenv/bin/python scripts/make_tiny_clip_fixture.py [--out tests/fixtures/tiny_clip]

The real CLIP BPE vocabulary (49408 tokens, 1.6 MB) is not available offline and is
too big for a fixture, so the tokenizer is a hand-made byte-level BPE with CLIP's
layout: 256 byte symbols, the same 256 with the end-of-word suffix "</w>", a few
merges for the words below, then <|startoftext|> and <|endoftext|> (the largest id,
which the legacy `eos_token_id: 2` config pools at through argmax, as the original
CLIP). Rerun only when the inputs or sizes below change; the outputs are committed.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Words whose merges exist; anything else falls back to single-byte tokens.
WORDS = ["pick", "the", "red", "block", "place", "cup", "open", "drawer", "a", "photo", "of"]
# Mixed case, punctuation, a word without merges and one sentence longer than the
# context (16 tokens with BOS/EOS), so truncation and padding are both exercised.
TEXTS = [
    "pick the red block",
    "Place the CUP, then open the drawer!",
    "a photo of xyzzy",
    "open the drawer and put the cup inside the drawer slowly please",
]
SEED = 0
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor defaults
STD = (0.26862954, 0.26130258, 0.27577711)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in WORDS:
        # Left-to-right merges: ((p i) c) k</w> -> "pick</w>".
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merge = f"{current} {nxt}"
            current = current + nxt
            if merge not in merges:
                merges.append(merge)
                if current not in vocab_list:
                    vocab_list.append(current)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _randomise(model, torch) -> None:
    """Every tensor random (HF init leaves LayerNorms at 1/0 and biases at 0, which
    would hide a swapped norm or a dropped bias)."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("logit_scale"):
                p.copy_(torch.tensor(2.6592))
            elif "layer_norm" in name or "layernorm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "embedding" in name:
                p.copy_(0.5 * noise)
            else:  # Linear / conv kernels: unit-ish activations through 2 layers
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise / np.sqrt(fan_in))


def main() -> None:
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tiny_clip"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)

    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    context = 16
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=24, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=context,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         # openai/clip-vit-base-patch16 ships the legacy ids (pool by argmax)
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, num_channels=3,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=16,
    )
    config._attn_implementation = "eager"  # the plain softmax(QK^T)V reference
    model = CLIPModel(config).eval()
    _randomise(model, torch)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)

    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # NHWC uint8
    pixels = (images.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    pixel_values = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())  # NCHW for torch
    enc = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=context,
                    return_tensors="pt")
    with torch.no_grad():
        vis = model.vision_model(pixel_values=pixel_values)
        image_embeds = model.visual_projection(vis.pooler_output)
        txt = model.text_model(input_ids=enc["input_ids"])  # causal mask only (as openai CLIP)
        txt_masked = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        text_embeds = model.text_projection(txt.pooler_output)
    out = dict(
        images=images,
        pixel_values=pixels,
        input_ids=enc["input_ids"].numpy().astype(np.int32),
        attention_mask=enc["attention_mask"].numpy().astype(np.int32),
        vision_last_hidden_state=vis.last_hidden_state.numpy(),
        vision_pooled=vis.pooler_output.numpy(),
        image_embeds=image_embeds.numpy(),
        text_last_hidden_state=txt.last_hidden_state.numpy(),
        text_pooled=txt.pooler_output.numpy(),
        text_embeds=text_embeds.numpy(),
        text_last_hidden_state_masked=txt_masked.last_hidden_state.numpy(),
        logit_scale=np.float32(model.logit_scale.item()),
    )
    np.savez_compressed(os.path.join(args.out, "reference.npz"), **out)
    with open(os.path.join(args.out, "reference_texts.json"), "w", encoding="utf-8") as f:
        json.dump({"texts": TEXTS, "torch": torch.__version__,
                   "transformers": transformers.__version__}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out}: {sorted(os.listdir(args.out))}, {total / 1024:.0f} KiB")
    print("input_ids:\n", out["input_ids"])


if __name__ == "__main__":
    main()
