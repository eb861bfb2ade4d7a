"""The AtomSkill input pipeline: RLDS datasets -> mixed, shuffled, batched examples.

Order (as in octo), per data shard (`shard_layout`: a process reads one or more): per
dataset, read the shard's episodes -> shuffle episodes -> trajectory transforms (chunks,
skill segments, keypose, ids) -> single steps; then mix the datasets by weight ->
shuffle steps -> frame transforms (decode, resize) -> batch -> augment images (batched:
see frame_transforms.py). Images stay encoded until after the step shuffle, so its
buffer stays small. A process's local batch is its shards' batches in shard order.
Every random choice is seeded from `config.seed` (and the shard), so the order is a
function of the seed and `config.shards`, and the iterator state can be saved and
restored (iterator.py).

Example (one step; batches add a leading axis B):
  observation/proprio   float32[P]      observation/state  float32[S] (use_state)
  observation/image_<c> uint8[h, w, 3]  (config.cameras, config.image_size)
  language_embedding    float32[E]
  action_chunk          float32[H, A]   a[t:t+H] in config.action_space
  action_chunk_mask     bool[H]         False past the episode end (last action repeats)
  skill/actions         float32[L, A]   the step's skill segment resampled to L points
  skill/length, skill/start, skill/end  int32 (end inclusive; steps of the episode)
  skill/label_id        int32           skill/uid  int64 (unique segment id)
  keypose               float32[A]      action_abs at the segment's terminal keyframe
  timestep, episode_length, dataset_index   int32
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Sequence

import jax
import ml_collections

from atomskill_jax.data import (frame_transforms, read_errors, sources, statistics_compute,
                                traj_transforms)
from atomskill_jax.data.dataset_entries import parse_entries
from atomskill_jax.data.iterator import DataIterator
from atomskill_jax.data.normalization import Normalizer, normalizer_from_config
from atomskill_jax.data.statistics import DatasetStatistics
from atomskill_jax.data.tf_setup import tf


def dataset_entries(config) -> list[tuple[str, float]]:
    """(name or path, weight) pairs from config.datasets (dicts, or "name:weight" strings);
    `data.dataset_entries.parse_entries` gives the whole entries (standardisation, cameras)."""
    return [(e.name, e.weight) for e in parse_entries(config)]


def derive_seed(seed: int, *tags: Any) -> int:
    """A 31-bit seed per use (files, episodes, mixing...), stable across runs and hosts."""
    digest = hashlib.sha256("/".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def open_sources(config) -> list[sources.DatasetSource]:
    """Open the configured datasets; check each has what the config asks for and that
    all agree on dimensions (mixing needs one example structure)."""
    opened = []
    for entry in parse_entries(config):
        source = sources.open_source(entry.name, config.get("data_dir") or None,
                                     standardize=entry.standardize, cameras=entry.cameras,
                                     split=config.get("split", "train"))
        sources.check_fields(source, cameras=tuple(config.cameras), use_state=config.use_state)
        opened.append(source)
    first = opened[0]
    for other in opened[1:]:
        for dim in ("action_dim", "proprio_dim", "language_dim") + (
                ("state_dim",) if config.use_state else ()):
            if getattr(other, dim) != getattr(first, dim):
                raise sources.DatasetError(
                    f"{other.describe()} has {dim}={getattr(other, dim)} but "
                    f"{first.describe()} has {getattr(first, dim)}; datasets mixed in one "
                    f"pipeline must agree")
    return opened


def default_trajectory_transform(config) -> Callable:
    """The library's per-episode transform (chunks, skill segments, keyposes)."""
    return functools.partial(
        traj_transforms.training_steps, horizon=int(config.horizon),
        resample_length=int(config.skill_resample_length), action_space=config.action_space)


def shard_layout(config, process_index: int, process_count: int) -> tuple[list[int], int]:
    """(this process's data shards, the shard count) of `config.shards`.

    The split's episodes are cut into `shards` even parts (0: one per process), each read
    by its own pipeline into batches of batch_size / shards; process p reads the
    consecutive shards [p * k, (p + 1) * k), k = shards / processes, and its local batch
    is theirs in shard order. So the global batch depends on the shard count only: a
    fixed `shards` gives the same batches, and a checkpoint's data position (saved per
    shard) resumes exactly, on any process count dividing it.
    """
    count = int(config.get("shards", 0) or 0) or process_count
    if count < 1 or count % process_count:
        raise ValueError(f"data.shards={count} does not split over {process_count} processes; "
                         f"use a multiple of {process_count} (or 0: one shard per process)")
    if config.batch_size % count:
        raise ValueError(f"batch size {config.batch_size} does not split over the {count} data "
                         f"shards" + ("" if config.get("shards") else
                                      f" (one per process: {process_count} processes)"))
    per = count // process_count
    return list(range(process_index * per, (process_index + 1) * per)), count


def _per_dataset(source, index: int, config, *, train: bool, shard: int, shard_count: int,
                 trajectory_transform: Callable | None) -> tf.data.Dataset:
    seed = config.seed
    ds = sources.read_episodes(
        source, split=config.split, process_index=shard, process_count=shard_count,
        shuffle_seed=derive_seed(seed, "files", index) if train else None,
        keep_cameras=tuple(config.cameras), keep_state=config.use_state)
    if train:
        ds = ds.repeat().shuffle(config.episode_shuffle_buffer,
                                 seed=derive_seed(seed, "episodes", index))
    transform = trajectory_transform or default_trajectory_transform(config)
    steps = functools.partial(transform, dataset_index=index)
    ds = ds.map(steps, num_parallel_calls=config.num_parallel_calls, deterministic=True)
    return ds.unbatch()


def build_shard(config, opened: Sequence[sources.DatasetSource], *, train: bool = True,
                shard: int = 0, shard_count: int = 1,
                trajectory_transform: Callable | None = None) -> tf.data.Dataset:
    """One data shard's batches (batch_size / shard_count examples) as a tf.data.Dataset.
    Its seeds depend on the shard only, never on which process reads it."""
    if config.batch_size % shard_count:
        raise ValueError(f"batch size {config.batch_size} does not split over "
                         f"{shard_count} data shards")
    shard_batch = config.batch_size // shard_count
    weights = [w for _, w in dataset_entries(config)]
    per_dataset = [_per_dataset(s, i, config, train=train, shard=shard,
                                shard_count=shard_count,
                                trajectory_transform=trajectory_transform)
                   for i, s in enumerate(opened)]
    if len(per_dataset) == 1:
        ds = per_dataset[0]
    else:
        total = sum(weights)
        ds = tf.data.Dataset.sample_from_datasets(
            per_dataset, weights=[w / total for w in weights],
            seed=derive_seed(config.seed, "mix"), stop_on_empty_dataset=False)
    if train:
        ds = ds.shuffle(config.example_shuffle_buffer, seed=derive_seed(config.seed, "steps"))
    cameras = tuple(config.cameras)
    frame = functools.partial(frame_transforms.process_frame, cameras=cameras,
                              size=tuple(config.image_size))
    ds = ds.map(frame, num_parallel_calls=config.num_parallel_calls, deterministic=True)
    ds = ds.batch(shard_batch, drop_remainder=True)
    if train and config.augment and cameras:
        aug_seed = derive_seed(config.seed, "augment", shard)

        def augment(position, batch):  # randomness from (seed, batch position) only
            return frame_transforms.augment_batch(
                batch, tf.stack([tf.constant(aug_seed, tf.int64), position]), cameras=cameras,
                augment_kwargs=dict(config.augment_kwargs))

        ds = ds.enumerate().map(augment, num_parallel_calls=config.num_parallel_calls,
                                deterministic=True)
    ds = ds.prefetch(config.prefetch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def build_shards(config, opened: Sequence[sources.DatasetSource], *, train: bool = True,
                 process_index: int = 0, process_count: int = 1,
                 trajectory_transform: Callable | None = None):
    """{shard: its batches} for this process's shards (`shard_layout`), and the count."""
    shards, count = shard_layout(config, process_index, process_count)
    return {s: build_shard(config, opened, train=train, shard=s, shard_count=count,
                           trajectory_transform=trajectory_transform) for s in shards}, count


def build_dataset(config, opened: Sequence[sources.DatasetSource], *, train: bool = True,
                  process_index: int = 0, process_count: int = 1,
                  trajectory_transform: Callable | None = None) -> tf.data.Dataset:
    """Local batches (this process's share: batch_size / process_count) as a tf.data.Dataset:
    its shards' batches joined in shard order (one shard per process: that shard's)."""
    if config.batch_size % process_count:
        raise ValueError(f"batch size {config.batch_size} does not split over "
                         f"{process_count} processes")
    per_shard, _ = build_shards(config, opened, train=train, process_index=process_index,
                                process_count=process_count,
                                trajectory_transform=trajectory_transform)
    if len(per_shard) == 1:
        return next(iter(per_shard.values()))
    return tf.data.Dataset.zip(tuple(per_shard.values())).map(
        lambda *batches: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *batches))


@dataclasses.dataclass
class DataPipeline:
    """Opened datasets, their statistics and a way to iterate them.

    Each `dataset()` / `iterator()` call builds the tf.data graph afresh: a re-iterated
    tf.data object would continue its shuffle seeds (reshuffle_each_iteration) and
    start elsewhere, while a fresh one always starts at the seed's first batch.
    """

    sources: list[sources.DatasetSource]
    statistics: list[DatasetStatistics]  # what normalises (the data's own, or given)
    # The data's own statistics (its sizes count epochs), whichever normalise it.
    data_statistics: list[DatasetStatistics]
    normalizer: Normalizer
    global_batch_size: int
    build: Callable[[], tf.data.Dataset]
    split: str = "train"
    # () -> ({shard: batches}, shard count): what `iterator()` reads (None: `build`, one
    # shard per process).
    build_shards: Callable[[], tuple[dict, int]] | None = None

    def dataset(self) -> tf.data.Dataset:
        """Local batches (this process's share), before normalisation. Iterate it with
        `numpy_batches` to have damaged shards named."""
        return self.build()

    def numpy_batches(self):
        """Local batches as numpy, before normalisation; read errors name the shard."""
        return read_errors.iterate(self.build().as_numpy_iterator(), self.sources, self.split)

    def explain_error(self, err: Exception):
        """The DatasetError naming the damaged shard behind TensorFlow's `err` (or None)."""
        return read_errors.explain(err, self.sources, self.split)

    def iterator(self, mesh=None) -> DataIterator:
        """Normalised local batches; one tf.data iterator per data shard, so its saved
        position is per shard and restores under another process count."""
        if self.build_shards is None:
            datasets, shards, count = [self.build()], None, None
        else:
            per_shard, count = self.build_shards()
            datasets, shards = list(per_shard.values()), list(per_shard)
        return DataIterator(datasets, shards=shards, shard_count=count,
                            normalize=self.normalizer.normalize, mesh=mesh,
                            global_batch_size=self.global_batch_size,
                            explain_error=self.explain_error)


def make_pipeline(config, *, train: bool = True, process_index: int | None = None,
                  process_count: int | None = None, trajectory_transform: Callable | None = None,
                  normalizer_keys: Callable[[str], dict] | None = None,
                  statistics: Sequence[DatasetStatistics] | None = None) -> DataPipeline:
    """Open the datasets, load (or compute once) their statistics, build the pipeline.

    `trajectory_transform(episode, dataset_index=i)`: the method's per-episode examples
    (None: the default, chunks + skill segments + keyposes); `normalizer_keys(action
    space)`: which batch keys it normalises with which statistics field (None: the
    default's). `statistics` (one per dataset): normalise with these instead of the data's
    own, e.g. a pre-training run's (`data.statistics_from`, resolved by the trainer), so
    a frozen pre-trained encoder sees inputs scaled as in pre-training.

    train=True: endless, shuffled, augmented. train=False: one pass over this process's
    episodes in file order, no shuffling or augmentation (the tail that does not fill
    a batch is dropped; processes may see different numbers of batches).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    opened = open_sources(config)
    own = [statistics_compute.load_or_compute_statistics(s, config.split) for s in opened]
    if statistics is not None and len(statistics) != len(opened):
        raise ValueError(f"{len(statistics)} statistics given for {len(opened)} datasets")
    stats = own if statistics is None else list(statistics)
    config = ml_collections.ConfigDict(config.to_dict())  # later edits must not leak in
    build = functools.partial(build_dataset, config, opened, train=train,
                              process_index=process_index, process_count=process_count,
                              trajectory_transform=trajectory_transform)
    shards = functools.partial(build_shards, config, opened, train=train,
                               process_index=process_index, process_count=process_count,
                               trajectory_transform=trajectory_transform)
    build()  # fail now, not at the first batch, if the graph cannot be built
    normalizer = normalizer_from_config(config, stats)
    if normalizer_keys is not None:
        normalizer = dataclasses.replace(normalizer, keys=normalizer_keys(config.action_space))
    return DataPipeline(sources=opened, statistics=stats, data_statistics=own,
                        normalizer=normalizer,
                        global_batch_size=int(config.batch_size), build=build,
                        split=config.split, build_shards=shards)

