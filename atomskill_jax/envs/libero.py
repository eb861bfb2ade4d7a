"""LIBERO: the observation/action conventions shared by the data builder and the
evaluation adapter, and an env adapter that runs when LIBERO is installed.

Conventions (the same for `data_builders/libero_hdf5` and `LiberoEvalEnv`):

- images: robosuite renders with the OpenGL convention (first row = bottom of the
  picture), so LIBERO's `agentview_rgb` / `eye_in_hand_rgb` are upside down. They
  are flipped vertically (`flip_image`) to the normal orientation (first row = top).
- `proprio` float32[8] = ee position xyz (3), ee orientation as axis-angle (3, as
  LIBERO's `ee_states`: robosuite's quat2axisangle of the eef quaternion), gripper
  finger joint positions (2, LIBERO's `gripper_states`).
- `state` float32[15] = joint positions (7, `joint_states`), gripper fingers (2),
  ee pose (6). Only the robot: LIBERO's flattened MuJoCo state (`states`) has a
  task-dependent size, and datasets mix tasks.
- `action` float32[7]: LIBERO's OSC_POSE delta, in [-1, 1]: position (3, scaled by
  0.05 m), rotation as axis-angle (3, scaled by 0.5 rad), gripper (-1 open, +1 close).
- `action_abs` float32[7]: the pose the OSC controller is sent to by that delta,
  from the ee pose observed with it: position ee_pos + 0.05 * clip(dpos); orientation
  exp(0.5 * clip(drot)) @ R(ee), as the axis-angle vector closest to the observed
  `ee_states` orientation (both rotation vectors of a rotation are candidates, so the
  target stays continuous with proprio across the pi wrap); gripper command unchanged.
  `delta_action` inverts it.

Availability: `import libero` without its config file (~/.libero/config.yaml, or
$LIBERO_CONFIG_PATH/config.yaml) asks questions on stdin. `check_libero_available`
therefore never imports libero in this process: it looks for the packages without
importing them, reads the config file, and only then imports libero in a subprocess
with stdin from /dev/null and a timeout. `LiberoEnv` imports libero only after that
check passed, with sys.stdin replaced by an empty stream, so nothing can wait on input.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import subprocess
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from atomskill_jax.policies.base import PolicySpec

ACTION_DIM = 7
PROPRIO_DIM = 8
STATE_DIM = 15
GRIPPER_CHANNEL = 6
# robosuite's default OSC_POSE controller: input [-1, 1] -> output +-0.05 m, +-0.5 rad.
POSITION_SCALE = 0.05
ROTATION_SCALE = 0.5
CAMERAS = ("agentview", "eye_in_hand")
_OBS_IMAGE_KEYS = {"agentview": "agentview_image", "eye_in_hand": "robot0_eye_in_hand_image"}
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Episode length caps per suite (about 1.5x the longest demonstration, as OpenVLA uses).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
             "libero_10": 520, "libero_90": 400}
# The objects fall onto the table after a reset; wait with the gripper open.
SETTLE_STEPS = 10
REQUIRED_PACKAGES = {  # import name -> what to install
    "libero": "LIBERO (git clone github.com/Lifelong-Robot-Learning/LIBERO; pip install -e .)",
    "robosuite": "robosuite==1.4.0 (LIBERO's pinned simulator wrapper)",
    "bddl": "bddl==1.0.1 (LIBERO's task language)",
    "mujoco": "mujoco (pip install mujoco)",
    "torch": "torch (LIBERO stores its initial states with torch.save)",
}
CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
_DIR_KEYS = ("bddl_files", "init_states", "assets")  # evaluation needs these to exist


# -- conventions (numpy only) ----------------------------------------------------
def flip_image(images: np.ndarray) -> np.ndarray:
    """OpenGL-convention images [..., H, W, 3] -> normal orientation (vertical flip)."""
    return np.ascontiguousarray(np.asarray(images)[..., ::-1, :, :])


def proprio_from(ee_states: np.ndarray, gripper_states: np.ndarray) -> np.ndarray:
    return np.concatenate([ee_states, gripper_states], axis=-1).astype(np.float32)


def state_from(joint_states: np.ndarray, gripper_states: np.ndarray,
               ee_states: np.ndarray) -> np.ndarray:
    return np.concatenate([joint_states, gripper_states, ee_states], axis=-1).astype(np.float32)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """robosuite's quat2axisangle (xyzw, no sign normalisation), as LIBERO's ee_states."""
    q = np.asarray(quat, np.float64)
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    angle = 2.0 * np.arccos(w)
    safe = np.where(den < 1e-8, 1.0, den)
    return np.where((den < 1e-8)[..., None], 0.0, q[..., :3] * (angle / safe)[..., None])


def _closest_rotvec(rotvec: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, of the two rotation vectors of one rotation (angle theta and
    theta - 2 pi), the one nearer `reference`."""
    theta = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    other = rotvec * (1.0 - 2.0 * np.pi / np.maximum(theta, 1e-12))
    nearer = (np.linalg.norm(other - reference, axis=-1, keepdims=True)
              < np.linalg.norm(rotvec - reference, axis=-1, keepdims=True))
    return np.where(nearer & (theta > 1e-12), other, rotvec)


def absolute_actions(ee_states: np.ndarray, action: np.ndarray) -> np.ndarray:
    """`action_abs` [T, 7] of delta actions [T, 7] taken at ee poses [T, 6] (see module doc)."""
    from scipy.spatial.transform import Rotation  # scipy comes with jax

    ee = np.asarray(ee_states, np.float64).reshape(-1, 6)
    act = np.asarray(action, np.float64).reshape(-1, ACTION_DIM)
    delta = np.clip(act[:, :6], -1.0, 1.0)
    goal = Rotation.from_rotvec(ROTATION_SCALE * delta[:, 3:6]) * Rotation.from_rotvec(ee[:, 3:])
    return np.concatenate([
        ee[:, :3] + POSITION_SCALE * delta[:, :3],
        _closest_rotvec(goal.as_rotvec(), ee[:, 3:]),
        act[:, 6:7]], axis=1).astype(np.float32)


def delta_action(ee_state: np.ndarray, action_abs: np.ndarray) -> np.ndarray:
    """The OSC delta [7] that sends the controller to `action_abs` from pose `ee_state`
    (inverse of `absolute_actions`); targets beyond one step are clipped to [-1, 1]."""
    from scipy.spatial.transform import Rotation

    ee = np.asarray(ee_state, np.float64)
    target = np.asarray(action_abs, np.float64)
    turn = Rotation.from_rotvec(target[3:6]) * Rotation.from_rotvec(ee[3:6]).inv()
    out = np.concatenate([(target[:3] - ee[:3]) / POSITION_SCALE,
                          turn.as_rotvec() / ROTATION_SCALE, target[6:7]])
    return np.clip(out, -1.0, 1.0)


def observation_from_robosuite(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """proprio, state and images (flipped) of a live robosuite observation, as the
    builder writes them from LIBERO's files."""
    ee = np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"])])
    grip = np.asarray(obs["robot0_gripper_qpos"])
    out = {"proprio": proprio_from(ee, grip),
           "state": state_from(np.asarray(obs["robot0_joint_pos"]), grip, ee)}
    for cam, key in _OBS_IMAGE_KEYS.items():
        if key in obs:
            out[f"image_{cam}"] = flip_image(obs[key])
    return out


# -- availability ------------------------------------------------------------------
class LiberoUnavailable(RuntimeError):
    """LIBERO cannot run here; the message lists everything that is missing."""


@dataclasses.dataclass(frozen=True)
class LiberoAvailability:
    ok: bool
    missing: tuple[str, ...]  # one line per missing piece, each saying what to do
    config_path: str

    @property
    def message(self) -> str:
        if self.ok:
            return "LIBERO is available"
        return "LIBERO evaluation is unavailable:\n" + "\n".join(f"  - {m}" for m in self.missing)


def config_path() -> str:
    """Where libero reads its config (its own rule: $LIBERO_CONFIG_PATH or ~/.libero)."""
    root = os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero"))
    return os.path.join(root, "config.yaml")


def _read_config(path: str) -> tuple[dict, list[str]]:
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        return {}, [f"{path} cannot be read ({type(err).__name__}: {err})"]
    if not isinstance(config, dict):
        return {}, [f"{path} is not a mapping of {', '.join(CONFIG_KEYS)}"]
    problems = [f"{path}: key {key!r} missing" for key in CONFIG_KEYS if key not in config]
    for key in _DIR_KEYS:
        if key in config and not os.path.isdir(str(config[key])):
            problems.append(f"{path}: {key} = {config[key]!r} is not a directory "
                            f"(LIBERO's {key} are needed to run its tasks)")
    return config, problems


_PROBE = ("from libero.libero import benchmark, get_libero_path\n"
          "from libero.libero.envs import OffScreenRenderEnv\n"
          "print(sorted(benchmark.get_benchmark_dict()))\n")


def check_libero_available(*, probe: bool = True,
                           probe_timeout: float = 120.0) -> LiberoAvailability:
    """What LIBERO evaluation needs and lacks here. Never imports libero in this
    process; with `probe`, imports it in a subprocess (stdin /dev/null, timeout) once
    the packages and the config file are there."""
    missing = [f"python package {name!r} not found: install {hint}"
               for name, hint in REQUIRED_PACKAGES.items()
               if importlib.util.find_spec(name) is None]
    path = config_path()
    if not os.path.isfile(path):
        missing.append(f"{path} does not exist (without it `import libero` asks questions "
                       f"on stdin); write it with keys {', '.join(CONFIG_KEYS)} pointing "
                       "into your LIBERO checkout (libero/libero/...), or set "
                       "LIBERO_CONFIG_PATH to its directory")
    else:
        missing += _read_config(path)[1]
    if missing or not probe:
        return LiberoAvailability(not missing, tuple(missing), path)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=probe_timeout)
    except subprocess.TimeoutExpired:
        missing.append(f"`import libero` did not finish within {probe_timeout:.0f} s "
                       "(with stdin closed); check the LIBERO install")
    else:
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            missing.append(f"`import libero` failed in a subprocess: {tail}")
    return LiberoAvailability(not missing, tuple(missing), path)


def require_libero(**kwargs) -> None:
    availability = check_libero_available(**kwargs)
    if not availability.ok:
        raise LiberoUnavailable(availability.message)


def _import_libero():
    """libero's modules, imported with stdin replaced by an empty stream: a prompt
    raises EOFError instead of waiting (callers ran `require_libero` first)."""
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except EOFError as err:
        raise LiberoUnavailable(f"importing libero asked for input ({config_path()} "
                                "incomplete?)") from err
    finally:
        sys.stdin = saved
    return benchmark, get_libero_path, OffScreenRenderEnv


# -- the simulator -----------------------------------------------------------------
class LiberoEnv:
    """One LIBERO task (by its name, e.g. KITCHEN_SCENE3_turn_on_the_stove, as in the
    demo file names); layouts are indices into the suite's fixed initial states."""

    def __init__(self, task: str, *, suite: str | None = None, cameras: Sequence[str] = CAMERAS,
                 image_size=(128, 128), max_steps: int | None = None):
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown LIBERO camera {cam!r}; cameras: {CAMERAS}")
        require_libero()
        benchmark, get_libero_path, render_env = _import_libero()
        self.suite, index = _find_task(benchmark, task, suite)
        bench = benchmark.get_benchmark_dict()[self.suite]()
        info = bench.get_task(index)
        self.task, self.instruction = info.name, info.language
        self.init_states = bench.get_task_init_states(index)
        self.cameras, self.image_size = tuple(cameras), tuple(image_size)
        self.max_steps = int(max_steps or MAX_STEPS[self.suite])
        bddl = os.path.join(get_libero_path("bddl_files"), info.problem_folder, info.bddl_file)
        self.env = render_env(bddl_file_name=bddl, camera_heights=self.image_size[0],
                              camera_widths=self.image_size[1])
        self.layout: int | None = None
        self._obs: dict | None = None

    def set_layout(self, layout: int) -> None:
        if not 0 <= int(layout) < len(self.init_states):
            raise ValueError(f"{self.task}: layout {layout} out of range; the suite has "
                             f"{len(self.init_states)} initial states")
        self.layout = int(layout)

    def reset(self) -> dict[str, np.ndarray]:
        if self.layout is None:
            raise RuntimeError("call set_layout(layout) before reset()")
        self.env.reset()
        obs = self.env.set_init_state(self.init_states[self.layout])
        settle = np.zeros(ACTION_DIM)
        settle[GRIPPER_CHANNEL] = -1.0
        for _ in range(SETTLE_STEPS):
            obs, *_ = self.env.step(settle)
        self._obs = obs
        return self.observation()

    def observation(self) -> dict[str, np.ndarray]:
        out = observation_from_robosuite(self._obs)
        return {k: v for k, v in out.items()
                if not k.startswith("image_") or k[len("image_"):] in self.cameras}

    def absolute_target(self, action: np.ndarray) -> np.ndarray:
        return absolute_actions(self.observation()["proprio"][None, :6], action[None])[0]

    def delta_action(self, action_abs: np.ndarray) -> np.ndarray:
        return delta_action(self.observation()["proprio"][:6], action_abs)

    def step(self, action: np.ndarray):
        obs, reward, done, info = self.env.step(np.asarray(action, np.float64))
        self._obs = obs
        info = dict(info or {}, success=float(bool(done)))
        return self.observation(), float(reward), bool(done), info

    def close(self) -> None:
        self.env.close()


def _find_task(benchmark, task: str, suite: str | None) -> tuple[str, int]:
    suites = [suite] if suite else list(SUITES)
    for name in suites:
        bench = benchmark.get_benchmark_dict()[name]()
        names = bench.get_task_names()
        if task in names:
            return name, names.index(task)
    raise ValueError(f"LIBERO task {task!r} is not in {', '.join(suites)}")


class LiberoEvalEnv:
    """A LIBERO task producing builder-shaped observations for a policy spec (the
    interface of envs.metaworld_eval.MetaWorldEvalEnv)."""

    def __init__(self, task: str, spec: PolicySpec, *, max_steps: int | None = None,
                 language_embedding: np.ndarray | None = None,
                 video_camera: str | None = None, suite: str | None = None):
        self.spec = spec
        cameras = tuple(spec.cameras)
        if video_camera and video_camera not in cameras:
            cameras += (video_camera,)
        self.video_camera = video_camera
        if "language_embedding" in spec.observation_keys and language_embedding is None:
            raise ValueError(f"policy {spec.name!r} needs language_embedding for {task!r}")
        self.language_embedding = (None if language_embedding is None
                                   else np.asarray(language_embedding, np.float32))
        self.env = LiberoEnv(task, suite=suite, cameras=cameras, image_size=spec.image_size,
                             max_steps=max_steps)
        self.task, self.instruction = self.env.task, self.env.instruction
        self.max_steps = self.env.max_steps
        self._steps = 0
        self._last: dict[str, np.ndarray] = {}

    def reset(self, layout: int) -> dict[str, Any]:
        self.env.set_layout(layout)
        self._last = self.env.reset()
        self._steps = 0
        return self.observation()

    def observation(self, render: bool = True) -> dict[str, Any]:
        del render  # robosuite renders with every step
        obs: dict[str, Any] = {}
        for key in self.spec.observation_keys:
            if key == "language_instruction":
                obs[key] = self.instruction
            elif key == "language_embedding":
                obs[key] = self.language_embedding
            else:
                obs[key] = self._last[key]
        return obs

    def video_frame(self) -> np.ndarray | None:
        return self._last.get(f"image_{self.video_camera}") if self.video_camera else None

    def to_native(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{self.task}: policy {self.spec.name!r} returned an action of "
                             f"shape {action.shape}; expected ({ACTION_DIM},)")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: policy {self.spec.name!r} returned a non-finite "
                             f"action {action}")
        if self.spec.action_space == "action_abs":
            return self.env.delta_action(action)
        return np.clip(action, -1.0, 1.0)

    def step(self, action: np.ndarray, render: bool = True):
        """Apply one policy action; returns (observation, info, truncated)."""
        self._last, _, _, info = self.env.step(self.to_native(action))
        self._steps += 1
        return self.observation(render), info, self._steps >= self.max_steps

    def close(self) -> None:
        self.env.close()
