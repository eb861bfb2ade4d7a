"""Find, open and read RLDS datasets written with tensorflow-datasets.

A dataset is named either by a directory (its version directory, or a directory
holding version directories: the newest is taken) or by a name resolved under a data
root (`data_dir`, else $ATOMSKILL_DATA_DIR, else ~/tensorflow_datasets), e.g.
"metaworld_scripted/rlbench6" -> <root>/metaworld_scripted/rlbench6/<newest version>.
Paths go through tf.io.gfile so gs:// buckets work on TPU pods.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from atomskill_jax.data.tf_setup import tf  # first: hides GPUs before anything uses TF

import tensorflow_datasets as tfds  # noqa: E402  (after tf_setup on purpose)

DATA_DIR_ENV = "ATOMSKILL_DATA_DIR"
INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"

# Step fields every training example is built from (the RLDS data contract).
REQUIRED_STEP_FIELDS = ("action", "action_abs", "keypose", "skill_segment", "skill_label_id",
                        "language_embedding")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the dataset and the field."""


def data_root(data_dir: str | None = None) -> str:
    return (data_dir or os.environ.get(DATA_DIR_ENV)
            or os.path.expanduser("~/tensorflow_datasets"))


def _version_dirs(path: str) -> list[tuple[tfds.core.Version, str]]:
    found = []
    for entry in tf.io.gfile.listdir(path):
        entry = entry.rstrip("/")
        if tfds.core.Version.is_valid(entry) and tf.io.gfile.exists(
                os.path.join(path, entry, INFO_FILE)):
            found.append((tfds.core.Version(entry), os.path.join(path, entry)))
    return sorted(found)


def resolve_dataset_dir(name_or_path: str, data_dir: str | None = None) -> str:
    """The version directory of a dataset given by path or by name under the data root."""
    if tf.io.gfile.isdir(name_or_path):
        path = name_or_path
    else:
        root = data_root(data_dir)
        path = os.path.join(root, name_or_path)
        if not tf.io.gfile.isdir(path):
            raise DatasetError(
                f"dataset {name_or_path!r}: no such directory, and not found under the data "
                f"root {root!r} (set data_dir or ${DATA_DIR_ENV}, or build it with "
                f"`atomskill build-data`)")
    if tf.io.gfile.exists(os.path.join(path, INFO_FILE)):
        return path
    versions = _version_dirs(path)
    if versions:
        return versions[-1][1]
    children = [c.rstrip("/") for c in tf.io.gfile.listdir(path)
                if tf.io.gfile.isdir(os.path.join(path, c))]
    configs = [c for c in children if _version_dirs(os.path.join(path, c))]
    if configs:
        raise DatasetError(
            f"dataset {name_or_path!r} ({path}) has several configs: {', '.join(sorted(configs))}; "
            f"name one, e.g. {name_or_path.rstrip('/')}/{sorted(configs)[0]!s}")
    raise DatasetError(
        f"dataset {name_or_path!r}: {path} is not an RLDS dataset written by "
        f"tensorflow-datasets (no {INFO_FILE} in it or in a version subdirectory "
        f"such as {path}/1.0.0)")


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """An opened dataset and what its episodes hold."""

    name: str  # as given in the config (for messages)
    directory: str  # its version directory
    builder: tfds.core.DatasetBuilder
    action_dim: int
    proprio_dim: int
    state_dim: int | None
    cameras: tuple[str, ...]  # the names the model reads them by (after camera mapping)
    language_dim: int
    # A foreign dataset's standardisation (standardize.PreparedStandardization), applied
    # as episodes are read; None for datasets in the project's schema.
    standardization: Any = None
    # Model camera name -> the observation key holding its images.
    camera_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def num_episodes(self, split: str = "train") -> int:
        return self.builder.info.splits[split].num_examples

    def camera_key(self, camera: str) -> str:
        return self.camera_keys.get(camera, f"image_{camera}")

    def describe(self) -> str:
        std = (f", standardised as {self.standardization.name!r}"
               if self.standardization is not None else "")
        if os.path.normpath(self.name) == os.path.normpath(self.directory):
            return f"dataset {self.directory}{std}"  # given by its path: once is enough
        return f"dataset {self.name!r} ({self.directory}{std})"


def _load_json(path: str, directory: str):
    from atomskill_jax.data.rebuild_hint import rebuild_advice

    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} "
                           f"column {err.colno}): the dataset's metadata is damaged; "
                           f"{rebuild_advice(directory)}") from err
    except (UnicodeDecodeError, tf.errors.OpError, OSError) as err:
        raise DatasetError(f"{path} cannot be read ({type(err).__name__}: {err}); "
                           f"{rebuild_advice(directory)}") from err


def check_info_file(directory: str) -> None:
    """Raise a DatasetError naming dataset_info.json (or features.json) if it is not
    valid JSON or lacks what reading needs (tensorflow-datasets' own errors name
    neither file nor key)."""
    from atomskill_jax.data.rebuild_hint import rebuild_advice

    path = os.path.join(directory, INFO_FILE)
    info = _load_json(path, directory)

    def bad(what: str):
        return DatasetError(f"{path}: {what}: the dataset's metadata is damaged; "
                            f"{rebuild_advice(directory)}")

    if not isinstance(info, dict):
        raise bad(f"expected a JSON object, found {type(info).__name__}")
    for key in ("name", "version", "splits"):
        if key not in info:
            raise bad(f"key {key!r} missing")
    if not isinstance(info["splits"], list) or not info["splits"]:
        raise bad("'splits' is not a non-empty list")
    for i, split in enumerate(info["splits"]):
        if not isinstance(split, dict) or "name" not in split:
            raise bad(f"splits[{i}] has no 'name'")
        lengths = split.get("shardLengths")
        if not isinstance(lengths, list) or not lengths:
            raise bad(f"splits[{i}] ({split['name']!r}): 'shardLengths' missing or empty")
        if not all(str(n).isdigit() for n in lengths):
            raise bad(f"splits[{i}] ({split['name']!r}): 'shardLengths' {lengths} are not "
                      f"episode counts")
    features = os.path.join(directory, FEATURES_FILE)
    if tf.io.gfile.exists(features):
        _load_json(features, directory)


def open_source(name_or_path: str, data_dir: str | None = None, *, standardize=None,
                cameras: Mapping[str, str] | None = None, split: str = "train",
                embed_fn=None) -> DatasetSource:
    """Open a dataset. `standardize` (a registered name, a mapping or a parsed
    Standardization) reads a foreign RLDS layout as the project's schema (see
    data/standardize.py; `split` is the one whose instructions are embedded, `embed_fn`
    replaces the sentence encoder); `cameras` maps model camera names to the dataset's
    cameras ({"front": "corner"} reads image_corner as "front")."""
    directory = resolve_dataset_dir(name_or_path, data_dir)
    check_info_file(directory)
    try:
        builder = tfds.builder_from_directory(directory)
        features = builder.info.features
    except Exception as err:  # noqa: BLE001 - any failure here means "not readable"
        from atomskill_jax.data.rebuild_hint import rebuild_advice

        raise DatasetError(f"{type(err).__name__}: {err} (tensorflow-datasets cannot open "
                           f"{directory}: its {INFO_FILE} or {FEATURES_FILE} is damaged "
                           f"or from another tfds version); {rebuild_advice(directory)}") from err
    where = f"dataset {name_or_path!r} ({directory})"
    if "steps" not in features or not isinstance(features["steps"], tfds.features.Dataset):
        raise DatasetError(f"{where} is not RLDS: it has no nested 'steps' feature "
                           f"(features: {', '.join(features.keys())})")
    steps = features["steps"]
    if "observation" not in steps:
        raise DatasetError(f"{where}: field 'steps/observation' missing")
    obs = steps["observation"]
    if standardize is not None:
        return _open_standardized(name_or_path, directory, builder, where, obs, standardize,
                                  cameras, split, embed_fn)
    for field in REQUIRED_STEP_FIELDS:
        if field not in steps:
            raise DatasetError(f"{where}: field 'steps/{field}' missing (the RLDS data "
                               f"contract in ARCHITECTURE.md); rebuild it with its builder, "
                               f"or read a foreign layout with a 'standardize' entry")
    if "proprio" not in obs:
        raise DatasetError(f"{where}: field 'steps/observation/proprio' missing")
    native = {k[len("image_"):]: k for k in obs.keys() if k.startswith("image_")}
    keys = {**native, **camera_keys(obs, cameras or {}, where)}  # a mapping adds names
    return DatasetSource(
        name=name_or_path, directory=directory, builder=builder,
        action_dim=int(steps["action"].shape[-1]),
        proprio_dim=int(obs["proprio"].shape[-1]),
        state_dim=int(obs["state"].shape[-1]) if "state" in obs else None,
        cameras=tuple(keys), camera_keys=keys,
        language_dim=int(steps["language_embedding"].shape[-1]))


def _open_standardized(name_or_path, directory, builder, where, obs, standardize, cameras,
                       split, embed_fn) -> DatasetSource:
    from atomskill_jax.data import standardize as standardize_lib
    from atomskill_jax.data.standardize_spec import (Standardization, StandardizationError,
                                                     parse_standardization)

    try:
        spec = (standardize if isinstance(standardize, Standardization)
                else parse_standardization(standardize, f"{where}: standardize"))
        prepared = standardize_lib.prepare(spec, builder, directory, split=split, where=where,
                                           embed_fn=embed_fn)
    except (StandardizationError, standardize_lib.PrepareError) as err:
        raise DatasetError(str(err)) from err
    # The standardisation's camera roles, then the entry's own (which win).
    keys = camera_keys(obs, {**spec.cameras, **(cameras or {})}, where)
    return DatasetSource(
        name=name_or_path, directory=directory, builder=builder,
        action_dim=prepared.action_dim, proprio_dim=prepared.proprio_dim,
        state_dim=prepared.state_dim, cameras=tuple(keys), camera_keys=keys,
        language_dim=prepared.language_dim, standardization=prepared)


def camera_keys(obs_feature, mapping: Mapping[str, str], where: str) -> dict[str, str]:
    """{model camera: observation key} for a camera mapping, checked against the features.
    A value names a camera ("corner" -> image_corner) or an observation key ("image")."""
    out = {}
    keys = list(obs_feature.keys())
    for camera, value in mapping.items():
        key = f"image_{value}" if f"image_{value}" in keys else value
        if key not in keys:
            raise DatasetError(
                f"{where}: camera {camera!r} is mapped to {value!r}, but neither "
                f"'steps/observation/image_{value}' nor 'steps/observation/{value}' exists "
                f"(observation has: {', '.join(sorted(keys))})")
        feature = obs_feature[key]
        shape = tuple(getattr(feature, "shape", ()) or ())
        if not (isinstance(feature, tfds.features.Image) or len(shape) == 3):
            raise DatasetError(f"{where}: camera {camera!r} is mapped to "
                               f"'steps/observation/{key}', which is not an image "
                               f"({type(feature).__name__}, shape {shape})")
        out[camera] = key
    return out


def check_fields(source: DatasetSource, *, cameras=(), use_state: bool = False) -> None:
    """Raise a DatasetError naming the dataset and field the config asks for but it lacks."""
    for cam in cameras:
        if cam not in source.cameras:
            have = ", ".join(source.cameras) or "none"
            raise DatasetError(f"{source.describe()}: field 'steps/observation/image_{cam}' "
                               f"missing (it has cameras: {have}); fix data.cameras, or map "
                               f"the camera in this dataset's entry, e.g. "
                               f"{{'cameras': {{{cam!r}: '<its camera>'}}}}")
    if use_state and source.state_dim is None:
        raise DatasetError(f"{source.describe()}: field 'steps/observation/state' missing; "
                           f"set data.use_state=False for datasets without simulator state")


def episode_offsets(source: DatasetSource, split: str):
    """File names and the global index of each file's first episode (from dataset_info)."""
    info = source.builder.info.splits[split]
    lengths = [int(n) for n in info.shard_lengths]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    return list(info.filenames), offsets


def read_episodes(source: DatasetSource, *, split: str = "train", process_index: int = 0,
                  process_count: int = 1, shuffle_seed: int | None = None,
                  keep_cameras=(), keep_state: bool = False) -> tf.data.Dataset:
    """This process's share of episodes, each a dict of per-step tensors [T, ...]
    (`process_index` of `process_count`: the pipeline passes a data shard of the count).

    Adds `episode_index` (int64): the episode's index in the whole split, stable
    across processes and runs (file offset + position in file, from its tfds id).
    Images stay encoded (decoded per frame later); unused fields are dropped early so
    shuffle buffers and saved iterator states stay small.
    """
    if split not in source.builder.info.splits:
        raise DatasetError(f"{source.describe()}: no split {split!r} "
                           f"(has {', '.join(source.builder.info.splits.keys())})")
    if source.num_episodes(split) < process_count:
        raise DatasetError(f"{source.describe()}: {source.num_episodes(split)} episodes in "
                           f"split {split!r}, fewer than the {process_count} data shards "
                           f"(data.shards; 0: one per process)")
    sub_split = tfds.even_splits(split, n=process_count)[process_index]
    read_config = tfds.ReadConfig(add_tfds_id=True, try_autocache=False,
                                  shuffle_seed=shuffle_seed)
    ds = source.builder.as_dataset(
        split=sub_split, shuffle_files=shuffle_seed is not None, read_config=read_config,
        decoders={"steps": tfds.decode.SkipDecoding()})
    filenames, offsets = episode_offsets(source, split)
    filenames_t = tf.constant(filenames)
    offsets_t = tf.constant(offsets, tf.int64)
    low_dim = ["proprio"] + (["state"] if keep_state else [])
    standardization = source.standardization

    def select(episode):
        # tfds id: "<file name>__<position in file>" (file names may contain "__").
        tfds_id = episode["tfds_id"]
        file_name = tf.strings.regex_replace(tfds_id, "__[0-9]+$", "")
        position = tf.strings.to_number(tf.strings.regex_replace(tfds_id, "^.*__", ""), tf.int64)
        file_slot = tf.where(tf.equal(filenames_t, file_name))[:, 0]
        tf.debugging.assert_equal(tf.size(file_slot), 1, message=(
            f"{source.describe()}: an episode's file is not listed in dataset_info.json"))
        steps = episode["steps"]
        if standardization is None:
            out = {k: steps[k] for k in REQUIRED_STEP_FIELDS}
            observation = steps["observation"]
        else:  # a foreign layout, read as the project's fields
            out = standardization.standardize(steps)
            observation = out.pop("observation")
        out["observation"] = {k: observation[k] for k in low_dim}
        for cam in keep_cameras:  # under the model's camera names
            out["observation"][f"image_{cam}"] = steps["observation"][source.camera_key(cam)]
        out["episode_index"] = tf.gather(offsets_t, file_slot)[0] + position
        return out

    return ds.map(select)
