"""ALOHA simulation (gym-aloha 0.1.5): the joint-space bimanual tasks, without
rendering unless a camera is asked for, with builder-shaped observations.

Used by `data_builders/aloha_sim_scripted` (rollouts of the scripted expert) and for
closed-loop evaluation (`AlohaSimEvalEnv`); both see the same observations:

- `proprio` float32[14] = gym-aloha's `qpos`: per arm (left, then right) 6 joint
  angles (rad) and the gripper position normalised to 0 closed .. 1 open.
- `state` float32[28] = gym-aloha's `qvel` [14] (same layout; the gripper as a
  normalised velocity), then the objects' free-joint poses from the physics, xyz +
  quaternion wxyz each, zero-padded to two objects [14] (`env_state`: transfer-cube
  the cube [7] then zeros; insertion the peg [7], then the socket [7]). qpos is not
  repeated: policies read `proprio` and `state` together.
- `image_<camera>` uint8[H, W, 3]: MuJoCo's render of the camera at gym-aloha's
  480x640, first row = top of the picture (as gym-aloha returns it), resized to
  `image_size` with an antialiased bilinear filter (`resize_image`) when one is given.
- action float32[14]: absolute joint targets in the `proprio` layout (the gripper as
  the normalised target, 0 closed .. 1 open); `action` and `action_abs` are equal.
  gym-aloha declares a [-1, 1] action space, but the elbow works near 1.2-1.4 rad and
  nothing clips: actions pass through unclipped (the actuators' own control ranges
  limit them, as in gym-aloha).

Why not `gym.make`: gym-aloha renders three 480x640 cameras in every observation
(~0.2 s a step, 500x the physics), `obs_type='state'` raises NotImplementedError and
the limit it registers (300 steps) is shorter than a scripted insertion (success
near step 340). This builds the same dm_control environment gym-aloha builds (same
model file, task classes, control step and object sampling: `reset(seed)` places
the objects with `gym_aloha.utils.sample_box_pose(seed)` /
`sample_insertion_pose(seed)`, as `AlohaEnv.reset(seed=seed)` does), and renders
only the cameras asked for.

Rewards are gym-aloha's stages, 0..4. transfer-cube: 1 the right gripper touches the
cube, 2 lifts it, 3 the left gripper touches it, 4 the left holds it off the table;
insertion: 1 both grippers touch their objects, 2 both lifted, 3 peg touches socket
in the air, 4 peg touches the pin. Insertion's reward flickers (the peg bounces on
the pin), so progress and success are judged by the highest reward reached so far:
progress = max reward / 4, success = reward 4 reached at any step.

Seeds: a seed is the object layout. Training data uses seeds below
`EVAL_SEED_BASE`, evaluation seeds from it on (`eval_seeds`), so evaluation never
meets a training layout.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from atomskill_jax.policies.base import PolicySpec

TASKS = ("transfer_cube", "insertion")
INSTRUCTIONS = {
    "transfer_cube": "pick up the red cube with the right arm and hand it over to the left arm",
    "insertion": "pick up the red peg with the right arm and the blue socket with the left "
                 "arm, then insert the peg into the socket",
}
CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", "left_wrist",
           "right_wrist")
NATIVE_IMAGE_SIZE = (480, 640)  # (H, W) gym-aloha renders at
ACTION_DIM = PROPRIO_DIM = 14
OBJECT_STATE_DIM = 14  # two free-joint poses (xyz + wxyz), zero-padded
STATE_DIM = 14 + OBJECT_STATE_DIM
GRIPPER_CHANNELS = (6, 13)  # left, right (0 closed .. 1 open)
MAX_REWARD = 4
DEFAULT_MAX_STEPS = 400  # ACT's sim episode length; insertion succeeds near step 340
EVAL_SEED_BASE = 1_000_000
_MODEL_FILES = {"transfer_cube": "bimanual_viperx_transfer_cube.xml",
                "insertion": "bimanual_viperx_insertion.xml"}


def canonical_task(task: str) -> str:
    """'transfer_cube' / 'insertion' (dashes accepted); an error lists the tasks."""
    name = str(task).strip().lower().replace("-", "_")
    if name not in TASKS:
        raise ValueError(f"unknown ALOHA sim task {task!r}; tasks: {', '.join(TASKS)}")
    return name


def instruction(task: str) -> str:
    return INSTRUCTIONS[canonical_task(task)]


def eval_seeds(seed: int, episodes: int) -> list[int]:
    """Evaluation layouts of one evaluation seed: disjoint across seeds and from training."""
    if seed < 0 or episodes < 1:
        raise ValueError(f"eval_seeds(seed={seed}, episodes={episodes}): need seed >= 0, "
                         "episodes >= 1")
    return [EVAL_SEED_BASE + seed * episodes + i for i in range(episodes)]


def resize_image(image: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """uint8 [h, w, 3] -> [H, W, 3], antialiased bilinear (PIL); None keeps the size."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return np.ascontiguousarray(image)
    from PIL import Image

    height, width = (int(s) for s in size)
    out = Image.fromarray(np.asarray(image, np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR)
    return np.asarray(out, np.uint8)


def _physics_and_task(task: str):
    """The dm_control physics and gym-aloha task object (its observation unrendered)."""
    with warnings.catch_warnings():
        # Without MUJOCO_GL dm_control probes GLFW, which warns on a headless machine.
        warnings.filterwarnings("ignore", message=r".*DISPLAY.*")
        from dm_control import mujoco
        from dm_control.rl import control
        from gym_aloha.constants import ASSETS_DIR, DT
        from gym_aloha.tasks import sim

    base = sim.TransferCubeTask if task == "transfer_cube" else sim.InsertionTask

    class _Unrendered(base):
        def get_observation(self, physics):  # gym-aloha's, minus its three renders
            return {"qpos": self.get_qpos(physics), "qvel": self.get_qvel(physics),
                    "env_state": self.get_env_state(physics)}

    physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / _MODEL_FILES[task]))
    env = control.Environment(physics, _Unrendered(), time_limit=float("inf"),
                              control_timestep=DT, n_sub_steps=None, flat_observation=False)
    return env, sim


class AlohaSimEnv:
    """One gym-aloha joint-space task: `reset(seed)`, `step(action)`, builder keys."""

    max_reward = MAX_REWARD

    def __init__(self, task: str, *, cameras: Sequence[str] = (),
                 image_size: Sequence[int] | None = None, max_steps: int | None = None):
        self.task = canonical_task(task)
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown ALOHA sim camera {cam!r}; cameras: {CAMERAS}")
        self.cameras = tuple(cameras)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.max_steps = int(max_steps or DEFAULT_MAX_STEPS)
        self._env, self._sim = _physics_and_task(self.task)
        self.seed: int | None = None
        self.steps = 0
        self.best_reward = 0.0
        self._raw: dict[str, np.ndarray] | None = None
        self._renderer = None

    @property
    def physics(self):
        return self._env.physics

    def reset(self, seed: int, *, render: bool = True) -> dict[str, np.ndarray]:
        """Place the objects as gym-aloha's `reset(seed=seed)` does; the arms at rest.
        `render=False` leaves the images out."""
        from gym_aloha.utils import sample_box_pose, sample_insertion_pose

        seed = int(seed)
        if not 0 <= seed < 2 ** 32:
            raise ValueError(f"seed {seed} out of range [0, 2**32) (numpy RandomState)")
        pose = (sample_box_pose(seed) if self.task == "transfer_cube"
                else np.concatenate(sample_insertion_pose(seed)))
        self._sim.BOX_POSE[0] = pose  # gym-aloha's channel to initialize_episode
        self._raw = dict(self._env.reset().observation)
        self.seed, self.steps, self.best_reward = seed, 0, 0.0
        return self.observation(render)

    def step(self, action: np.ndarray, *, render: bool = True):
        """One 50 Hz control step; returns (observation, reward, terminated, truncated,
        info). terminated: reward 4 reached (now or before); truncated: `max_steps`.
        `render=False` leaves the images out (nothing is rendered)."""
        if self._raw is None:
            raise RuntimeError("call reset(seed) before step()")
        action = np.asarray(action, np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{self.task}: action of shape {action.shape}; expected "
                             f"({ACTION_DIM},) absolute joint targets")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: non-finite action at step {self.steps}: {action}")
        timestep = self._env.step(action)
        self._raw = dict(timestep.observation)
        reward = float(timestep.reward)
        self.best_reward = max(self.best_reward, reward)
        self.steps += 1
        info = self.info(reward)
        return (self.observation(render), reward, info["success"] > 0,
                self.steps >= self.max_steps, info)

    def info(self, reward: float) -> dict[str, Any]:
        return {"reward": reward, "max_reward": self.best_reward,
                "stage": int(self.best_reward), "progress": self.progress,
                "success": float(self.best_reward >= MAX_REWARD),
                "is_success": self.best_reward >= MAX_REWARD}

    @property
    def progress(self) -> float:
        """Stages reached so far / 4 (ATP's per-episode progress)."""
        return self.best_reward / MAX_REWARD

    def stage_flags(self) -> np.ndarray:
        """bool[4]: stage k+1 reached so far (for `eval.metrics.ProgressCounter`)."""
        return np.arange(1, MAX_REWARD + 1) <= self.best_reward

    def object_state(self) -> np.ndarray:
        objects = np.zeros(OBJECT_STATE_DIM, np.float64)
        env_state = np.asarray(self._raw["env_state"], np.float64)
        objects[:env_state.size] = env_state
        return objects

    def observation(self, render: bool = True) -> dict[str, np.ndarray]:
        """proprio, state and (with cameras and `render`) image_<camera>."""
        raw = self._raw
        obs = {"proprio": np.asarray(raw["qpos"], np.float32),
               "state": np.concatenate([raw["qvel"], self.object_state()]).astype(np.float32)}
        if render:
            for cam, image in self.render().items():
                obs[f"image_{cam}"] = image
        return obs

    def render(self, cameras: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The cameras' images (needs MUJOCO_GL=egl or osmesa; see module doc).

        mujoco's own renderer gives the same pixels as gym-aloha's dm_control
        `physics.render` (checked: identical at 480x640), faster, and without
        dm_control's GL context threads, which fail at interpreter exit."""
        cameras = self.cameras if cameras is None else tuple(cameras)
        if not cameras:
            return {}
        if self._renderer is None:
            import mujoco

            self._renderer = mujoco.Renderer(self.physics.model.ptr, *NATIVE_IMAGE_SIZE)
        images = {}
        for cam in cameras:
            self._renderer.update_scene(self.physics.data.ptr, camera=cam)
            images[cam] = resize_image(self._renderer.render(), self.image_size)
        return images

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class AlohaSimEvalEnv:
    """A task producing builder-shaped observations for a policy spec (the interface
    of `envs.metaworld_eval.MetaWorldEvalEnv`); only evaluation seeds are accepted."""

    def __init__(self, task: str, spec: PolicySpec, *, max_steps: int | None = None,
                 language_embedding: np.ndarray | None = None,
                 video_camera: str | None = None):
        self.task = canonical_task(task)
        self.spec = spec
        self.instruction = instruction(self.task)
        if spec.action_dim != ACTION_DIM:
            raise ValueError(f"policy {spec.name!r} has action_dim {spec.action_dim}; ALOHA "
                             f"sim takes {ACTION_DIM} joint targets")
        if "language_embedding" in spec.observation_keys and language_embedding is None:
            raise ValueError(f"policy {spec.name!r} needs language_embedding; pass the "
                             f"embedding of {self.instruction!r}")
        self.language_embedding = (None if language_embedding is None
                                   else np.asarray(language_embedding, np.float32))
        cameras = tuple(spec.cameras)
        if video_camera and video_camera not in cameras:
            cameras += (video_camera,)
        self.video_camera = video_camera
        self.env = AlohaSimEnv(self.task, cameras=cameras, image_size=spec.image_size,
                               max_steps=max_steps)
        self.max_steps = self.env.max_steps
        self._obs: dict[str, np.ndarray] = {}

    def reset(self, layout: int) -> dict[str, Any]:
        if layout < EVAL_SEED_BASE:
            raise ValueError(f"seed {layout} is a training layout; evaluation uses seeds >= "
                             f"{EVAL_SEED_BASE} (see eval_seeds)")
        self._obs = self.env.reset(layout)
        return self.observation()

    def observation(self, render: bool = True) -> dict[str, Any]:
        del render  # images were rendered with the step that produced them
        obs: dict[str, Any] = {}
        for key in self.spec.observation_keys:
            if key == "language_instruction":
                obs[key] = self.instruction
            elif key == "language_embedding":
                obs[key] = self.language_embedding
            else:
                obs[key] = self._obs[key]
        return obs

    def video_frame(self) -> np.ndarray | None:
        return self._obs.get(f"image_{self.video_camera}") if self.video_camera else None

    def step(self, action: np.ndarray, render: bool = True):
        """Apply one policy action (absolute joint targets in either action space);
        returns (observation, info, truncated)."""
        self._obs, _, _, truncated, info = self.env.step(action, render=render)
        return self.observation(), info, truncated

    @property
    def state(self) -> np.ndarray:
        return self._obs["state"]

    def close(self) -> None:
        self.env.close()

