"""How a dataset's camera frames were made, so evaluation can make them the same way.

A policy trained on images must see, in closed loop, frames rendered and scaled as its
training frames were: same native size (the pipeline then resizes both alike), same
renderer settings (MetaWorld's shadows, shadow map, reflections). The builders record
these in `build_options.json` beside the data (`cameras`, `image_size`, and for
MetaWorld `render_settings`); this module reads them back. JSON only: evaluation
workers never import TensorFlow.

An image source is a dict: {"dataset": version directory, "cameras": [...],
"image_size": [h, w], "render_settings": {...} or None (a build that predates them)},
and from `policy_image_source` also "camera_map": {model camera: dataset camera}.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

BUILD_OPTIONS_FILE = "build_options.json"


def read_image_source(dataset_dir: str) -> dict[str, Any] | None:
    """The image source of one dataset (None: no options file, or no cameras)."""
    path = os.path.join(str(dataset_dir), BUILD_OPTIONS_FILE)
    try:
        with open(path) as f:
            options = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable build options ({err}); rebuild the dataset "
                         f"or restore the file") from err
    cameras = list(options.get("cameras") or ())
    if not cameras:
        return None
    if "image_size" not in options:
        raise ValueError(f"{path}: cameras {cameras} but no image_size recorded")
    return {"dataset": str(dataset_dir), "cameras": cameras,
            "image_size": [int(s) for s in options["image_size"]],
            "render_settings": options.get("render_settings")}


def _dataset_camera(value: str) -> str:
    """A camera mapping's value as the simulator's camera name (image_corner -> corner)."""
    return value[len("image_"):] if value.startswith("image_") else value


def policy_image_source(dataset_dirs: Sequence[str], cameras: Sequence[str],
                        camera_maps: Sequence[Mapping[str, str]] | None = None
                        ) -> dict[str, Any] | None:
    """The image source a policy using `cameras` was trained on: that of the first
    dataset recording them (the one whose statistics a policy uses by default). None
    without cameras or when no dataset recorded how its frames were made.

    `camera_maps[i]`: dataset i's camera mapping from its config entry ({model camera:
    dataset camera}, data/dataset_entries.py). The source then carries "camera_map"
    {model camera: the camera to render}, so evaluation renders "corner" for a policy
    that reads it as "front"."""
    if not cameras:
        return None
    camera_maps = list(camera_maps or ())
    found = []
    for index, directory in enumerate(dataset_dirs):
        source = read_image_source(directory)
        if source is None:
            continue
        mapping = camera_maps[index] if index < len(camera_maps) else {}
        camera_map = {cam: _dataset_camera(mapping.get(cam, cam)) for cam in cameras}
        if set(camera_map.values()) <= set(source["cameras"]):
            found.append(dict(source, camera_map=camera_map))
    if not found:
        return None
    first = found[0]
    for other in found[1:]:
        if (other["image_size"], other["render_settings"]) != (first["image_size"],
                                                               first["render_settings"]):
            log.warning("datasets %s and %s made their frames differently (%s at %s vs %s "
                        "at %s); evaluation renders as the first", first["dataset"],
                        other["dataset"], first["render_settings"], first["image_size"],
                        other["render_settings"], other["image_size"])
    return first
