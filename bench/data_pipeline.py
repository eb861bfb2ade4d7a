"""Throughput of the AtomSkill input pipeline (examples/s after warm-up).

    python bench/data_pipeline.py [DATASET_DIR] [--images=CAM[,CAM]] [--batch=64]

Rows: state observations (the `cpu` training batch), then, with --images (or with
the built-in dataset, which has a camera), images resized to 128x128 with and
without augmentation. Each row times `DataIterator.next_local` (tf.data work,
normalisation, conversion to numpy) and, separately, placement on the device mesh.
Without DATASET_DIR a MetaWorld-sized synthetic dataset is written to a temporary
directory (40 episodes x 150 steps; state 39, proprio 4, action 4; one 128x128 camera).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from atomskill_jax.data import tf_setup  # noqa: E402,F401  first: hides GPUs from TF
from atomskill_jax.data import config as data_config  # noqa: E402
from atomskill_jax.data import episode_builder, pipeline, rlds_schema  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402


class BenchEpisodes(episode_builder.RldsEpisodeBuilder, skip_registration=True):
    """Random MetaWorld-shaped episodes with 4 skills each (values are irrelevant here)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "benchmark data"}
    NUM_EPISODES, NUM_STEPS = 40, 150

    def episode_spec(self):
        return rlds_schema.EpisodeSpec(action_dim=4, proprio_dim=4, state_dim=39,
                                       cameras=("corner",), image_size=(128, 128))

    def generate_episodes(self):
        t = self.NUM_STEPS
        for e in range(self.NUM_EPISODES):
            rng = np.random.default_rng(e)
            segment = np.repeat(np.arange(4), t // 4 + 1)[:t]
            ends = np.searchsorted(segment, np.arange(4), side="right") - 1
            action_abs = np.cumsum(rng.normal(0, 0.01, (t, 4)), 0)
            yield f"ep{e}", {
                "steps": {
                    "observation": {
                        "state": rng.normal(size=(t, 39)), "proprio": action_abs,
                        "image_corner": rng.integers(0, 255, (t, 128, 128, 3), np.uint8)},
                    "action": rng.normal(size=(t, 4)), "action_abs": action_abs,
                    "reward": np.zeros(t), "discount": np.ones(t),
                    "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1,
                    "is_terminal": np.arange(t) == t - 1,
                    "language_instruction": ["pick and place"] * t,
                    "language_embedding": np.zeros((t, 384)),
                    "skill_segment": segment, "skill_label": ["move"] * t,
                    "skill_label_id": segment, "skill_description": ["move"] * t,
                    "is_keyframe": np.isin(np.arange(t), ends),
                    "keypose": action_abs[ends[segment]],
                },
                "episode_metadata": {"episode_id": f"ep{e}", "task": "pick-place"},
            }


def _time(config, batches: int, warmup: int, mesh) -> tuple[float, float]:
    pipe = pipeline.make_pipeline(config)
    it = pipe.iterator()
    for _ in range(warmup):  # fills the shuffle buffers
        it.next_local()
    start = time.perf_counter()
    local = [it.next_local() for _ in range(batches)]
    elapsed = time.perf_counter() - start
    rate = batches * config.batch_size / elapsed
    if mesh is None:
        return rate, float("nan")
    from atomskill_jax.data import mesh_batches
    import jax
    start = time.perf_counter()
    for batch in local:
        jax.block_until_ready(mesh_batches.put_on_mesh(batch, mesh))
    return rate, batches * config.batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", help="a dataset version directory or name")
    parser.add_argument("--images", default=None, help="camera(s) for the image rows")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-mesh", action="store_true", help="skip mesh placement timing")
    args = parser.parse_args(argv)

    dataset, cameras = args.dataset, args.images
    if dataset is None:
        root = tempfile.mkdtemp(prefix="atomskill_bench_")
        print(f"writing a synthetic dataset to {root} ...", flush=True)
        dataset = BenchEpisodes(data_dir=root).build()
        cameras = cameras or "corner"
    mesh = None
    if not args.no_mesh:
        from atomskill_jax.training.mesh import make_mesh
        mesh = make_mesh()

    def row_config(cams, augment):
        config = data_config.default_data_config()
        config.datasets = ({"name": dataset, "weight": 1.0},)
        config.batch_size = args.batch
        config.cameras, config.augment = cams, augment
        return config

    base = row_config((), False)
    rows = [("state", (), False)]
    if cameras:
        cams = tuple(c for c in cameras.split(",") if c)
        rows += [(f"state + {'+'.join(cams)} 128x128", cams, False),
                 (f"state + {'+'.join(cams)} 128x128, augment", cams, True)]
    print(f"\ndataset: {dataset}\nbatch {args.batch}, {args.batches} timed batches after "
          f"{args.warmup} warm-up, H={base.horizon}, L={base.skill_resample_length}\n")
    print(f"{'pipeline':<44} {'examples/s':>12} {'mesh put ex/s':>14}")
    for label, cams, augment in rows:
        rate, put = _time(row_config(cams, augment), args.batches, args.warmup, mesh)
        print(f"{label:<44} {rate:>12.0f} {put:>14.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
