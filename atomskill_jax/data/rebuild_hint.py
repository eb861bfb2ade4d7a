"""How to rebuild a damaged dataset: the command, worked out from what its build left.

Read from plain JSON beside the data (no TensorFlow, nothing imported from
data_builders), so the hint works even when dataset_info.json itself is the damage:
- `build_options.json` (written by `atomskill build-data metaworld`) gives the exact
  `build-data` command; `--overwrite` is needed, since a build with the same options
  is otherwise reused as it is.
- a re-annotated copy (tfds name `reannotated`) names its source and annotator in
  dataset_info.json; `atomskill annotate` reuses an existing output, so the damaged
  copy must be deleted first.
Anything else gets the generic advice.
"""

from __future__ import annotations

import json
import os
import shlex

BUILD_OPTIONS_FILE = "build_options.json"  # data_builders/metaworld_scripted writes it
INFO_FILE = "dataset_info.json"
REANNOTATED_NAME = "reannotated"  # tfds name of data_builders/reannotate's builder

# build_options.json key -> (`build-data metaworld` flag, the flag's default there).
_METAWORLD_FLAGS = (
    ("episodes_per_task", "--episodes-per-task", 10),
    ("seed", "--seed", 0),
    ("action_noise_std", "--action-noise", 0.0),
    ("max_steps", "--max-steps", 500),
    ("post_success_steps", "--post-success-steps", 0),
    ("layout_split", "--layout-split", "train"),
    ("layout_offset", "--layout-offset", 0),
    ("annotator", "--annotator", "rule"),
)


def _read_json(path: str):
    try:
        if "://" in path:
            from atomskill_jax.data.tf_setup import tf
            with tf.io.gfile.GFile(path, "r") as f:
                return json.load(f)
        with open(path) as f:
            return json.load(f)
    except Exception:  # noqa: BLE001 - a hint must never turn into a second error
        return None


def _data_root(directory: str) -> str:
    # <root>/<builder name>/<config name>/<version>: both builders write configs.
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(directory))))


def _metaworld_command(directory: str, options: dict) -> str:
    config_name = os.path.basename(os.path.dirname(os.path.normpath(directory)))
    args = ["atomskill", "build-data", "metaworld"]
    if config_name != "custom":
        args.append(f"--suite={config_name}")
    else:
        args.append(f"--tasks={','.join(options.get('tasks', []))}")
    for key, flag, default in _METAWORLD_FLAGS:
        if key in options and options[key] != default:
            args.append(f"{flag}={options[key]}")
    if options.get("only_successful") is False:
        args.append("--keep-failed")
    if options.get("cameras"):
        args.append(f"--cameras={','.join(options['cameras'])}")
        size = options.get("image_size") or (128, 128)
        if list(size) != [128, 128]:
            args.append(f"--image-size={size[0]}x{size[1]}")
        if options.get("render_quality"):  # always named: the default may change
            args.append(f"--render-quality={options['render_quality']}")
    if options.get("annotator_options"):
        args.append(f"--annotator-options={json.dumps(options['annotator_options'])}")
    args += [f"--out={_data_root(directory)}", "--overwrite"]
    return shlex.join(args)


def _reannotate_command(directory: str, info: dict) -> str | None:
    # The builder's description: "<source dir> re-annotated by <annotator>".
    described = str(info.get("configDescription", ""))
    source, sep, annotator = described.rpartition(" re-annotated by ")
    if not sep:
        return None
    args = ["atomskill", "annotate", f"--data={source}", f"--annotator={annotator}",
            f"--out={_data_root(directory)}"]
    return (f"delete {directory}, then run `{shlex.join(args)}` (add the "
            f"--annotator-options it was made with, if any; if the source is damaged "
            f"too, rebuild it first)")


def rebuild_advice(directory: str) -> str:
    """One sentence: how to rebuild the dataset in `directory` (a version directory)."""
    options = _read_json(os.path.join(directory, BUILD_OPTIONS_FILE))
    if isinstance(options, dict) and "tasks" in options:
        return f"rebuild it: `{_metaworld_command(directory, options)}`"
    info = _read_json(os.path.join(directory, INFO_FILE))
    if isinstance(info, dict) and info.get("name") == REANNOTATED_NAME:
        command = _reannotate_command(directory, info)
        if command:
            return f"it is a re-annotated copy: {command}"
    return (f"rebuild {directory} with the builder that wrote it (`atomskill build-data "
            f"SOURCE --out=DIR --overwrite`, or delete it and rerun `atomskill annotate` "
            f"for a re-annotated copy)")
