"""`atomskill demo`: the embedded default, end to end, on state observations.

Today: build a small `rlbench6` MetaWorld dataset with atomic-skill annotations,
compute its normalisation statistics, print what the skills look like, and draw
one training batch from the input pipeline. Training and evaluation join when
their issues land.
"""

from __future__ import annotations

import collections
import os
import time

import jax
import numpy as np

EPISODES_PER_TASK = 3


def main(args) -> int:
    from atomskill_jax import cli

    cli._quiet_tensorflow()
    import tensorflow_datasets as tfds

    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    out = os.path.abspath(args.out)
    start = time.time()
    print(f"[1/3] building rlbench6 demonstrations ({EPISODES_PER_TASK} per task) in {out}")
    dataset_dir, report = mwb.build(out, suite="rlbench6",
                                    episodes_per_task=EPISODES_PER_TASK)
    print(f"      {dataset_dir} ({time.time() - start:.0f}s)")

    print("[2/3] atomic skills per task (segments: label[steps])")
    builder = tfds.builder_from_directory(dataset_dir)
    per_task = collections.defaultdict(list)
    for episode in tfds.as_numpy(builder.as_dataset(split="train")):
        meta = episode["episode_metadata"]
        labels, lengths = [], collections.Counter()
        for step in episode["steps"]:
            seg = int(step["skill_segment"])
            if seg == len(labels):
                labels.append(step["skill_label"].decode())
            lengths[seg] += 1
        per_task[meta["task"].decode()].append(
            " -> ".join(f"{lab}[{lengths[i]}]" for i, lab in enumerate(labels)))
    for task in sorted(per_task):
        print(f"      {task:18s} {per_task[task][0]}")

    print("[3/3] normalisation statistics and one training batch")
    _stats_and_batch(dataset_dir)
    print(f"done in {time.time() - start:.0f}s. Training, evaluation, export and serving: "
          "not yet available (issues 3 and 4).")
    return 0


def _stats_and_batch(dataset_dir: str) -> None:
    from atomskill_jax.data import config as data_config
    from atomskill_jax.data import pipeline
    from atomskill_jax.training import mesh as mesh_lib

    config = data_config.default_data_config()
    config.datasets = ({"name": dataset_dir, "weight": 1.0},)
    config.batch_size = 64
    pipe = pipeline.make_pipeline(config)
    stats = pipe.statistics[0]
    print(f"      {stats.num_episodes} episodes, {stats.num_steps} steps; statistics saved "
          "beside the dataset")
    for field in ("action", "action_abs", "observation/proprio"):
        fs = stats[field]
        print(f"      {field:20s} mean {np.round(fs.mean, 3).tolist()}  "
              f"std {np.round(fs.std, 3).tolist()}")
    mesh = mesh_lib.make_mesh()
    batch = next(pipe.iterator(mesh=mesh))
    shapes = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]}
    print(f"      one batch on a {dict(mesh.shape)} mesh:")
    for name in ("action_chunk", "action_chunk_mask", "skill/actions", "skill/label_id",
                 "keypose", "observation/state", "language_embedding"):
        print(f"        {name:22s} {shapes[name]}")
