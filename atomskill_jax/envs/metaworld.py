"""MetaWorld v3 adapter: explicit layouts, scripted experts, absolute action targets.

Why explicit layouts: MetaWorld's MT1 env draws each episode's object/goal layout
from 50 fixed layouts with a generator seeded when the env is made, and
`reset(seed=k)` does not choose it (seeds 1000-1009 replay the layouts of 0-9).
Here a layout is an integer id; its parameters (`rand_vec`: object and goal
positions) are drawn from the env's own reset distribution with a generator seeded
by (task, id), through the env's own rejection loop, so every id names one valid,
reproducible layout. Ids below `EVAL_LAYOUT_BASE` are for training data, ids from
it on for evaluation, so the two never share a layout.

Why `action_abs`: MetaWorld commands are hand-position deltas; the env moves its
mocap target by clip(action, -1, 1) * action_scale, clipped to the mocap bounds.
`action_abs` is that target position after the step plus the gripper command,
the absolute form the keypose needs.

Why render settings (`RenderSettings`, `RENDER_QUALITIES`): offscreen rendering on CPUs
(Mesa's llvmpipe, through OSMesa or EGL) costs ~0.15 s a frame with MetaWorld's own
scene, almost all of it in the shadow: the light that casts it renders the ~67k mesh
triangles of the arm into a 4096x4096 depth map and once more to light the scene
(bench/render_speed.py measures each part). A smaller shadow map keeps the picture
and halves the cost; no shadows at all is ~5x faster but visibly changes the image.
Whatever is chosen, training data and evaluation must render alike: the builder
records the settings in its options and evaluation reads them back
(`envs.metaworld_eval`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from atomskill_jax.envs import metaworld_tasks

EVAL_LAYOUT_BASE = 1_000_000
LAYOUT_SPLIT_BASE = {"train": 0, "eval": EVAL_LAYOUT_BASE}
CAMERAS = ("corner", "corner2", "corner3", "topview", "behindGripper", "gripperPOV")
# MetaWorld's corner cameras are mounted rolled by 180 degrees: rotate their images
# so the table is at the bottom, as a person (and a pretrained vision model) expects.
_ROTATED_CAMERAS = ("corner", "corner2", "corner3")
STATE_DIM = 39
PROPRIO_DIM = 4  # hand xyz + gripper opening
ACTION_DIM = 4  # hand xyz delta (or target) + gripper command



@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """MuJoCo scene options for offscreen frames. The offscreen buffer always matches
    the image size (MetaWorld asks for 640x480; the pixels are the same, measured).
    Multisampling stays MuJoCo's 4x: without it edges alias (mean change ~3/255)."""

    shadows: bool = True
    shadow_size: int = 4096  # side of the shadow depth map (MetaWorld's model: 4096)
    reflections: bool = True

    def __post_init__(self):
        if int(self.shadow_size) < 1:
            raise ValueError(f"RenderSettings.shadow_size must be >= 1, got {self.shadow_size}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "render settings"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown render settings {unknown} (known: {sorted(known)})")
        return cls(**dict(data))


# Named settings, from MetaWorld's own scene to the cheapest. Frames/s and the mean
# pixel change against "metaworld" (corner camera, 64-128 px, llvmpipe on 2 cores):
# bench/render_speed.py. "fast" is the default: the shadow kept, its map at 1024.
RENDER_QUALITIES = {
    "metaworld": RenderSettings(),
    "fast": RenderSettings(shadow_size=1024),
    "no_shadows": RenderSettings(shadows=False),
}
DEFAULT_RENDER_QUALITY = "fast"
# What builds made before render settings existed used (MetaWorld's own scene).
LEGACY_RENDER_QUALITY = "metaworld"


def render_settings(quality: "str | Mapping | RenderSettings | None" = None) -> RenderSettings:
    """Settings from a quality name, a settings dict, or settings (None: the default)."""
    if quality is None:
        quality = DEFAULT_RENDER_QUALITY
    if isinstance(quality, RenderSettings):
        return quality
    if isinstance(quality, Mapping):
        return RenderSettings.from_json(quality)
    if quality not in RENDER_QUALITIES:
        raise ValueError(f"unknown render quality {quality!r}; use one of "
                         f"{sorted(RENDER_QUALITIES)}")
    return RENDER_QUALITIES[quality]


# Policy class names that do not follow Sawyer<CamelCaseTask>V3Policy.
_POLICY_NAME_EXCEPTIONS = {"peg-insert-side": "SawyerPegInsertionSideV3Policy"}


def layout_id(split: str, index: int) -> int:
    """The id of the `index`-th layout of a split ('train' or 'eval')."""
    if split not in LAYOUT_SPLIT_BASE:
        raise ValueError(f"unknown layout split {split!r}; use one of {list(LAYOUT_SPLIT_BASE)}")
    if not 0 <= index < EVAL_LAYOUT_BASE:
        raise ValueError(f"layout index {index} out of range [0, {EVAL_LAYOUT_BASE})")
    return LAYOUT_SPLIT_BASE[split] + index


def layout_split(layout: int) -> str:
    return "eval" if layout >= EVAL_LAYOUT_BASE else "train"


def expert_policy(task: str):
    """MetaWorld's scripted expert for `task`."""
    import metaworld.policies as policies

    task = metaworld_tasks.canonical_task(task)
    name = _POLICY_NAME_EXCEPTIONS.get(
        task, "Sawyer" + "".join(p.capitalize() for p in task.split("-")) + "V3Policy")
    return getattr(policies, name)()


class MetaWorldEnv:
    """One MetaWorld v3 task with the goal observable, layouts chosen by id."""

    def __init__(self, task: str, cameras: Sequence[str] = (), image_size=(128, 128),
                 max_steps: int = 500, render_quality=None):
        import metaworld.env_dict as env_dict

        self.task = metaworld_tasks.canonical_task(task)
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown MetaWorld camera {cam!r}; cameras: {CAMERAS}")
        self.cameras = tuple(cameras)
        self.image_size = tuple(int(s) for s in image_size)
        self.render_settings = render_settings(render_quality)
        env = env_dict.ALL_V3_ENVIRONMENTS[f"{self.task}-v3"]()
        # Goal-observable multi-task setting, as MetaWorld's MT benchmarks use it.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached property: recompute
        env._set_task_called = True
        env.max_path_length = max_steps
        self.env = env
        self.max_steps = max_steps
        self.layout: int | None = None
        self.layout_vec: np.ndarray | None = None
        self._renderer = None

    # -- layouts ---------------------------------------------------------------
    def set_layout(self, layout: int) -> np.ndarray:
        """Fix the layout for following resets; returns its parameter vector."""
        env = self.env
        rng_seed = np.random.SeedSequence([zlib.crc32(self.task.encode()), int(layout)])
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.np_random = np.random.Generator(np.random.PCG64(rng_seed))
        env.reset()  # draws through the env's own rejection loop
        env._freeze_rand_vec = True
        env.seeded_rand_vec = False
        self.layout = int(layout)
        self.layout_vec = np.asarray(env._last_rand_vec, np.float64).copy()
        return self.layout_vec

    def reset(self) -> np.ndarray:
        if self.layout is None:
            raise RuntimeError("call set_layout(layout_id) before reset()")
        obs, _ = self.env.reset()
        return obs

    # -- stepping --------------------------------------------------------------
    def mocap_target(self) -> np.ndarray:
        return np.asarray(self.env.data.mocap_pos[0], np.float64).copy()

    def absolute_target(self, action: np.ndarray) -> np.ndarray:
        """The absolute command equivalent to delta `action` from the current state."""
        env = self.env
        delta = np.clip(action[:3], -1.0, 1.0) * env.action_scale
        target = np.clip(self.mocap_target() + delta, env.mocap_low, env.mocap_high)
        return np.concatenate([target, np.clip(action[3:4], -1.0, 1.0)])

    def delta_action(self, action_abs: np.ndarray) -> np.ndarray:
        """The delta command that moves the mocap target to `action_abs[:3]` (the
        inverse of `absolute_target`). Targets farther than one step can reach are
        clipped to the [-1, 1] delta range, as the env would clip the command."""
        env = self.env
        target = np.asarray(action_abs, np.float64)
        delta = (target[:3] - self.mocap_target()) / env.action_scale
        return np.clip(np.concatenate([delta, target[3:4]]), -1.0, 1.0)

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(
            np.asarray(action, np.float32))
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> dict[str, np.ndarray]:
        """RGB images from the named cameras (needs MUJOCO_GL=osmesa or egl)."""
        if not self.cameras:
            return {}
        import mujoco

        settings = self.render_settings
        if self._renderer is None:
            height, width = self.image_size
            model = self.env.model  # this env's own copy: only its renders read these
            # Read when the GL context is made: the shadow map and offscreen buffer sizes.
            model.vis.quality.shadowsize = int(settings.shadow_size)
            model.vis.global_.offwidth, model.vis.global_.offheight = width, height
            self._renderer = mujoco.Renderer(model, height=height, width=width)
        flags = mujoco.mjtRndFlag
        images = {}
        for cam in self.cameras:
            self._renderer.update_scene(self.env.data, camera=cam)
            scene = self._renderer.scene.flags
            scene[flags.mjRND_SHADOW] = int(settings.shadows)
            scene[flags.mjRND_REFLECTION] = int(settings.reflections)
            image = self._renderer.render()
            if cam in _ROTATED_CAMERAS:
                image = image[::-1, ::-1]
            images[cam] = np.ascontiguousarray(image)
        return images

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()


def proprio_from_state(state: np.ndarray) -> np.ndarray:
    """Hand position and gripper opening: the first four entries of the observation."""
    return np.asarray(state[..., :PROPRIO_DIM], np.float32)


def rollout_expert(task: str, layout: int = 0, *, seed: int = 0, noise_std: float = 0.0,
                   max_steps: int = 500, post_success_steps: int = 0,
                   cameras: Sequence[str] = (), image_size=(128, 128),
                   render_quality=None, env: MetaWorldEnv | None = None) -> dict[str, Any]:
    """Roll out the scripted expert in one layout; returns per-step numpy arrays.

    With `noise_std` > 0 the executed action is the expert's command plus Gaussian
    noise (as in QueST's MetaWorld demos), while `action` keeps the expert's clean
    command: the label a policy should learn (DART-style). `action_abs` is the
    clean command as an absolute target. The episode stops `post_success_steps`
    after the first success, or at `max_steps`.
    """
    own_env = env is None
    if env is None:
        env = MetaWorldEnv(task, cameras=cameras, image_size=image_size, max_steps=max_steps,
                           render_quality=render_quality)
    policy = expert_policy(task)
    rng = np.random.default_rng(np.random.SeedSequence(
        [zlib.crc32(env.task.encode()), int(layout), int(seed)]))
    layout_vec = env.set_layout(layout)
    obs = env.reset()
    rec: dict[str, list] = {k: [] for k in (
        "state", "action", "action_executed", "action_abs", "reward", "success")}
    images: dict[str, list] = {cam: [] for cam in env.cameras}
    success_at = None
    try:
        for t in range(max_steps):
            for cam, img in env.render().items():
                images[cam].append(img)
            with warnings.catch_warnings():
                # The experts' P-controllers ask for more than [-1, 1]; clip as the env does.
                warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
                clean = np.clip(np.asarray(policy.get_action(obs), np.float64), -1.0, 1.0)
            executed = clean
            if noise_std > 0:
                executed = np.clip(clean + rng.normal(0.0, noise_std, size=clean.shape), -1.0, 1.0)
            rec["state"].append(obs)
            rec["action"].append(clean)
            rec["action_executed"].append(executed)
            rec["action_abs"].append(env.absolute_target(clean))
            obs, reward, _, truncated, info = env.step(executed)
            rec["reward"].append(reward)
            rec["success"].append(bool(info.get("success", 0.0)))
            if rec["success"][-1] and success_at is None:
                success_at = t
            if success_at is not None and t - success_at >= post_success_steps:
                break
            if truncated:
                break
    finally:
        if own_env:
            env.close()
    out = {k: np.asarray(v) for k, v in rec.items()}
    out["state"] = out["state"].astype(np.float32)
    out["proprio"] = proprio_from_state(out["state"])
    out["images"] = {cam: np.asarray(v, np.uint8) for cam, v in images.items()}
    out["layout"] = int(layout)
    out["layout_vec"] = layout_vec.astype(np.float32)
    out["solved"] = success_at is not None
    out["task"] = env.task
    return out


def rendering_available() -> tuple[bool, str]:
    """Whether MuJoCo can render offscreen here, with the reason if not."""
    backend = os.environ.get("MUJOCO_GL", "")
    if backend not in ("osmesa", "egl"):
        return False, f"MUJOCO_GL={backend!r}; set MUJOCO_GL=osmesa (Debian: libosmesa6)"
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
        with mujoco.Renderer(model, height=8, width=8) as renderer:
            renderer.render()
    except Exception as err:  # noqa: BLE001 - any GL failure means no rendering
        return False, f"{type(err).__name__}: {err}"
    return True, ""


# -- rendering out of process ----------------------------------------------------
# MuJoCo's OSMesa backend and TensorFlow cannot share a process: with both loaded
# the interpreter crashes at exit ("free(): invalid pointer"), losing the exit
# status. Rollouts that render therefore run in a spawned worker process that
# never imports TensorFlow; the builder (which needs TensorFlow) only receives
# numpy arrays.

_WORKER_ENVS: dict[tuple, MetaWorldEnv] = {}


def render_backend() -> str:
    """The GL backend render workers use: MUJOCO_GL (or its stash) if it names one."""
    backend = os.environ.get("ATOMSKILL_RENDER_GL") or os.environ.get("MUJOCO_GL", "")
    return backend if backend in ("osmesa", "egl") else "osmesa"


def keep_gl_out_of_this_process() -> None:
    """Call before MuJoCo is imported in a process that uses TensorFlow."""
    os.environ["ATOMSKILL_RENDER_GL"] = render_backend()
    os.environ.pop("MUJOCO_GL", None)
    os.environ.pop("PYOPENGL_PLATFORM", None)


def _init_render_worker(gl_backend: str) -> None:
    os.environ["MUJOCO_GL"] = gl_backend
    os.environ["PYOPENGL_PLATFORM"] = gl_backend


def _worker_rollout(task: str, layout: int, cameras: tuple, image_size: tuple,
                    max_steps: int, render: RenderSettings, kwargs: dict) -> dict[str, Any]:
    key = (task, cameras, image_size, max_steps, render)
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = MetaWorldEnv(task, cameras=cameras, image_size=image_size,
                                         max_steps=max_steps, render_quality=render)
    return rollout_expert(task, layout, max_steps=max_steps, env=_WORKER_ENVS[key], **kwargs)


def _worker_rendering_available() -> tuple[bool, str]:
    return rendering_available()


class RenderingRolloutWorker:
    """Runs `rollout_expert` with cameras in a separate process (see above)."""

    def __init__(self, gl_backend: str | None = None):
        import concurrent.futures
        import multiprocessing

        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_render_worker, initargs=(gl_backend or render_backend(),))

    def check(self) -> tuple[bool, str]:
        return self._pool.submit(_worker_rendering_available).result()

    def rollout(self, task: str, layout: int, *, cameras: Sequence[str], image_size=(128, 128),
                max_steps: int = 500, render_quality=None, **kwargs) -> dict[str, Any]:
        return self._pool.submit(_worker_rollout, task, int(layout), tuple(cameras),
                                 tuple(image_size), int(max_steps),
                                 render_settings(render_quality), kwargs).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
