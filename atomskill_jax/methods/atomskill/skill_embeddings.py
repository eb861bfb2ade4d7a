"""Skill embeddings of a trained AtomSkill workdir, one point per skill segment.

    emb = skill_embeddings("runs/a", num_examples=1000)      # training data
    emb.points [N, n*d], emb.labels (names), emb.tasks, emb.uids, emb.code_indices [N, n]

What is embedded: the skill encoder's output *before* quantisation, z_e [n, d], with
its n tokens concatenated in order ([n*d]). Why this and not the alternatives:
- the quantised tokens take at most K values per position, so many segments share
  one point exactly and a t-SNE shows stacked duplicates rather than how the encoder
  arranges skills; z_e is what the contrastive losses act on and is continuous;
- the mean over tokens discards the token order, which the temporal contrastive loss
  (same token *and position*) organises;
- concatenation keeps both. The quantised codes are kept beside (`code_indices`) and
  `kind="quantized"` embeds the concatenated quantised tokens instead.

Examples come from the training input pipeline (`data.pipeline.make_pipeline(...,
train=True)`: shuffled over episodes and steps, normalised with the data's
statistics) like bench/skill_sampler_fidelity.py, with the cameras dropped (the skill
encoder reads only the segment's resampled actions, so images would only cost
decoding). Every step of a segment carries the same `skill/actions`, so the examples
are de-duplicated by `skill/uid` (dataset | episode | segment, traj_transforms.py):
one point per segment, with the episode's task looked up from its metadata.

Reads data with TensorFlow (tf.data); the model is loaded without it
(`policies.loading`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("encoder", "quantized")


@dataclasses.dataclass
class SkillEmbeddings:
    """One row per distinct skill segment."""

    points: np.ndarray        # [N, F] float32, the embedding (see `kind`)
    kind: str                 # "encoder" (pre-quantisation z_e) or "quantized"
    label_ids: np.ndarray     # [N] int32, index in skills.vocabulary.LABELS
    labels: list[str]         # [N] label names
    tasks: list[str]          # [N] task of the segment's episode ("" if unknown)
    uids: np.ndarray          # [N] int64 segment uid
    dataset_index: np.ndarray  # [N] int32
    episode_index: np.ndarray  # [N] int64, index in the dataset's split
    segment_index: np.ndarray  # [N] int32, run index of the segment in its episode
    lengths: np.ndarray       # [N] int32 segment length in steps
    code_indices: np.ndarray  # [N, n] int32 VQ codes of the segment's tokens
    examples_read: int        # training examples read to find them
    step: int                 # checkpoint step of the model
    datasets: list[str]       # dataset directories, by dataset index

    def __len__(self) -> int:
        return len(self.labels)

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        return {
            "points": self.points, "kind": np.asarray(self.kind),
            "label_ids": self.label_ids, "labels": np.asarray(self.labels, dtype=str),
            "tasks": np.asarray(self.tasks, dtype=str), "uids": self.uids,
            "dataset_index": self.dataset_index, "episode_index": self.episode_index,
            "segment_index": self.segment_index, "lengths": self.lengths,
            "code_indices": self.code_indices, "step": np.asarray(self.step),
            "datasets": np.asarray(self.datasets, dtype=str),
        }


def label_name(label_id: int) -> str:
    from atomskill_jax.skills.vocabulary import LABELS

    return LABELS[label_id] if 0 <= label_id < len(LABELS) else f"label_{label_id}"


def check_skill_workdir(workdir: str, step: int | None = None):
    """(assets, checkpoint directory, step) of a workdir whose model has a skill encoder;
    a clear error otherwise (no checkpoint; an ACT-like run)."""
    from atomskill_jax.policies.loading import read_workdir_assets

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    try:
        from atomskill_jax.training import workdir as workdir_layout

        # The skill model is in both stages' checkpoints: a run stopped after the skill
        # stage has one too.
        stage = "sampler" if workdir_layout.has_checkpoints(workdir, "sampler") else "skill"
        assets, directory, step = read_workdir_assets(workdir, step, stage=stage)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{workdir}: no skill model checkpoint to plot ({err})") from None
    model_config = assets["config"]["model"]
    if not bool(model_config.get("decoder", {}).get("skill_conditioning", True)):
        raise ValueError(
            f"{workdir}: this run has no skill encoder (model.decoder.skill_conditioning="
            f"False, the ACT-like baseline), so there are no skill embeddings to plot; "
            f"plot an AtomSkill workdir")
    return assets, directory, step


def load_skill_model(workdir: str, step: int | None = None):
    """(model, config, step): the trained skill encoder and codebook of a workdir.

    Uses `policies.loading.load_model`; a run that stopped after the skill stage (no
    sampler checkpoint, which load_model refuses because it cannot drive a policy)
    still has a trained skill encoder, so that case restores the skill checkpoint
    the same way without the refusal.
    """
    import ml_collections

    from atomskill_jax.policies import loading

    assets, directory, step = check_skill_workdir(workdir, step)
    stage = assets.get("stage", os.path.basename(os.path.dirname(directory)))
    if stage == "sampler":
        model, config, _, step = loading.load_model(workdir, step=step)
        return model, config, step
    from flax import nnx

    from atomskill_jax.training import checkpoints
    from atomskill_jax.training.train_state import build_model

    log.info("%s: no sampler checkpoint; using the skill stage's (step %d)", workdir, step)
    config = ml_collections.ConfigDict(assets["config"])
    abstract_model = nnx.eval_shape(lambda: build_model(config, int(config.seed)))
    graphdef, abstract = nnx.split(abstract_model)
    params, _ = checkpoints.restore_params(
        directory, loading.single_device_target(abstract), step)
    return nnx.merge(graphdef, params), config, step


def _indexed_episodes(source, split: str):
    """(episodes in file order with their tfds ids, steps undecoded; a function from a
    tfds id to the episode index the pipeline puts into segment uids)."""
    from atomskill_jax.data.tf_setup import tf  # noqa: F401  first: keeps TensorFlow off GPUs
    import tensorflow_datasets as tfds

    from atomskill_jax.data import sources

    filenames, offsets = sources.episode_offsets(source, split)
    offset_of = dict(zip(filenames, offsets))
    ds = source.builder.as_dataset(
        split=split, shuffle_files=False,
        read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False),
        decoders={"steps": tfds.decode.SkipDecoding()})

    def index_of(tfds_id: bytes) -> int:
        file_name, _, position = tfds_id.decode().rpartition("__")
        return offset_of[file_name] + int(position)

    return ds, index_of


def episode_tasks(source, split: str = "train", *, with_num_skills: bool = False):
    """Task name of every episode of a dataset's split, by the episode index the
    pipeline puts into segment uids (file offset + position in file); with
    `with_num_skills`, (task, episode_metadata/num_skills) pairs instead."""
    from atomskill_jax.data.tf_setup import tf  # first: keeps TensorFlow off GPUs
    from atomskill_jax.data import read_errors

    ds, index_of = _indexed_episodes(source, split)
    features = source.builder.info.features
    meta_keys = set(features["episode_metadata"].keys()) if (
        "episode_metadata" in features) else set()

    def select(e):  # datasets from other builders may lack either field
        meta = e.get("episode_metadata", {})
        task = meta["task"] if "task" in meta_keys else tf.constant("")
        num_skills = meta["num_skills"] if "num_skills" in meta_keys else tf.constant(0)
        return e["tfds_id"], task, num_skills

    ds = ds.map(select)
    out = {}
    for tfds_id, task, num_skills in read_errors.iterate(ds.as_numpy_iterator(), [source],
                                                         split):  # damaged shards named
        index = index_of(tfds_id)
        out[index] = (task.decode(), int(num_skills)) if with_num_skills else task.decode()
    return out


def collect(model, data_config, num_examples: int = 1000, *, batch_size: int = 256,
            seed: int = 1, kind: str = "encoder", max_examples: int | None = None,
            patience: int = 8, step: int = -1) -> SkillEmbeddings:
    """Read training batches until `num_examples` distinct segments are found (or all
    the data has, by its metadata's segment counts), the data stops yielding new ones
    (`patience` batches in a row) or `max_examples` (default 20 x num_examples +
    patience batches) examples were read; embed the first example of each segment seen."""
    import jax
    import ml_collections
    from flax import nnx

    from atomskill_jax.data import pipeline, traj_transforms

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if model.skill_encoder is None:
        raise ValueError("the model has no skill encoder (decoder.skill_conditioning=False)")
    data = ml_collections.ConfigDict(data_config.to_dict())
    data.batch_size, data.seed = int(batch_size), int(seed)
    data.cameras, data.augment = (), False  # the skill encoder reads actions only
    pipe = pipeline.make_pipeline(data, train=True)
    # Tasks for the points, and how many segments the data holds (builders record
    # num_skills; 0 when unknown, then only `patience` says the data is exhausted).
    episodes = [episode_tasks(s, data.split, with_num_skills=True) for s in pipe.sources]
    total = sum(k for per in episodes for _, k in per.values())
    if total and all(k > 0 for per in episodes for _, k in per.values()):
        num_examples = min(num_examples, total)
    iterator = pipe.iterator()
    max_examples = max_examples or 20 * num_examples + patience * batch_size

    @nnx.jit
    def encode(model, actions):
        z_e = model.skill_encoder(actions)
        codes, indices = model.vq.quantize(z_e)
        return z_e, codes, indices

    seen: dict[int, int] = {}
    rows = {k: [] for k in ("points", "label_ids", "uids", "lengths", "codes")}
    read, stale = 0, 0
    while len(seen) < num_examples and read < max_examples and stale < patience:
        batch = iterator.next_local()
        read += batch_size
        uids = np.asarray(batch["skill"]["uid"], np.int64)
        new = []
        for i, uid in enumerate(uids.tolist()):
            if uid not in seen and len(seen) < num_examples:
                seen[uid] = len(seen)
                new.append(i)
        stale = 0 if new else stale + 1
        if not new:
            continue
        z_e, codes, indices = jax.device_get(encode(model, batch["skill"]["actions"]))
        emb = z_e if kind == "encoder" else codes
        rows["points"].append(np.asarray(emb, np.float32)[new].reshape(len(new), -1))
        rows["label_ids"].append(np.asarray(batch["skill"]["label_id"], np.int32)[new])
        rows["uids"].append(uids[new])
        rows["lengths"].append(np.asarray(batch["skill"]["length"], np.int32)[new])
        rows["codes"].append(np.asarray(indices, np.int32)[new])
    if not seen:
        raise ValueError("no training examples read from the data")
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    decoded = np.array([traj_transforms.decode_segment_uid(u) for u in cat["uids"]],
                       np.int64).reshape(-1, 3)
    tasks = [episodes[d].get(int(e), ("", 0))[0] if d < len(episodes) else ""
             for d, e, _ in decoded.tolist()]
    return SkillEmbeddings(
        points=cat["points"], kind=kind, label_ids=cat["label_ids"],
        labels=[label_name(int(i)) for i in cat["label_ids"]], tasks=tasks,
        uids=cat["uids"], dataset_index=decoded[:, 0].astype(np.int32),
        episode_index=decoded[:, 1], segment_index=decoded[:, 2].astype(np.int32),
        lengths=cat["lengths"], code_indices=cat["codes"], examples_read=read, step=step,
        datasets=[s.directory for s in pipe.sources])


def data_config(config, data: str | None = None):
    """The run's data config, or a copy reading only the dataset directory `data`
    (normalised with that dataset's own statistics, as bench/ does)."""
    if not data:
        return config.data
    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.datasets = ({"name": data, "weight": 1.0},)
    data_cfg.data_dir = ""
    return data_cfg


def skill_embeddings(workdir: str, *, data: str | None = None, num_examples: int = 1000,
                     step: int | None = None, kind: str = "encoder", batch_size: int = 256,
                     seed: int = 1) -> SkillEmbeddings:
    """Load a workdir's skill model and embed up to `num_examples` distinct segments of
    its training data (or of the dataset directory `data`)."""
    model, config, step = load_skill_model(workdir, step)
    return collect(model, data_config(config, data), num_examples, batch_size=batch_size,
                   seed=seed, kind=kind, step=step)


def first_episodes_per_task(dataset: str, *, episode: int = 0, split: str = "train",
                            data_dir: str | None = None) -> dict[str, dict]:
    """{task: the `episode`-th episode of that task (in episode-index order)} as numpy
    (`rlds_schema.Episode` layout: steps without observations, episode_metadata).

    Scans only the metadata, then decodes the chosen episodes' steps; tasks with fewer
    than episode + 1 episodes are left out.
    """
    from atomskill_jax.data import sources  # imports TensorFlow via data.tf_setup

    source = sources.open_source(dataset, data_dir)
    by_task: dict[str, list[int]] = {}
    for index, task in sorted(episode_tasks(source, split).items()):
        by_task.setdefault(task, []).append(index)
    wanted = {ids[episode]: task for task, ids in by_task.items() if len(ids) > episode}
    if not wanted:
        return {}
    ds, index_of = _indexed_episodes(source, split)
    keep = ("action", "action_abs", "is_keyframe", "skill_segment", "skill_label",
            "skill_label_id", "language_instruction", "is_first", "is_last")
    out = {}
    for example in ds:  # eager: only the chosen episodes are converted to numpy
        index = index_of(example["tfds_id"].numpy())
        if index not in wanted:
            continue
        steps = {k: example["steps"][k].numpy() for k in keep if k in example["steps"]}
        meta = {k: (v.numpy().decode() if v.dtype.name == "string" else v.numpy())
                for k, v in example.get("episode_metadata", {}).items()}
        meta["episode_index"] = index
        out[wanted[index]] = {"steps": steps, "episode_metadata": meta}
        if len(out) == len(wanted):
            break
    return dict(sorted(out.items()))


__all__ = ["KINDS", "SkillEmbeddings", "check_skill_workdir", "collect", "data_config",
           "episode_tasks", "first_episodes_per_task", "label_name", "load_skill_model", "skill_embeddings"]
