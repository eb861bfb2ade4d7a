"""MetaWorld for closed-loop evaluation: the builder's observations, the policy's actions.

Observations carry exactly what `data_builders/metaworld_scripted` wrote per step
(`state` float32[39], `proprio` = state[:4], `image_<camera>` uint8[H, W, 3],
`language_instruction`, `language_embedding` float32[E]), restricted to the keys
the policy asks for. Actions come in the space the policy was trained in:
native deltas pass through, absolute targets (`action_abs`) are turned back into
the delta the env takes from the current mocap target.

Images are made as the policy's training frames were (`image_source`, read from the
training dataset's build options by the loader, data/image_source.py): rendered at the
dataset's native size with its render settings, then resized to the policy's image
size with the training pipeline's resize (data/image_resize.py, the numpy twin of
data/frame_transforms.resize_image); a dataset entry's camera mapping (the `paper`
config's front -> corner, wrist -> gripperPOV) renders the mapped camera. Without an image source: the default render
settings at the policy's size. tests/test_image_parity.py checks training and
evaluation frames agree.

Only evaluation layouts (ids >= `EVAL_LAYOUT_BASE`) are accepted: training data
is built from ids below it, so a policy never meets a layout it was trained on.
`eval_layouts(seed, n)` gives seed s the layout indices s*n ... s*n + n - 1.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from atomskill_jax.data.image_resize import resize_uint8
from atomskill_jax.envs import metaworld as mw
from atomskill_jax.envs import metaworld_tasks
from atomskill_jax.policies.base import PolicySpec


def eval_layouts(seed: int, episodes: int) -> list[int]:
    """The evaluation layout ids of one seed: disjoint across seeds and from training."""
    if seed < 0 or episodes < 1:
        raise ValueError(f"eval_layouts(seed={seed}, episodes={episodes}): need seed >= 0, "
                         "episodes >= 1")
    return [mw.layout_id("eval", seed * episodes + i) for i in range(episodes)]


def camera_map_of(spec: PolicySpec, image_source: Mapping[str, Any] | None) -> dict[str, str]:
    """{policy camera: MetaWorld camera to render}: the training entry's camera mapping
    (image_source["camera_map"], e.g. front -> corner), else each camera as itself."""
    mapping = dict((image_source or {}).get("camera_map") or {})
    return {cam: mapping.get(cam, cam) for cam in spec.cameras}


def rendering_of(spec: PolicySpec, image_source: Mapping[str, Any] | None
                 ) -> tuple[tuple[int, int], mw.RenderSettings]:
    """(native image size, render settings) that remake the policy's training frames."""
    if image_source is None or not spec.cameras:
        return tuple(spec.image_size), mw.render_settings(None)
    where = image_source.get("dataset", "the image source")
    camera_map = camera_map_of(spec, image_source)
    missing = sorted(cam for cam, rendered in camera_map.items()
                     if rendered not in image_source.get("cameras", camera_map.values()))
    if missing:
        raise ValueError(f"{where}: policy {spec.name!r} reads cameras {missing} (rendered "
                         f"as {[camera_map[c] for c in missing]}) that the dataset did not "
                         f"record (it has {image_source.get('cameras')})")
    settings = image_source.get("render_settings")
    render = (mw.render_settings(mw.LEGACY_RENDER_QUALITY) if settings is None else
              mw.RenderSettings.from_json(settings, source=f"{where} render_settings"))
    return tuple(int(s) for s in image_source["image_size"]), render


def default_max_steps(task: str) -> int:
    """MetaWorld's own episode length (500 steps for every v3 task)."""
    metaworld_tasks.canonical_task(task)
    return 500


class MetaWorldEvalEnv:
    """One task's env, producing builder-shaped observations for a policy spec."""

    def __init__(self, task: str, spec: PolicySpec, *, max_steps: int | None = None,
                 language_embedding: np.ndarray | None = None,
                 video_camera: str | None = None,
                 image_source: Mapping[str, Any] | None = None):
        self.task = metaworld_tasks.canonical_task(task)
        self.spec = spec
        self.instruction = metaworld_tasks.instruction(self.task)
        if "language_embedding" in spec.observation_keys and language_embedding is None:
            raise ValueError(f"policy {spec.name!r} needs language_embedding; pass the "
                             f"embedding of {self.instruction!r}")
        self.language_embedding = (None if language_embedding is None
                                   else np.asarray(language_embedding, np.float32))
        self.max_steps = int(max_steps or default_max_steps(self.task))
        # The policy's cameras under their rendered names (a mapped dataset: front -> corner).
        self.camera_map = camera_map_of(spec, image_source)
        cameras = tuple(dict.fromkeys(self.camera_map.values()))
        if video_camera and video_camera not in cameras:
            cameras += (video_camera,)
        self.video_camera = video_camera
        native_size, render = rendering_of(spec, image_source)
        self.image_size = tuple(int(s) for s in spec.image_size)
        self.env = mw.MetaWorldEnv(self.task, cameras=cameras, image_size=native_size,
                                   max_steps=self.max_steps, render_quality=render)
        self._state: np.ndarray | None = None
        self._frames: dict[str, np.ndarray] = {}

    def reset(self, layout: int) -> dict[str, Any]:
        if mw.layout_split(layout) != "eval":
            raise ValueError(f"layout {layout} is a training layout; evaluation uses ids >= "
                             f"{mw.EVAL_LAYOUT_BASE} (see eval_layouts)")
        self.env.set_layout(layout)
        self._state = np.asarray(self.env.reset(), np.float32)
        return self.observation()

    def observation(self, render: bool = True) -> dict[str, Any]:
        """The current observation under the policy's keys (unbatched)."""
        keys = self.spec.observation_keys
        state = self._state
        self._frames = self.env.render() if (render and self.env.cameras) else {}
        obs: dict[str, Any] = {}
        for key in keys:
            if key == "state":
                obs[key] = state
            elif key == "proprio":
                obs[key] = mw.proprio_from_state(state)
            elif key == "language_instruction":
                obs[key] = self.instruction
            elif key == "language_embedding":
                obs[key] = self.language_embedding
            else:  # image_<camera>, scaled as the training pipeline scaled it
                frame = self._frames[self.camera_map[key[len("image_"):]]]
                obs[key] = resize_uint8(frame, self.image_size)
        return obs

    def video_frame(self) -> np.ndarray | None:
        return self._frames.get(self.video_camera) if self.video_camera else None

    def to_native(self, action: np.ndarray) -> np.ndarray:
        """The env's delta command for one policy action."""
        action = np.asarray(action, np.float64)
        if action.shape != (mw.ACTION_DIM,):
            raise ValueError(f"{self.task}: policy {self.spec.name!r} returned an action of "
                             f"shape {action.shape}; expected ({mw.ACTION_DIM},)")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: policy {self.spec.name!r} returned a non-finite "
                             f"action {action}")
        if self.spec.action_space == "action_abs":
            return self.env.delta_action(action)
        return np.clip(action, -1.0, 1.0)

    def step(self, action: np.ndarray, render: bool = True):
        """Apply one policy action; returns (observation, info, truncated)."""
        obs, _, _, truncated, info = self.env.step(self.to_native(action))
        self._state = np.asarray(obs, np.float32)
        return self.observation(render), info, truncated

    @property
    def state(self) -> np.ndarray:
        return self._state

    def close(self) -> None:
        self.env.close()


def stack_observations(observations: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-env observations -> one dict of batched arrays (strings as a str array)."""
    out = {}
    for key in observations[0]:
        values = [o[key] for o in observations]
        out[key] = np.asarray(values) if isinstance(values[0], str) else np.stack(values)
    return out
