"""How much of the decoder's accuracy survives when skills are sampled, not encoded.

    python bench/skill_sampler_fidelity.py --workdir=W [--data=DATASET_DIR] [--batch=256]
        [--where=start|any]

On training examples of a trained AtomSkill workdir, compares the skill tokens the
diffusion sampler draws from the observation with the tokens the skill encoder gives
for the true segment, and the decoder's chunk L1 with encoded, sampled and random
codebook tokens. `--where=start` (default) keeps only examples at the first step of
their skill, where the policy samples; `any` takes every step. Closed-loop success needs "sampled" close to "encoded"; "sampled"
near "random" means the sampled skills carry no usable information. Prints a table.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np


def _chunk_l1(chunk, batch) -> float:
    mask = np.asarray(batch["action_chunk_mask"], np.float32)[..., None]
    err = np.abs(np.asarray(chunk) - batch["action_chunk"]) * mask
    return float(err.sum() / (mask.sum() * err.shape[-1]))


def _examples(iterator, count: int, *, at_start: bool) -> dict:
    """`count` examples; with `at_start`, only those at the first step of their skill."""
    parts, have = [], 0
    while have < count:
        batch = iterator.next_local()
        if at_start:
            keep = np.flatnonzero(batch["timestep"] == batch["skill"]["start"])
            batch = jax.tree.map(lambda x, keep=keep: x[keep], batch)
        parts.append(batch)
        have += len(batch["timestep"])
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:count], *parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", default=None, help="dataset version dir (default: training's)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=3, help="sampler draws to average")
    parser.add_argument("--where", choices=("start", "any"), default="start",
                        help="examples at skill starts only (where skills are sampled) or all")
    args = parser.parse_args()

    from atomskill_jax.data import pipeline
    from atomskill_jax.policies.loading import load_model

    model, config, _, step = load_model(args.workdir, use_ema=True)
    data = config.data
    if args.data:
        data.datasets = ({"name": args.data, "weight": 1.0},)
        data.data_dir = ""
    data.batch_size = args.batch
    data.seed = 1  # a shuffled batch spread over episodes and skills
    batch = _examples(pipeline.make_pipeline(data, train=True).iterator(), args.batch,
                      at_start=args.where == "start")
    obs, lang = batch["observation"], batch["language_embedding"]

    encoded, encoded_idx = model.encode_skill(batch)
    codebook = np.asarray(model.vq.codebook[...])
    matches, sampled_l1 = [], []
    for draw in range(args.samples):
        tokens = model.sample_skill(jax.random.key(draw), obs, lang)
        dist = ((np.asarray(tokens)[:, :, None] - codebook[None, None]) ** 2).sum(-1)
        matches.append(float((dist.argmin(-1) == np.asarray(encoded_idx)).mean()))
        sampled_l1.append(_chunk_l1(model.predict_actions(obs, lang, tokens)[0], batch))
    # The label head at the same examples (the sampler's label source at inference),
    # and the sampler given the true label instead: how much a right label would add.
    pooled = model.sampler.pool(model.obs_encoder(obs, lang),
                                jnp.zeros((len(lang),), jnp.int32))
    predicted = np.asarray(jnp.argmax(model.sampler.label_logits(pooled), -1))
    true_label = np.asarray(batch["skill"]["label_id"])
    label_acc = float((predicted == true_label).mean())
    given = []
    for draw in range(args.samples):
        tokens = model.sample_skill(jax.random.key(100 + draw), obs, lang,
                                    label_id=jnp.asarray(true_label))
        dist = ((np.asarray(tokens)[:, :, None] - codebook[None, None]) ** 2).sum(-1)
        given.append(float((dist.argmin(-1) == np.asarray(encoded_idx)).mean()))
    rng = np.random.default_rng(0)
    random_tokens = jnp.asarray(codebook[rng.integers(0, len(codebook), encoded_idx.shape)])
    rows = [
        ("token match, sampled vs encoded", np.mean(matches), f"chance {1 / len(codebook):.3f}"),
        ("token match, sampler given true label", np.mean(given), "label head bypassed"),
        ("label head accuracy", label_acc, f"{len(set(true_label.tolist()))} labels here"),
        ("chunk L1, encoded skills", _chunk_l1(model.predict_actions(obs, lang, encoded)[0],
                                               batch), "teacher-forced"),
        ("chunk L1, sampled skills", np.mean(sampled_l1), f"{args.samples} draws"),
        ("chunk L1, random codebook tokens", _chunk_l1(
            model.predict_actions(obs, lang, random_tokens)[0], batch), "no information"),
    ]
    where = "at skill starts" if args.where == "start" else "at any step"
    print(f"workdir {args.workdir} (step {step}), {args.batch} training examples {where}")
    print(f"| {'measure':34s} | {'value':>7s} | note |\n|{'-' * 36}|{'-' * 9}|------|")
    for name, value, note in rows:
        print(f"| {name:34s} | {value:7.3f} | {note} |")


if __name__ == "__main__":
    main()
