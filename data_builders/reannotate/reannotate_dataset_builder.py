"""Re-annotate the atomic skills of an existing RLDS dataset, without new rollouts.

    atomskill annotate --data=SRC_VERSION_DIR --annotator=vlm --out=DIR

Reads every episode of the source, cuts it again at gripper keyframes, labels the
segments with the chosen backend, and writes a copy (same features, same episode
ids) named `<source>_<annotator>` under DIR. An episode that cannot be read or
annotated is skipped and counted; the others are written.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema

# Which gripper layout each builder's episodes have (segmentation needs it).
EMBODIMENT_BY_BUILDER = {"metaworld_scripted": "metaworld_sawyer", "libero_hdf5": "libero_panda",
                         "aloha_hdf5": "aloha", "aloha_sim_scripted": "aloha",
                         "rlbench": "rlbench_panda"}
_STANDARD_FLOAT = {"action", "action_abs", "keypose", "reward", "discount", "language_embedding"}


@dataclasses.dataclass(eq=False)
class ReannotateConfig(tfds.core.BuilderConfig):
    source_dir: str = ""
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    embodiment: str = ""
    # Which gripper signal the keyframes come from: "action" (the command) or
    # "proprio" (the observed opening, as RLBench's gripper_open; see skills/keyframes).
    gripper_signal: str = "action"


def spec_from_features(features) -> rlds_schema.EpisodeSpec:
    """The EpisodeSpec of an existing dataset, read off its features."""
    steps = features["steps"]
    obs = steps["observation"]
    cameras = tuple(k[len("image_"):] for k in obs.keys() if k.startswith("image_"))
    image_size = tuple(obs[f"image_{cameras[0]}"].shape[:2]) if cameras else (128, 128)
    extras = tuple((k, tuple(v.shape)) for k, v in steps.items()
                   if isinstance(v, tfds.features.Tensor) and k not in _STANDARD_FLOAT
                   and np.dtype(v.np_dtype) == np.float32)
    return rlds_schema.EpisodeSpec(
        action_dim=steps["action"].shape[0], proprio_dim=obs["proprio"].shape[0],
        state_dim=obs["state"].shape[0] if "state" in obs.keys() else None,
        language_dim=steps["language_embedding"].shape[0], cameras=cameras,
        image_size=image_size, extra_float_fields=extras)


def episode_to_numpy(episode) -> rlds_schema.Episode:
    """A decoded RLDS episode (tfds.as_numpy) in the builders' columnar form."""
    rows = list(episode["steps"])
    if not rows:
        meta = _decode(episode["episode_metadata"])
        raise rlds_schema.EpisodeError(str(meta.get("episode_id")), "steps", "no steps")
    steps = {}
    for key in rows[0]:
        if key == "observation":
            steps[key] = {k: np.stack([r[key][k] for r in rows]) for k in rows[0][key]}
        elif isinstance(rows[0][key], bytes):
            steps[key] = [r[key].decode() for r in rows]
        else:
            steps[key] = np.stack([r[key] for r in rows])
    return {"steps": steps, "episode_metadata": _decode(episode["episode_metadata"])}


def _decode(meta: dict) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in meta.items()}


class Reannotated(episode_builder.RldsEpisodeBuilder):
    """A copy of an RLDS dataset with its atomic skills annotated again."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Re-annotation of an existing dataset."}
    BUILDER_CONFIGS = [ReannotateConfig(name="default")]

    def _source(self):
        return tfds.builder_from_directory(self.builder_config.source_dir)

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        return spec_from_features(self._source().info.features)

    def generate_episodes(self):
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        source = self._source()
        # Shard by shard, record by record: a corrupt shard loses only what follows
        # the damage in that shard; the other shards are still read.
        for path in _shard_files(cfg.source_dir, source):
            index = 0
            records = iter(tfds.as_numpy(tf.data.TFRecordDataset(path)))
            while True:
                try:
                    serialized = next(records)
                except StopIteration:
                    break
                except Exception as err:  # noqa: BLE001 - e.g. DataLossError
                    yield f"{os.path.basename(path)}#{index}", _raiser(OSError(
                        f"unreadable record {index} of {path} (the rest of this shard is "
                        f"lost): {type(err).__name__}: {str(err).splitlines()[0]}"))
                    break
                index += 1
                yield f"{os.path.basename(path)}#{index - 1}", (
                    lambda s=serialized: self._relabel(
                        _decode_record(source, s), annotator))

    def _relabel(self, raw, annotator):
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        episode = episode_to_numpy(raw)
        steps, meta = episode["steps"], episode["episode_metadata"]
        frames = {k[len("image_"):]: v for k, v in steps["observation"].items()
                  if k.startswith("image_")} or None
        skills = annotate.annotate_episode(
            episode_id=meta["episode_id"], task=meta["task"],
            instruction=steps["language_instruction"][0], action=steps["action"],
            action_abs=steps["action_abs"], proprio=steps["observation"]["proprio"],
            embodiment=cfg.embodiment, annotator=annotator, frames=frames,
            signal=cfg.gripper_signal)
        steps.update(skills)
        meta["num_skills"] = int(np.max(skills["skill_segment"])) + 1
        meta["annotator"] = cfg.annotator
        return episode


def _shard_files(source_dir: str, source) -> list[str]:
    prefix = f"{source.name}-train.tfrecord"
    files = sorted(os.path.join(source_dir, f) for f in os.listdir(source_dir)
                   if f.startswith(prefix))
    if not files:
        raise FileNotFoundError(f"no {prefix}* files in {source_dir}")
    return files


def _decode_record(source, serialized: bytes):
    """One serialized RLDS episode -> numpy (nested steps as a list of dicts)."""
    decoded = source.info.features.deserialize_example(serialized)
    return tfds.as_numpy(decoded)


def _raiser(err):
    def raise_it():
        raise err
    return raise_it


def reannotate(source_dir: str, out_dir: str, *, annotator: str = "rule",
               annotator_options: dict | None = None, embodiment: str | None = None,
               gripper_signal: str = "action"):
    """Write a re-annotated copy of `source_dir` under `out_dir`; (dataset dir, report).

    The copy is named `<source>_<annotator>`, with `_proprio` appended when the keyframes
    come from the observed gripper opening (`gripper_signal="proprio"`)."""
    if gripper_signal not in ("action", "proprio"):
        raise ValueError(f"gripper_signal must be 'action' or 'proprio', got {gripper_signal!r}")
    if not os.path.exists(os.path.join(source_dir, "dataset_info.json")):
        raise FileNotFoundError(
            f"{source_dir} is not a tensorflow-datasets version directory "
            "(no dataset_info.json); pass the directory that holds the tfrecord files")
    source = tfds.builder_from_directory(source_dir)
    if embodiment is None:
        embodiment = EMBODIMENT_BY_BUILDER.get(source.name)
        if embodiment is None:
            raise ValueError(f"cannot tell the gripper layout of dataset {source.name!r}; "
                             "pass --embodiment")
    name = f"{source.name}_{source.builder_config.name if source.builder_config else 'data'}"
    suffix = "" if gripper_signal == "action" else f"_{gripper_signal}"
    config = ReannotateConfig(
        name=f"{name}_{annotator}{suffix}".replace("-", "_"),
        source_dir=os.path.abspath(source_dir),
        annotator=annotator, annotator_options=dict(annotator_options or {}),
        embodiment=embodiment, gripper_signal=gripper_signal,
        description=f"{source_dir} re-annotated by {annotator} (keyframes from the "
                    f"gripper {gripper_signal})")
    builder = Reannotated(config=config, data_dir=out_dir)
    dataset_dir = builder.build()
    return dataset_dir, episode_builder.read_build_report(dataset_dir) or {}
