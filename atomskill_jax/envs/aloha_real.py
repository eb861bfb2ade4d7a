"""The real-arm bridge for ALOHA: policy actions -> safety layer -> two vx300s arms.

Shaped like the ALOHA stacks' `RealEnv` (ACT `aloha_scripts/real_env.py`, Interbotix
`aloha/real_env.py`), around a small robot-IO interface (`RobotIO`: `read`, `write`,
`close`) so the bridge's logic - 50 Hz rate, unit conversion, safety, watchdog - runs
against a simulated arm (`SimulatedArmsIO`, gym-aloha's joint-space physics) as it runs
against the real one (`InterbotixArmsIO`).

Units. The policy side uses gym-aloha's convention (the project trains on gym-aloha
data): 14 values, per arm (left, then right) 6 joint angles (rad) and the gripper as a
normalised opening, 0 closed .. 1 open. The robot side (`RobotIO.write`, the safety
layer) takes the gripper as the motor angle (rad). `aloha_grippers` converts, with the
calibration of the safety config (ALOHA 1 constants by default).

Observations use the project's keys, as `data_builders/aloha_hdf5` writes real-robot
episodes: `proprio` float32[14] = qpos (gripper normalised from the finger position, as
ACT's `get_qpos`); `state` float32[28] = qvel (gripper as a normalised velocity) then
effort (6 joint motors + gripper motor per arm, as ACT's `get_effort`); `state="qvel"`
gives qvel alone [14] (builds without effort). `image_<camera>` uint8[480, 640, 3] RGB
for cam_high, cam_low, cam_left_wrist, cam_right_wrist (or resized to `image_size`).
Policies trained on `aloha_sim` data that read `state` (object poses there) cannot run on
the real arms; `proprio` and the images mean the same on both.

Commands: `step(action)` sends one command and keeps 50 Hz (`RateKeeper`). `start()` runs
the loop in a thread instead: `submit(action)` from the policy's side, and every period
the loop sends the newest command or, when none arrived within the watchdog timeout, a
hold of the last safe one. Robot packages (interbotix_xs_modules / interbotix_common_modules,
rclpy or rospy) are imported only by `InterbotixArmsIO.open()`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import threading
import time
import types
import warnings
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from atomskill_jax.envs.aloha_grippers import (ALOHA_1, GRIPPER_CHANNELS, GripperCalibration,
                                               policy_to_robot, robot_to_policy)
from atomskill_jax.envs.aloha_safety import (COMMAND_DIM, JOINT_NAMES, SafetyConfig,
                                             SafetyDecision, SafetyLayer, check_command)
from atomskill_jax.envs.aloha_sim import resize_image

CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
IMAGE_SHAPE = (480, 640, 3)
CONTROL_HZ = 50.0
STATE_LAYOUTS = {"qvel_effort": 2 * COMMAND_DIM, "qvel": COMMAND_DIM, "none": 0}
# gym-aloha / ACT START_ARM_POSE per arm, the finger 0.02239 m as an ALOHA 1 opening.
HOME_POSE = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, ALOHA_1.finger_to_normalized(0.02239)] * 2)
NO_COMMAND = object()  # `tick()` without a new command: the watchdog decides


@dataclasses.dataclass
class ArmReading:
    """One reading of both arms in robot units (left arm channels 0..6, right 7..13)."""

    qpos: np.ndarray  # [14] joints rad; gripper channels: left-finger position, m
    qvel: np.ndarray  # [14] rad/s; gripper channels: finger velocity, m/s
    effort: np.ndarray  # [14] as the motors report it; gripper channels: gripper motor
    gripper_joint: np.ndarray  # [2] gripper motor angles, rad (left, right)
    images: Mapping[str, np.ndarray | None]  # camera -> uint8 [H, W, 3] RGB (None: no frame)


class RobotIO(Protocol):
    def read(self) -> ArmReading: ...
    def write(self, command: np.ndarray) -> None: ...  # float64[14], robot units
    def close(self) -> None: ...


def robot_position(reading: ArmReading) -> np.ndarray:
    """The measured position as a robot-unit command [14] (gripper: motor angle)."""
    position = np.asarray(reading.qpos, np.float64).copy()
    position[list(GRIPPER_CHANNELS)] = reading.gripper_joint
    return position


class RateKeeper:
    """Sleeps until the next tick of a fixed-rate schedule; a late tick (overrun) restarts
    the schedule from now rather than firing a burst of catch-up ticks."""

    def __init__(self, hz: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.period = 1.0 / float(hz)
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None
        self.ticks = self.overruns = 0

    def restart(self) -> None:
        self._next = self._clock() + self.period

    def wait(self) -> float:
        """Block until the next tick; returns the slack in s (negative: that late)."""
        now = self._clock()
        if self._next is None:
            self._next = now + self.period
        slack = self._next - now
        if slack > 0:
            self._sleep(slack)
            self._next += self.period
        else:
            self.overruns += 1
            self._next = now + self.period
        self.ticks += 1
        return slack


class AlohaRealEnv:
    """The bridge: `reset()`, then `step(action)` at 50 Hz (or `start()` / `submit()`)."""

    def __init__(self, io: RobotIO, *, safety: SafetyConfig | None = None,
                 hz: float = CONTROL_HZ, cameras: Sequence[str] = CAMERAS,
                 state: str = "qvel_effort", image_size: Sequence[int] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if state not in STATE_LAYOUTS:
            raise ValueError(f"AlohaRealEnv(state={state!r}): use one of {list(STATE_LAYOUTS)}")
        self.io = io
        self.safety = SafetyLayer(safety, clock=clock)
        self.calibration: GripperCalibration = self.safety.config.gripper
        self.hz = float(hz)
        self.cameras, self.state_layout = tuple(cameras), state
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self._clock, self._sleep = clock, sleep
        self.rate = RateKeeper(hz, clock, sleep)
        self.last_decision: SafetyDecision | None = None
        self.last_reading: ArmReading | None = None
        self._io_lock = threading.Lock()  # the loop thread writes while the caller reads
        self._pending_lock = threading.Lock()
        self._pending: Any = NO_COMMAND
        self._thread: threading.Thread | None = None
        self._running = False
        self.loop_error: BaseException | None = None
        self.superseded = 0  # submitted commands replaced before the loop sent them

    @classmethod
    def open_real(cls, *, io_options: Mapping[str, Any] | None = None, **options) -> "AlohaRealEnv":
        """Connect to the real arms (imports the robot packages; see `InterbotixArmsIO`)."""
        safety = options.get("safety") or SafetyConfig()
        io = InterbotixArmsIO(calibration=safety.gripper, cameras=options.get("cameras", CAMERAS),
                              **dict(io_options or {}))
        io.open()
        return cls(io, **options)

    # -- observations --------------------------------------------------------------
    def _read(self) -> ArmReading:
        with self._io_lock:
            reading = self.io.read()
        self.last_reading = reading
        return reading

    def observe(self) -> dict[str, np.ndarray]:
        """A fresh reading under the project's observation keys (see module docstring)."""
        reading = self._read()
        grip = list(GRIPPER_CHANNELS)
        qpos = np.asarray(reading.qpos, np.float64).copy()
        qpos[grip] = self.calibration.finger_to_normalized(qpos[grip])
        obs = {"proprio": qpos.astype(np.float32)}
        if self.state_layout != "none":
            qvel = np.asarray(reading.qvel, np.float64).copy()
            qvel[grip] = self.calibration.finger_velocity_to_normalized(qvel[grip])
            parts = [qvel] + ([reading.effort] if self.state_layout == "qvel_effort" else [])
            obs["state"] = np.concatenate(parts).astype(np.float32)
        for cam in self.cameras:
            image = reading.images.get(cam)
            if image is None:
                raise RuntimeError(f"camera {cam!r}: no frame received yet; check that its "
                                   "topic publishes (rostopic/ros2 topic hz)")
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise RuntimeError(f"camera {cam!r}: frame {image.dtype}{list(image.shape)}; "
                                   "expected uint8 [H, W, 3] RGB")
            if self.image_size and image.shape[:2] != self.image_size:
                image = resize_image(image, self.image_size)  # as the sim data is resized
            obs[f"image_{cam}"] = image
        return obs

    # -- commands ------------------------------------------------------------------
    def reset(self, home: np.ndarray | None = HOME_POSE, seconds: float = 2.0):
        """Start the safety layer from the measured position, then (unless `home` is
        None) move to `home` (policy units) over `seconds`; returns the observation."""
        self.safety.reset(robot_position(self._read()), now=self._clock())
        self.rate.restart()
        if home is not None:
            return self.move_to(home, seconds)
        return self.observe()

    def tick(self, action: Any = NO_COMMAND) -> SafetyDecision | None:
        """One control period: filter `action` (policy units) and send it, or without an
        action let the watchdog send a hold when commands stopped. Returns the decision."""
        now = self._clock()
        if action is NO_COMMAND:
            decision = self.safety.watchdog(now)
        else:
            command, _, _ = check_command(action)
            # bad input goes to the filter as it came, to be rejected and counted there
            decision = self.safety.filter(
                action if command is None else policy_to_robot(command, self.calibration), now)
        if decision is not None:
            with self._io_lock:
                self.io.write(decision.command)
            self.last_decision = decision
        return decision

    def step(self, action: Any) -> dict[str, np.ndarray]:
        """Send one action (policy units), wait for the next 50 Hz tick, observe."""
        if self._thread is not None:
            raise RuntimeError("AlohaRealEnv.step: the control loop runs (start()); use "
                               "submit(action) and observe(), or stop() first")
        self.tick(action)
        self.rate.wait()
        return self.observe()

    def move_to(self, target: np.ndarray, seconds: float = 2.0) -> dict[str, np.ndarray]:
        """Ramp from the last safe command to `target` (policy units) over `seconds`,
        through the safety layer, then until its rate limit no longer binds."""
        goal, _, message = check_command(target)
        if goal is None:
            raise ValueError(f"AlohaRealEnv.move_to: target {message}")
        if self.safety.last_safe is None:
            raise RuntimeError("AlohaRealEnv.move_to: call reset() first")
        start = robot_to_policy(self.safety.last_safe, self.calibration)
        steps = max(1, int(round(seconds * self.hz)))
        obs = None
        for k in range(1, steps + 1):
            obs = self.step(start + (goal - start) * (k / steps))
        for _ in range(steps):
            if self.last_decision is not None and self.last_decision.rate_limited == 0:
                break
            obs = self.step(goal)
        return obs

    # -- the threaded loop ---------------------------------------------------------
    def start(self) -> None:
        """Run the control loop in a thread (after `reset`): every period it sends the
        newest submitted action or lets the watchdog hold."""
        if self._thread is not None:
            raise RuntimeError("AlohaRealEnv.start: the control loop already runs")
        if self.safety.last_safe is None:
            raise RuntimeError("AlohaRealEnv.start: call reset() first")
        self.loop_error, self._running = None, True
        self.rate.restart()
        self._thread = threading.Thread(target=self._loop, name="aloha-control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while self._running:
                with self._pending_lock:
                    action, self._pending = self._pending, NO_COMMAND
                self.tick(action)
                self.rate.wait()
        except BaseException as err:  # noqa: BLE001 - reported to the next submit()
            self.loop_error = err
            self._running = False

    def submit(self, action: Any) -> None:
        """Hand the loop the newest action (policy units); it goes out at the next tick."""
        if self.loop_error is not None:
            raise RuntimeError(f"the ALOHA control loop stopped: {self.loop_error!r}") \
                from self.loop_error
        if self._thread is None:
            raise RuntimeError("AlohaRealEnv.submit: call start() first (or use step())")
        with self._pending_lock:
            if self._pending is not NO_COMMAND:
                self.superseded += 1
            self._pending = action

    def stop(self, timeout: float = 1.0) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def counters(self) -> dict[str, Any]:
        return {**self.safety.counters.as_dict(), "superseded": self.superseded,
                "overruns": self.rate.overruns}

    def close(self) -> None:
        """Stop the loop and release the IO (the arms keep holding their last target)."""
        self.stop()
        self.io.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SimulatedArmsIO:
    """gym-aloha's joint-space physics behind `RobotIO` (no rendering; blank frames).

    `write` converts the gripper motor angle to gym-aloha's normalised command (through
    `calibration`), applies it as gym-aloha's task does and advances one 20 ms control
    step; `read` reports the physics in robot units (fingers in m, effort = actuator
    forces). With `record=True` every command written is kept in `writes`."""

    def __init__(self, task: str = "transfer_cube", seed: int = 0, *,
                 calibration: GripperCalibration = ALOHA_1, cameras: Sequence[str] = CAMERAS,
                 image_shape: Sequence[int] = IMAGE_SHAPE, record: bool = False):
        with warnings.catch_warnings():  # dm_control probes GLFW and warns when headless
            warnings.filterwarnings("ignore", message=r".*DISPLAY.*")
            from dm_control import mujoco
            from gym_aloha.constants import ASSETS_DIR, DT
            from gym_aloha.tasks import sim
        files = {"transfer_cube": "bimanual_viperx_transfer_cube.xml",
                 "insertion": "bimanual_viperx_insertion.xml"}
        if task not in files:
            raise ValueError(f"SimulatedArmsIO: unknown task {task!r}; use {list(files)}")
        self.task, self.calibration, self._sim = task, calibration, sim
        self.physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / files[task]))
        self._task = (sim.TransferCubeTask if task == "transfer_cube" else sim.InsertionTask)()
        self._substeps = int(round(DT / self.physics.model.opt.timestep))
        frame = np.zeros(tuple(image_shape), np.uint8)
        frame.flags.writeable = False
        self._images = {cam: frame for cam in cameras}
        self.writes: list[np.ndarray] | None = [] if record else None
        self.reset(seed)

    def reset(self, seed: int = 0) -> None:
        """Arms at gym-aloha's start pose, the objects placed as `AlohaEnv.reset(seed)`."""
        from gym_aloha.utils import sample_box_pose, sample_insertion_pose

        self._sim.BOX_POSE[0] = (sample_box_pose(seed) if self.task == "transfer_cube"
                                 else np.concatenate(sample_insertion_pose(seed)))
        self._task.initialize_episode(self.physics)
        self.physics.forward()

    def read(self) -> ArmReading:
        data = self.physics.data
        arms = np.r_[0:6, 8:14]  # per arm 6 joints, then the two fingers
        fingers = [6, 14]
        qpos = np.empty(COMMAND_DIM)
        qvel = np.empty(COMMAND_DIM)
        effort = np.empty(COMMAND_DIM)
        joints = [i for i in range(COMMAND_DIM) if i not in GRIPPER_CHANNELS]
        qpos[joints], qvel[joints] = data.qpos[arms], data.qvel[arms]
        qpos[list(GRIPPER_CHANNELS)], qvel[list(GRIPPER_CHANNELS)] = data.qpos[fingers], data.qvel[fingers]
        effort[joints] = data.actuator_force[arms]
        effort[list(GRIPPER_CHANNELS)] = data.actuator_force[fingers]
        return ArmReading(qpos=qpos, qvel=qvel, effort=effort,
                          gripper_joint=self.calibration.finger_to_joint(data.qpos[fingers]),
                          images=self._images)

    def write(self, command: np.ndarray) -> None:
        command = np.asarray(command)
        if command.shape != (COMMAND_DIM,) or not np.all(np.isfinite(command)):
            raise ValueError(f"SimulatedArmsIO.write: got {command!r}; a robot-unit command "
                             f"is {COMMAND_DIM} finite numbers")
        if self.writes is not None:
            self.writes.append(np.array(command, np.float64))
        self._task.before_step(robot_to_policy(command, self.calibration), self.physics)
        self.physics.step(self._substeps)

    def close(self) -> None:
        self.physics.free()


# -- the real arms -------------------------------------------------------------------
_WORKSPACE = ("install Trossen's Interbotix X-Series arm packages (xsarm_amd64_install.sh) "
              "and source their workspace, e.g. `source ~/interbotix_ws/install/setup.bash`")
ROBOT_PACKAGES = {  # import name -> what to install or source
    "interbotix_xs_modules": f"the Interbotix arm API (interbotix_ros_toolboxes): {_WORKSPACE}",
    "interbotix_common_modules": f"interbotix_ros_toolboxes (ROS 2): {_WORKSPACE}",
    "interbotix_xs_msgs": f"the xs_sdk messages (interbotix_ros_core): {_WORKSPACE}",
    "sensor_msgs": "ROS common_interfaces (part of every ROS install): source ROS first",
    "rclpy": "ROS 2 (ALOHA 2 uses Humble): `source /opt/ros/humble/setup.bash`",
    "rospy": "ROS 1 Noetic (the ACT-era ALOHA): `source /opt/ros/noetic/setup.bash`",
}
_ROS_MODULES = {
    "ros2": ("rclpy", "sensor_msgs.msg", "interbotix_xs_msgs.msg",
             "interbotix_xs_modules.xs_robot.arm", "interbotix_common_modules.common_robot.robot"),
    "ros1": ("rospy", "sensor_msgs.msg", "interbotix_xs_msgs.msg", "interbotix_xs_modules.arm"),
}
DEFAULT_ROBOT_NAMES = {"ros2": ("follower_left", "follower_right"),  # Interbotix/aloha
                       "ros1": ("puppet_left", "puppet_right")}  # ACT aloha_scripts
DEFAULT_CAMERA_TOPICS = {"ros2": "/{camera}/camera/color/image_rect_raw",  # RealSense
                         "ros1": "/usb_{camera}/image_raw"}  # usb_cam, ACT


class RobotPackagesMissing(ImportError):
    """The real arms need packages this Python cannot import (the message says which)."""


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
        return name in sys.modules


def import_robot_packages(ros: str = "auto") -> tuple[str, dict[str, types.ModuleType]]:
    """('ros1' | 'ros2', {module name: module}); RobotPackagesMissing lists what is missing
    and how to get it (nothing is imported before a real robot is opened)."""
    if ros == "auto":
        ros = "ros2" if _importable("rclpy") else ("ros1" if _importable("rospy") else "")
    if ros and ros not in _ROS_MODULES:
        raise ValueError(f"ros={ros!r}: use 'auto', 'ros1' or 'ros2'")
    modules, failures = {}, []
    for name in _ROS_MODULES[ros or "ros2"][0 if ros else 1:]:  # without ROS: the rest
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as err:
            failures.append(((getattr(err, "name", None) or name).split(".")[0], err))
    if failures or not ros:
        lines = [] if ros else ["  neither rclpy (ROS 2) nor rospy (ROS 1) is importable:",
                                f"    {ROBOT_PACKAGES['rclpy']}", f"    or {ROBOT_PACKAGES['rospy']}"]
        lines += [f"  {package} ({type(err).__name__}: {err}): "
                  f"{ROBOT_PACKAGES.get(package, 'install it into this Python')}"
                  for package, err in failures]
        raise RobotPackagesMissing(
            "the real ALOHA arms need packages this Python cannot import:\n"
            + "\n".join(lines) + "\n(the simulated arms, SimulatedArmsIO, need none of them)")
    return ros, modules


def image_message_to_array(message) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> uint8 [H, W, 3] RGB, without cv_bridge."""
    if message.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {message.encoding!r}; configure the camera for "
                         "rgb8 or bgr8")
    rows = np.frombuffer(bytes(message.data), np.uint8).reshape(message.height, message.step)
    image = rows[:, :message.width * 3].reshape(message.height, message.width, 3)
    return np.ascontiguousarray(image[..., ::-1] if message.encoding == "bgr8" else image)


class InterbotixArmsIO:
    """The two follower arms through the Interbotix API (ROS 1 or ROS 2) and the cameras
    through their image topics. Not run on hardware in this project (no robot here);
    its tests use stand-in modules. Arm commands go out as `JointGroupCommand` on the
    arm group (position mode without a motion profile after `setup_robots`, as ALOHA's
    `setup_puppet_bot` / `setup_follower_bot` leave it: the safety layer's rate limit is
    the only smoothing) and `JointSingleCommand` for the gripper motor."""

    def __init__(self, *, ros: str = "auto", robot_names: Sequence[str] | None = None,
                 cameras: Sequence[str] = CAMERAS, camera_topic: str | None = None,
                 calibration: GripperCalibration = ALOHA_1, setup_robots: bool = True,
                 node_name: str = "atomskill_aloha", wait_seconds: float = 5.0):
        self.ros, self.robot_names = ros, robot_names
        self.cameras, self.camera_topic = tuple(cameras), camera_topic
        self.calibration, self.setup_robots = calibration, setup_robots
        self.node_name, self.wait_seconds = node_name, wait_seconds
        self._images: dict[str, np.ndarray | None] = {cam: None for cam in self.cameras}
        self._image_errors: dict[str, str] = {}
        self._bots: list[Any] = []
        self._node = None
        self._indices: list[tuple[tuple[str, ...], list[int]]] = [((), [])] * 2

    def open(self) -> None:
        ros, m = import_robot_packages(self.ros)
        self.ros = ros
        names = self._names = tuple(self.robot_names or DEFAULT_ROBOT_NAMES[ros])
        topic = self.camera_topic or DEFAULT_CAMERA_TOPICS[ros]
        image_type = m["sensor_msgs.msg"].Image
        msgs = m["interbotix_xs_msgs.msg"]
        self._group, self._single = msgs.JointGroupCommand, msgs.JointSingleCommand
        common = dict(robot_model="vx300s", group_name="arm", gripper_name="gripper")
        if ros == "ros2":
            robot = m["interbotix_common_modules.common_robot.robot"]
            arm = m["interbotix_xs_modules.xs_robot.arm"].InterbotixManipulatorXS
            self._node = robot.get_interbotix_global_node() or \
                robot.create_interbotix_global_node(self.node_name)
            self._bots = [arm(robot_name=n, node=self._node, iterative_update_fk=False, **common)
                          for n in names]
            for cam in self.cameras:
                self._node.create_subscription(image_type, topic.format(camera=cam),
                                               self._image_callback(cam), 20)
            robot.robot_startup(self._node)  # spins the node: joint states and images flow
            self._shutdown = lambda: robot.robot_shutdown(self._node)
        else:
            rospy = m["rospy"]
            arm = m["interbotix_xs_modules.arm"].InterbotixManipulatorXS
            self._bots = [arm(robot_name=n, init_node=(i == 0), **common)
                          for i, n in enumerate(names)]
            for cam in self.cameras:
                rospy.Subscriber(topic.format(camera=cam), image_type, self._image_callback(cam))
            self._shutdown = lambda: None
        if self.setup_robots:
            for bot in self._bots:
                core = self._core(bot)
                core.robot_reboot_motors("single", "gripper", True)
                core.robot_set_operating_modes("group", "arm", "position")
                core.robot_set_operating_modes("single", "gripper", "current_based_position")
                core.robot_torque_enable("group", "arm", True)
                core.robot_torque_enable("single", "gripper", True)
        self._wait_for_data(names, topic)

    @staticmethod
    def _core(bot):
        return getattr(bot, "core", None) or bot.dxl  # ROS 2 names it core, ROS 1 dxl

    def _image_callback(self, cam: str):
        def callback(message):
            try:
                self._images[cam] = image_message_to_array(message)
            except ValueError as err:
                self._image_errors[cam] = str(err)
        return callback

    def _wait_for_data(self, names, topic) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            silent = [n for n, bot in zip(names, self._bots) if self._core(bot).joint_states is None]
            silent += [topic.format(camera=c) for c, im in self._images.items() if im is None]
            if not silent:
                return
            if time.monotonic() > deadline:
                errors = "".join(f"; {c}: {e}" for c, e in self._image_errors.items())
                raise TimeoutError(f"no data within {self.wait_seconds} s from {silent}{errors}: "
                                   "are the arm drivers and cameras launched?")
            time.sleep(0.05)

    def read(self) -> ArmReading:
        out = {k: np.empty(COMMAND_DIM) for k in ("qpos", "qvel", "effort")}
        gripper = np.empty(2)
        for side, bot in enumerate(self._bots):
            state = self._core(bot).joint_states
            names = tuple(state.name)
            if self._indices[side][0] != names:  # by name: drivers order joints by config
                try:
                    index = [names.index(j) for j in JOINT_NAMES + ("left_finger", "gripper")]
                except ValueError:
                    raise RuntimeError(f"{self._names[side]}: joint_states names {names} "
                                       f"lack one of {JOINT_NAMES + ('left_finger', 'gripper')}")
                self._indices[side] = (names, index)
            index = self._indices[side][1]
            cols = slice(7 * side, 7 * side + 7)
            out["qpos"][cols] = np.asarray(state.position)[index[:7]]
            out["qvel"][cols] = np.asarray(state.velocity)[index[:7]]
            # effort as ACT's get_effort: the 6 joint motors, then the gripper motor
            out["effort"][cols] = np.asarray(state.effort)[index[:6] + index[7:]]
            gripper[side] = state.position[index[7]]
        return ArmReading(**out, gripper_joint=gripper, images=dict(self._images))

    def write(self, command: np.ndarray) -> None:
        for side, bot in enumerate(self._bots):
            core = self._core(bot)
            arm = [float(x) for x in command[7 * side:7 * side + 6]]
            core.pub_group.publish(self._group(name="arm", cmd=arm))
            core.pub_single.publish(self._single(name="gripper", cmd=float(command[7 * side + 6])))

    def close(self) -> None:
        """Leaves the motors torqued, holding the last target (no arm falls)."""
        if self._bots:
            self._shutdown()
            self._bots = []
