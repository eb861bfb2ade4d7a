"""The ALOHA real-arm bridge against simulated arms (gym-aloha's joint-space physics).

The fuzz test sends random, huge, NaN, inf, wrong-shaped, jumping and missing commands
through `AlohaRealEnv` and checks every command the simulated arm received on its own
(limits from the model file, steps from the previous write), never trusting the
safety layer's state. The Interbotix IO runs against stand-in ROS modules.
"""

import sys
import time
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from atomskill_jax.envs import aloha_real as real
from atomskill_jax.envs.aloha_grippers import ALOHA_1, GRIPPER_CHANNELS
from atomskill_jax.envs.aloha_safety import SafetyConfig

GRIP = list(GRIPPER_CHANNELS)
PERIOD = 1.0 / 50


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def model_ranges() -> tuple[np.ndarray, np.ndarray]:
    """The actuators' control ranges of gym-aloha's model, in robot units [14]."""
    from gym_aloha.constants import ASSETS_DIR

    root = ET.parse(ASSETS_DIR / "bimanual_viperx_transfer_cube.xml").getroot()
    ranges = {a.get("joint"): [float(v) for v in a.get("ctrlrange").split()]
              for a in root.iter("position")}
    names = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
    rows = [ranges[f"vx300s_{side}/{n}"] for side in ("left", "right")
            for n in names + ["gripper"] if n != "gripper"]
    rows.insert(6, [ALOHA_1.joint_closed, ALOHA_1.joint_open])
    rows.insert(13, [ALOHA_1.joint_closed, ALOHA_1.joint_open])
    return np.array(rows)[:, 0], np.array(rows)[:, 1]


@pytest.fixture
def sim():
    clock = FakeClock()
    io = real.SimulatedArmsIO(record=True)
    env = real.AlohaRealEnv(io, clock=clock, sleep=clock.sleep)
    yield env, io, clock
    env.close()


def fuzz_actions(rng, steps):
    """Policy outputs (policy units) or None for a dropped command."""
    target = real.HOME_POSE.copy()
    for _ in range(steps):
        kind = rng.integers(9)
        if kind == 0:  # random, far outside the ranges
            yield rng.uniform(-6, 6, 14)
        elif kind == 1:  # huge finite
            yield rng.choice([-1, 1], 14) * 10.0 ** rng.uniform(2, 308, 14)
        elif kind == 2:  # NaN / inf somewhere
            bad = target.copy()
            bad[rng.integers(14, size=rng.integers(1, 4))] = rng.choice([np.nan, np.inf, -np.inf])
            yield bad
        elif kind == 3:  # wrong shapes and types
            yield [np.zeros(13), np.zeros((2, 7)), np.zeros((8, 14)), None, "go", 1.0,
                   np.ones(15), [[0.1] * 7, [0.2]]][rng.integers(8)]
        elif kind == 4:  # a sudden jump, then held for a while
            target = rng.uniform(-2, 2, 14)
            for _ in range(rng.integers(1, 20)):
                yield target
        elif kind == 5:  # dropped commands, sometimes past the watchdog timeout
            for _ in range(rng.integers(1, 12)):
                yield None
        else:  # a plausible policy: small moves around the target
            target = target + rng.normal(0, 0.02, 14)
            yield target


def check_writes(writes, reference, config=SafetyConfig()):
    """Independent checks of commands that reached the arm; returns the max excesses."""
    lower, upper = config.bounds()
    model_lower, model_upper = model_ranges()
    step = np.full(14, config.max_joint_step)
    step[GRIP] = config.max_gripper_step
    writes = np.asarray(writes)
    assert writes.ndim == 2 and writes.shape[1] == 14 and writes.dtype == np.float64
    assert np.isfinite(writes).all()
    assert (writes >= lower).all() and (writes <= upper).all()
    assert (writes >= model_lower - 1e-5).all() and (writes <= model_upper + 1e-5).all()
    moves = np.abs(np.diff(np.vstack([reference, writes]), axis=0))
    excess = float((moves - step).max())
    assert excess <= 1e-12, f"a command moved {excess} rad past its step limit"
    return excess


def test_fuzzed_policy_outputs_never_reach_the_arm_unsafe(sim):
    env, io, clock = sim
    env.reset(home=None)
    reference = real.robot_position(io.read())
    rng = np.random.default_rng(0)
    ticks = 0
    for action in fuzz_actions(rng, 700):
        if action is None:
            env.tick()
            env.rate.wait()
        else:
            env.step(action)
        ticks += 1
    counters = env.counters
    assert counters["rejected"] > 50 and counters["clipped"] > 50
    assert counters["rate_limited"] > 100 and counters["watchdog_holds"] > 5
    assert set(counters["rejected_by_reason"]) >= {"shape", "non_finite", "dtype"}
    check_writes(io.writes, reference)
    # every command and every hold was written, nothing else
    assert len(io.writes) == counters["commands"] + counters["watchdog_holds"]
    assert abs(clock.t - 1000.0 - ticks * PERIOD) < 1e-6  # 50 Hz kept
    assert np.isfinite(io.physics.data.qpos).all()

    # a new episode: the reference restarts from the measured position
    io.reset(seed=1)
    io.writes.clear()
    env.reset(home=None)
    reference = real.robot_position(io.read())
    for action in fuzz_actions(np.random.default_rng(1), 200):
        env.step(action) if action is not None else env.tick()
    check_writes(io.writes, reference)


def test_check_writes_catches_a_bridge_without_safety(sim):
    env, io, _ = sim
    env.reset(home=None)
    reference = real.robot_position(io.read())
    io.write(np.clip(reference + 0.2, *SafetyConfig().bounds()))  # a jump past the step
    with pytest.raises(AssertionError, match="step limit"):
        check_writes(io.writes, reference)


def test_gripper_units_are_converted_both_ways(sim):
    env, io, _ = sim
    env.reset(home=None)
    action = real.HOME_POSE.copy()
    action[GRIP] = [1.0, 1.0]  # both open (policy units)
    for _ in range(40):
        opened = env.step(action)
    action[GRIP] = [1.0, 0.0]  # then the right one closed
    for _ in range(40):
        obs = env.step(action)
    np.testing.assert_allclose(io.writes[-1][GRIP], [ALOHA_1.joint_open, ALOHA_1.joint_closed])
    finger = io.physics.data.qpos[[6, 14]]
    np.testing.assert_allclose(obs["proprio"][GRIP], ALOHA_1.finger_to_normalized(finger),
                               rtol=1e-6)
    # the simulated fingers open to 0.057 m (0.97) and close onto each other near 0.0224 m
    assert opened["proprio"][13] > 0.9 and obs["proprio"][6] > 0.9 and obs["proprio"][13] < 0.15
    np.testing.assert_allclose(env.last_reading.gripper_joint, ALOHA_1.finger_to_joint(finger))
    action[GRIP] = [0.5, 0.8]  # in between: the units must match, not only the end stops
    for _ in range(40):
        obs = env.step(action)
    np.testing.assert_allclose(obs["proprio"][GRIP], [0.5, 0.8], atol=0.02)


def test_observation_keys_shapes_and_state_layouts():
    clock = FakeClock()
    io = real.SimulatedArmsIO()
    env = real.AlohaRealEnv(io, clock=clock, sleep=clock.sleep)
    env.reset(home=None)
    for _ in range(3):  # moving, so that qvel and effort are not zero
        obs = env.step(real.HOME_POSE + 0.04)
    assert sorted(obs) == sorted(["proprio", "state"] + [f"image_{c}" for c in real.CAMERAS])
    assert obs["proprio"].shape == (14,) and obs["proprio"].dtype == np.float32
    assert obs["state"].shape == (28,) and obs["state"].dtype == np.float32
    for cam in real.CAMERAS:
        assert obs[f"image_{cam}"].shape == (480, 640, 3) and obs[f"image_{cam}"].dtype == np.uint8
    reading = io.read()
    qvel = reading.qvel.copy()
    qvel[GRIP] = ALOHA_1.finger_velocity_to_normalized(qvel[GRIP])
    assert np.abs(qvel).min() > 1e-3 and np.abs(reading.effort).min() > 1e-4
    np.testing.assert_allclose(obs["state"], np.r_[qvel, reading.effort], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(obs["proprio"][:6], reading.qpos[:6], atol=1e-7)
    small = real.AlohaRealEnv(io, state="qvel", image_size=(48, 64), cameras=("cam_high",),
                              clock=clock, sleep=clock.sleep).reset(home=None)
    assert sorted(small) == ["image_cam_high", "proprio", "state"]
    assert small["state"].shape == (14,) and small["image_cam_high"].shape == (48, 64, 3)
    assert "state" not in real.AlohaRealEnv(io, state="none", cameras=()).reset(home=None)
    io._images["cam_low"] = None  # a camera that has not published yet
    with pytest.raises(RuntimeError, match="cam_low"):
        env.observe()
    with pytest.raises(ValueError, match="state"):
        real.AlohaRealEnv(io, state="effort")


def test_rate_keeper_keeps_the_period_and_restarts_after_an_overrun():
    clock = FakeClock()
    rate = real.RateKeeper(50, clock, clock.sleep)
    rate.restart()
    start = clock.t
    for _ in range(5):
        clock.t += 0.005  # work inside the period
        assert rate.wait() == pytest.approx(0.015)
    assert clock.t - start == pytest.approx(5 * PERIOD)
    clock.t += 0.05  # a stall longer than two periods
    assert rate.wait() < 0 and rate.overruns == 1
    resumed = clock.t
    rate.wait()
    assert clock.t - resumed == pytest.approx(PERIOD)  # one period, no burst


def test_reset_moves_home_through_the_safety_layer(sim):
    env, io, _ = sim
    env.reset(home=None)
    far = real.HOME_POSE.copy()
    far[[0, 2, 7]] = [0.8, 0.3, -0.8]
    env.move_to(far, seconds=1.0)
    np.testing.assert_allclose(io.writes[-1], real.policy_to_robot(far), atol=1e-12)
    reference = real.robot_position(io.read())
    io.writes.clear()
    env.reset(seconds=0.2)  # a 10-step ramp is faster than the rate limit: 18 steps needed
    check_writes(io.writes, reference)
    np.testing.assert_allclose(io.writes[-1], real.policy_to_robot(real.HOME_POSE), atol=1e-12)
    with pytest.raises(ValueError, match="target"):
        env.move_to(np.full(14, np.nan))


def test_threaded_loop_holds_when_submissions_stop_and_resumes():
    io = real.SimulatedArmsIO(record=True)
    env = real.AlohaRealEnv(io, safety=SafetyConfig(watchdog_timeout=0.06))
    env.reset(home=None)
    reference = real.robot_position(io.read())
    env.start()
    try:
        with pytest.raises(RuntimeError, match="submit"):
            env.step(real.HOME_POSE)
        target = real.HOME_POSE.copy()
        for k in range(6):
            target[0] = 0.03 * k
            env.submit(target)
            time.sleep(PERIOD)
        env.submit(target + 1.0)  # replaced at once: the loop sends only the newest
        env.submit(target - 1.0)
        env.submit(target)
        time.sleep(0.3)  # no submissions: the watchdog holds
        held = env.counters["watchdog_holds"]
        env.submit(np.full(14, np.nan))  # rejected, counted
        time.sleep(0.05)
    finally:
        env.stop()
    counters = env.counters
    assert held >= 3 and counters["watchdog_trips"] >= 1 and counters["rejected"] == 1
    assert counters["superseded"] >= 1
    check_writes(io.writes, reference)
    assert io.writes[-1][0] == pytest.approx(0.15)  # held at the last safe target


def test_loop_errors_reach_the_submitter():
    class Broken(real.SimulatedArmsIO):
        def write(self, command):
            raise OSError("bus down")

    env = real.AlohaRealEnv(Broken())
    env.reset(home=None)
    env.start()
    env.submit(real.HOME_POSE)
    deadline = time.monotonic() + 2
    while env.loop_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="bus down"):
        env.submit(real.HOME_POSE)
    env.stop()


# -- the real arms: packages, and the Interbotix IO on stand-in modules ------------------
def test_missing_robot_packages_are_named_with_what_to_install():
    for ros in ("auto", "ros2", "ros1"):
        with pytest.raises(real.RobotPackagesMissing) as err:
            real.import_robot_packages(ros)
        message = str(err.value)
        assert "interbotix_xs_modules" in message and "interbotix_xs_msgs" in message
        assert "xsarm_amd64_install.sh" in message and "SimulatedArmsIO" in message
        assert "source /opt/ros/" in message
    assert "rclpy" in message or "rospy" in message
    with pytest.raises(real.RobotPackagesMissing, match="neither rclpy .* nor rospy"):
        real.AlohaRealEnv.open_real()
    assert "rclpy (ModuleNotFoundError" in str(pytest.raises(
        real.RobotPackagesMissing, real.import_robot_packages, "ros2").value)


JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate",
          "gripper", "left_finger", "right_finger"]


def stand_in_ros(monkeypatch, ros):
    """Minimal rclpy/rospy + Interbotix modules recording what the IO does with them."""
    log = {"published": [], "topics": {}, "calls": [], "bots": {}, "cores": {}}

    class Command:
        def __init__(self, name="", cmd=None):
            self.name, self.cmd = name, cmd

    class Publisher:
        def __init__(self, robot, kind):
            self.robot, self.kind = robot, kind

        def publish(self, msg):
            log["published"].append((self.robot, self.kind, msg.name, msg.cmd))

    class Core:
        def __init__(self, robot):
            self.robot, self.joint_states = robot, None
            self.pub_group, self.pub_single = Publisher(robot, "group"), Publisher(robot, "single")

        def __getattr__(self, name):  # robot_reboot_motors, robot_set_operating_modes, ...
            return lambda *args: log["calls"].append((self.robot, name) + args)

    class Arm:
        def __init__(self, robot_model, group_name, gripper_name, robot_name, **kwargs):
            assert (robot_model, group_name, gripper_name) == ("vx300s", "arm", "gripper")
            core = log["cores"][robot_name] = Core(robot_name)
            setattr(self, "core" if ros == "ros2" else "dxl", core)
            log["bots"][robot_name] = kwargs

    def feed():  # what spinning delivers: joint states (shuffled order) and frames
        for i, (name, _) in enumerate(log["bots"].items()):
            order = JOINTS[::-1]
            values = {j: 0.1 * k + i for k, j in enumerate(JOINTS)}
            values["left_finger"] = 0.05 if i == 0 else 0.02
            state = types.SimpleNamespace(name=order, position=[values[j] for j in order],
                                          velocity=[-values[j] for j in order],
                                          effort=[10 * values[j] for j in order])
            log["cores"][name].joint_states = state
        pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
        padded = np.concatenate([pixels.reshape(4, 15), np.zeros((4, 1), np.uint8)], 1)
        for callback in log["topics"].values():
            callback(types.SimpleNamespace(encoding="bgr8", height=4, width=5, step=16,
                                           data=padded.tobytes()))
        log["pixels"] = pixels

    class Node:
        def create_subscription(self, kind, topic, callback, depth):
            log["topics"][topic] = callback

    modules = {}

    def add(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        modules[name] = module

    for name in ("sensor_msgs", "interbotix_xs_msgs", "interbotix_xs_modules",
                 "interbotix_common_modules", "interbotix_xs_modules.xs_robot",
                 "interbotix_common_modules.common_robot"):
        add(name)
    add("sensor_msgs.msg", Image=object)
    add("interbotix_xs_msgs.msg", JointGroupCommand=Command, JointSingleCommand=Command)
    if ros == "ros2":
        node = Node()
        add("rclpy")
        add("interbotix_xs_modules.xs_robot.arm", InterbotixManipulatorXS=Arm)
        add("interbotix_common_modules.common_robot.robot",
            get_interbotix_global_node=lambda: None,
            create_interbotix_global_node=lambda name: node,
            robot_startup=lambda n: feed(), robot_shutdown=lambda n: log["calls"].append("down"))
    else:
        add("rospy", Subscriber=lambda topic, kind, cb: log["topics"].__setitem__(topic, cb))
        add("interbotix_xs_modules.arm", InterbotixManipulatorXS=Arm)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    if ros == "ros1":  # rospy delivers as soon as subscribed; feed before the wait
        real_wait = real.InterbotixArmsIO._wait_for_data
        monkeypatch.setattr(real.InterbotixArmsIO, "_wait_for_data",
                            lambda self, *a: (feed(), real_wait(self, *a)))
    return log


@pytest.mark.parametrize("ros", ["ros2", "ros1"])
def test_interbotix_io_on_stand_in_modules(monkeypatch, ros):
    log = stand_in_ros(monkeypatch, ros)
    io = real.InterbotixArmsIO(ros="auto" if ros == "ros2" else "ros1", wait_seconds=0.5)
    io.open()
    assert io.ros == ros
    names = list(real.DEFAULT_ROBOT_NAMES[ros])
    assert list(log["bots"]) == names
    topic = real.DEFAULT_CAMERA_TOPICS[ros]
    assert sorted(log["topics"]) == sorted(topic.format(camera=c) for c in real.CAMERAS)
    for robot in names:  # ALOHA's follower setup, in order
        assert [c[1:] for c in log["calls"] if c[0] == robot] == [
            ("robot_reboot_motors", "single", "gripper", True),
            ("robot_set_operating_modes", "group", "arm", "position"),
            ("robot_set_operating_modes", "single", "gripper", "current_based_position"),
            ("robot_torque_enable", "group", "arm", True),
            ("robot_torque_enable", "single", "gripper", True)]

    reading = io.read()  # by joint name, not by position in the message
    np.testing.assert_allclose(reading.qpos[:6], 0.1 * np.arange(6))
    np.testing.assert_allclose(reading.qpos[7:13], 0.1 * np.arange(6) + 1)
    np.testing.assert_allclose(reading.qpos[GRIP], [0.05, 0.02])  # left finger, m
    np.testing.assert_allclose(reading.gripper_joint, [0.6, 1.6])  # gripper motor
    np.testing.assert_allclose(reading.effort[[5, 6]], [5.0, 6.0])  # wrist rotate, gripper
    np.testing.assert_array_equal(reading.images["cam_high"], log["pixels"][..., ::-1])

    env = real.AlohaRealEnv(io)
    obs = env.reset(home=None)
    np.testing.assert_allclose(obs["proprio"][GRIP], ALOHA_1.finger_to_normalized([0.05, 0.02]),
                               rtol=1e-6)
    log["published"].clear()
    action = real.robot_to_policy(real.robot_position(reading))
    action[1] += 0.01
    action[GRIP] = [1.0, 0.0]
    env.step(action)
    sent = {(robot, kind): cmd for robot, kind, _, cmd in log["published"]}
    np.testing.assert_allclose(sent[(names[0], "group")], reading.qpos[:6] + [0, 0.01, 0, 0, 0, 0])
    # grippers: motor open (1.4910) rate-limited from 0.6 rad; closed (-0.6213) from 1.6 rad
    assert sent[(names[0], "single")] == pytest.approx(0.6 + 0.1)
    assert sent[(names[1], "single")] == pytest.approx(1.4910 - 0.1)
    assert all(isinstance(v, float) for cmd in sent.values() for v in np.atleast_1d(cmd))
    log["cores"][names[0]].joint_states = types.SimpleNamespace(
        name=["waist"], position=[0.0], velocity=[0.0], effort=[0.0])
    with pytest.raises(RuntimeError, match=f"{names[0]}: joint_states names"):
        io.read()
    env.close()
    assert ("down" in log["calls"]) == (ros == "ros2")


def test_interbotix_io_times_out_naming_silent_topics(monkeypatch):
    log = stand_in_ros(monkeypatch, "ros2")
    robot = sys.modules["interbotix_common_modules.common_robot.robot"]
    monkeypatch.setattr(robot, "robot_startup", lambda node: None)  # nothing ever arrives
    io = real.InterbotixArmsIO(ros="ros2", wait_seconds=0.1, setup_robots=False)
    with pytest.raises(TimeoutError, match="follower_left.*cam_high"):
        io.open()
    assert log["calls"] == []


def test_image_messages_need_a_known_encoding():
    msg = types.SimpleNamespace(encoding="mono8", height=1, width=1, step=1, data=b"\x00")
    with pytest.raises(ValueError, match="mono8"):
        real.image_message_to_array(msg)


def test_importing_the_bridge_imports_no_robot_or_simulator_package():
    import subprocess

    code = ("import sys, atomskill_jax.envs.aloha_real; print(sorted({m.split('.')[0] for m in "
            "sys.modules} & {'rclpy', 'rospy', 'interbotix_xs_modules', 'gym_aloha', "
            "'dm_control', 'mujoco', 'jax', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sim_io_refuses_what_no_arm_should_get():
    io = real.SimulatedArmsIO()
    with pytest.raises(ValueError, match="14 finite"):
        io.write(np.full(14, np.nan))
    with pytest.raises(ValueError, match="unknown task"):
        real.SimulatedArmsIO(task="stack")
