"""`atomskill plot`: figures of a trained AtomSkill workdir, saved in the workdir.

    atomskill plot --workdir=W [--data=DATASET_DIR] [--num-examples=1000] [--episode=0] \
        [--out=W/plots] [--perplexity=30] [--embedding=encoder|quantized]

Writes into --out (default W/plots):
- skill_tsne.png: t-SNE of the skill encoder's embeddings of up to --num-examples
  distinct training segments, coloured by skill label (the AtomSkill paper's Fig. 5);
- skill_embeddings.npz: those embeddings, their 2-D coordinates, labels, tasks, segment
  uids and VQ codes, so anyone can redraw or re-embed without the model;
- segmentation_<task>_<episode>.png: for each task of the data, its --episode-th
  episode's gripper command, keyframes and labelled skill segments.

The data is the workdir's training data unless --data names another dataset
directory. Refuses with a clear message: a workdir without a checkpoint, an ACT-like
run (no skill encoder, nothing to embed), a dataset path that does not exist.
"""

from __future__ import annotations

import os
import re
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="t-SNE of the skill space and episode segmentations, "
                                    "saved in the workdir")
    p.add_argument("--workdir", required=True, help="training workdir (atomskill train)")
    p.add_argument("--data", default=None,
                   help="dataset version directory (default: the run's training data)")
    p.add_argument("--num-examples", type=int, default=1000,
                   help="distinct skill segments to embed (fewer if the data has fewer)")
    p.add_argument("--episode", type=int, default=0,
                   help="which episode of each task to draw the segmentation of (0: first)")
    p.add_argument("--out", default=None, help="output directory (default W/plots)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    p.add_argument("--embedding", choices=("encoder", "quantized"), default="encoder",
                   help="pre-quantisation encoder tokens (default) or quantised tokens")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "episode"


def _dataset_names(config, data: str | None) -> list[str]:
    if data:
        return [data]
    from atomskill_jax.data.pipeline import dataset_entries

    return [name for name, _ in dataset_entries(config.data)]


def run(args) -> int:
    import numpy as np

    workdir = os.path.abspath(args.workdir)
    if args.num_examples <= 0:
        print("atomskill plot: --num-examples must be positive", file=sys.stderr)
        return 2
    if args.perplexity <= 1:
        print("atomskill plot: --perplexity must be > 1", file=sys.stderr)
        return 2
    if args.episode < 0:
        print("atomskill plot: --episode must be >= 0", file=sys.stderr)
        return 2
    if args.data and not os.path.isdir(args.data) and "://" not in args.data:
        print(f"atomskill plot: dataset directory {args.data} does not exist (give the "
              f"version directory, e.g. DIR/metaworld_scripted/rlbench6/1.0.0)",
              file=sys.stderr)
        return 2
    from atomskill_jax.eval import plots
    from atomskill_jax.methods.atomskill import skill_embeddings as se

    se.check_skill_workdir(workdir, args.step)  # fail before TensorFlow and the model
    from atomskill_jax.cli import quiet_tensorflow
    from atomskill_jax.eval.tsne import effective_perplexity, tsne

    quiet_tensorflow()
    out = os.path.abspath(args.out or os.path.join(workdir, "plots"))
    os.makedirs(out, exist_ok=True)
    written = []
    start = time.time()
    model, config, step = se.load_skill_model(workdir, args.step)
    emb = se.collect(model, se.data_config(config, args.data), args.num_examples,
                     kind=args.embedding, step=step)
    print(f"embedded {len(emb)} skill segments (from {emb.examples_read} training examples, "
          f"step {emb.step}) in {time.time() - start:.1f}s")
    start = time.time()
    coords = tsne(emb.points, perplexity=args.perplexity, seed=args.seed)
    print(f"t-SNE of {len(emb)} points in {time.time() - start:.1f}s")
    perplexity = effective_perplexity(args.perplexity, len(emb)) if len(emb) >= 3 else 0.0
    npz = os.path.join(out, "skill_embeddings.npz")
    np.savez_compressed(npz, coords=coords, perplexity=np.asarray(perplexity),
                        tsne_seed=np.asarray(args.seed), **emb.to_npz_dict())
    written.append(npz)
    title = (f"{os.path.basename(workdir)} (step {emb.step}): t-SNE of {len(emb)} skill "
             f"segments, {len(set(emb.labels))} labels\nskill encoder "
             f"{'pre-quantisation' if emb.kind == 'encoder' else 'quantised'} tokens, "
             f"perplexity {perplexity:.3g}")
    written.append(plots.plot_skill_tsne(coords, emb.labels, os.path.join(out, "skill_tsne.png"),
                                         title))
    drawn: set[str] = set()
    for name in _dataset_names(config, args.data):
        episodes = se.first_episodes_per_task(name, episode=args.episode,
                                              split=config.data.get("split", "train"),
                                              data_dir=config.data.get("data_dir") or None)
        for task, episode in episodes.items():
            if task in drawn:  # the same task in two datasets: the first one's
                continue
            drawn.add(task)
            path = os.path.join(out, f"segmentation_{_file_name(task)}_{args.episode}.png")
            written.append(path)
            plots.plot_segmentation(episode, path)
        if not episodes:
            print(f"note: {name} has no task with {args.episode + 1} episodes; no "
                  f"segmentation plotted", file=sys.stderr)
    for path in written:
        print(path)
    return 0


__all__ = ["add_parser", "run"]
