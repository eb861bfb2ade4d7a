"""How a dataset's camera frames were made, so evaluation can make them the same way.

A policy trained on images must see, in closed loop, frames rendered and scaled as its
training frames were: same native size (the pipeline then resizes both alike), same
renderer settings (MetaWorld's shadows, shadow map, reflections). The builders record
these in `build_options.json` beside the data (`cameras`, `image_size`, and for
MetaWorld `render_settings`); this module reads them back. JSON only: evaluation
workers never import TensorFlow.

An image source is a dict: {"dataset": version directory, "cameras": [...],
"image_size": [h, w], "render_settings": {...} or None (a build that predates them)}.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

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


def policy_image_source(dataset_dirs: Sequence[str], cameras: Sequence[str]
                        ) -> dict[str, Any] | None:
    """The image source a policy using `cameras` was trained on: that of the first
    dataset recording them (the one whose statistics a policy uses by default). None
    without cameras or when no dataset recorded how its frames were made."""
    if not cameras:
        return None
    found = []
    for directory in dataset_dirs:
        source = read_image_source(directory)
        if source is not None and set(cameras) <= set(source["cameras"]):
            found.append(source)
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
