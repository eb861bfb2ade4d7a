"""The ALOHA safety layer, rule by rule, and the gripper unit conversions."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from atomskill_jax.envs import aloha_grippers as grippers
from atomskill_jax.envs.aloha_safety import (CHANNEL_NAMES, CommandAudit, SafetyConfig,
                                             SafetyLayer, VX300S_JOINT_LIMITS, check_command)

GRIP = list(grippers.GRIPPER_CHANNELS)
# The brief's vx300s limits (rad, 3 decimals): the constants must agree to rounding.
STATED = [(-math.pi, math.pi), (-1.850, 1.257), (-1.763, 1.606), (-math.pi, math.pi),
          (-1.868, 2.234), (-math.pi, math.pi)]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def home():
    cmd = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.0] * 2)
    return cmd


def layer(**overrides):
    clock = Clock()
    safety = SafetyLayer(SafetyConfig(**overrides), clock=clock)
    safety.reset(home())
    return safety, clock


# -- constants -----------------------------------------------------------------------
def test_joint_limits_match_the_stated_values_and_gym_aloha_model():
    np.testing.assert_allclose(VX300S_JOINT_LIMITS, STATED, atol=5e-4)
    from gym_aloha.constants import ASSETS_DIR

    joints = {j.get("name"): j.get("range") for j in
              ET.parse(ASSETS_DIR / "vx300s_left.xml").getroot().iter("joint")}
    names = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
    model = [[float(v) for v in joints[f"vx300s_left/{n}"].split()] for n in names]
    np.testing.assert_allclose(VX300S_JOINT_LIMITS, model, atol=1e-5)
    lower, upper = SafetyConfig().bounds()
    np.testing.assert_allclose([lower[GRIP], upper[GRIP]], [[-0.6213] * 2, [1.4910] * 2])
    np.testing.assert_allclose(lower[7:13], lower[:6])  # both arms alike


def test_gripper_constants_and_conversions_agree_with_gym_aloha():
    from gym_aloha import constants as c

    cal = grippers.ALOHA_1
    assert (cal.finger_closed, cal.finger_open) == (c.PUPPET_GRIPPER_POSITION_CLOSE,
                                                    c.PUPPET_GRIPPER_POSITION_OPEN)
    assert (cal.joint_closed, cal.joint_open) == (c.PUPPET_GRIPPER_JOINT_CLOSE,
                                                  c.PUPPET_GRIPPER_JOINT_OPEN)
    x = np.linspace(-0.2, 1.2, 15)
    finger = np.linspace(0.015, 0.06, 15)
    joint = np.linspace(-0.7, 1.6, 15)
    np.testing.assert_allclose(cal.normalized_to_finger(x), c.unnormalize_puppet_gripper_position(x))
    np.testing.assert_allclose(cal.finger_to_normalized(finger),
                               c.normalize_puppet_gripper_position(finger))
    np.testing.assert_allclose(cal.finger_to_joint(finger),
                               c.convert_puppet_from_position_to_join(finger))
    np.testing.assert_allclose(cal.joint_to_finger(joint),
                               c.convert_puppet_from_joint_to_position(joint))
    np.testing.assert_allclose(cal.normalized_to_joint(x), c.unnormalize_puppet_gripper_joint(x))
    np.testing.assert_allclose(cal.finger_velocity_to_normalized(finger),
                               c.normalize_puppet_gripper_velocity(finger))


@pytest.mark.parametrize("cal", [grippers.ALOHA_1, grippers.ALOHA_2], ids=lambda c: c.name)
def test_gripper_endpoints_and_round_trips(cal):
    assert cal.normalized_to_finger(0.0) == pytest.approx(cal.finger_closed, abs=1e-15)
    assert cal.normalized_to_finger(1.0) == pytest.approx(cal.finger_open, abs=1e-15)
    assert cal.normalized_to_joint(0.0) == pytest.approx(cal.joint_closed, abs=1e-15)
    assert cal.normalized_to_joint(1.0) == pytest.approx(cal.joint_open, abs=1e-15)
    assert cal.finger_to_joint(cal.finger_open) == pytest.approx(cal.joint_open)
    assert cal.joint_to_finger(cal.joint_closed) == pytest.approx(cal.finger_closed)
    x = np.random.default_rng(0).uniform(-0.5, 1.5, 100)
    np.testing.assert_allclose(cal.finger_to_normalized(cal.normalized_to_finger(x)), x, atol=1e-12)
    np.testing.assert_allclose(cal.joint_to_normalized(cal.normalized_to_joint(x)), x, atol=1e-12)
    finger = cal.normalized_to_finger(x)
    np.testing.assert_allclose(cal.joint_to_finger(cal.finger_to_joint(finger)), finger, atol=1e-12)
    # 14-d actions: only the gripper channels change, and come back
    action = np.random.default_rng(1).uniform(-1, 1, 14)
    robot = grippers.policy_to_robot(action, cal)
    np.testing.assert_array_equal(np.delete(robot, GRIP), np.delete(action, GRIP))
    np.testing.assert_allclose(robot[GRIP], cal.normalized_to_joint(action[GRIP]))
    np.testing.assert_allclose(grippers.robot_to_policy(robot, cal), action, atol=1e-12)


# -- rejection -----------------------------------------------------------------------
BAD = {
    "short": np.zeros(13), "long": np.zeros(15), "matrix": np.zeros((2, 7)),
    "chunk": np.zeros((4, 14)), "scalar": 0.5, "empty": [], "none": None,
    "nan": np.r_[np.zeros(5), np.nan, np.zeros(8)], "inf": np.r_[np.zeros(13), np.inf],
    "-inf": np.r_[-np.inf, np.zeros(13)], "text": "0" * 14, "bools": np.ones(14, bool),
    "complex": np.ones(14, complex), "ragged": [[0.0] * 7, [0.0] * 6], "dict": {"a": 1},
}
KINDS = {"short": "shape", "long": "shape", "matrix": "shape", "chunk": "shape",
         "scalar": "shape", "empty": "shape", "none": "dtype", "nan": "non_finite",
         "inf": "non_finite", "-inf": "non_finite", "text": "dtype", "bools": "dtype",
         "complex": "dtype", "ragged": "type", "dict": "dtype"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_commands_are_rejected_and_the_last_safe_command_held(name):
    safety, _ = layer()
    first = safety.filter(home() + 0.01).command  # a safe command to hold
    decision = safety.filter(BAD[name])
    assert decision.status == "rejected"
    np.testing.assert_array_equal(decision.command, first)
    assert safety.counters.rejected == 1
    assert safety.counters.rejected_by_reason == {KINDS[name]: 1}
    np.testing.assert_array_equal(safety.last_safe, first)


def test_rejection_messages_name_the_channel_or_shape():
    _, kind, message = check_command(BAD["nan"])
    assert kind == "non_finite" and CHANNEL_NAMES[5] == "left_wrist_rotate"
    assert "left_wrist_rotate" in message and "left_elbow" not in message
    assert "(14,)" in check_command(BAD["chunk"])[2] and "chunk" in check_command(BAD["chunk"])[2]
    arr, kind, _ = check_command(np.arange(14, dtype=np.int32))
    assert kind == "" and arr.dtype == np.float64  # integers are numbers too


# -- limits --------------------------------------------------------------------------
def test_targets_outside_the_limits_are_clipped_to_the_bound_and_counted():
    safety, _ = layer(max_joint_step=100.0, max_gripper_step=100.0)  # rate out of the way
    lower, upper = SafetyConfig().bounds()
    target = home()
    target[[1, 4, 8]] = [5.0, -5.0, 1e30]  # left shoulder, left wrist angle, right shoulder
    target[6] = 3.0  # left gripper beyond open
    decision = safety.filter(target)
    expected = home()
    expected[[1, 4, 8, 6]] = [upper[1], lower[4], upper[8], upper[6]]
    np.testing.assert_array_equal(decision.command, expected)
    assert decision.clipped == 4 and decision.status == "limited"
    assert decision.rate_limited == 0  # clipped first: the bound is within the step
    assert (safety.counters.clipped, safety.counters.clipped_channels) == (1, 4)
    inside = safety.filter(home())
    assert inside.status == "passed" and safety.counters.clipped == 1
    for value in (1e300, -1e300):  # whatever the rate allows, never past a bound
        np.testing.assert_array_equal(safety.filter(np.full(14, value)).command,
                                      upper if value > 0 else lower)


def test_joint_margin_narrows_the_arm_ranges_only():
    lower, upper = SafetyConfig(joint_margin=0.1).bounds()
    base_lower, base_upper = SafetyConfig().bounds()
    arm = [i for i in range(14) if i not in GRIP]
    np.testing.assert_allclose(lower[arm], base_lower[arm] + 0.1)
    np.testing.assert_allclose(upper[arm], base_upper[arm] - 0.1)
    np.testing.assert_array_equal(lower[GRIP], base_lower[GRIP])


# -- rate ----------------------------------------------------------------------------
def test_a_jump_becomes_a_ramp_at_the_step_limit():
    safety, _ = layer(max_joint_step=0.05, max_gripper_step=0.1)
    goal = home()
    goal[0], goal[2], goal[6] = 0.52, 1.16 - 0.32, 0.35  # waist, elbow, gripper jump
    sent = [safety.filter(goal) for _ in range(12)]
    waist = [d.command[0] for d in sent]
    np.testing.assert_allclose(waist[:10], 0.05 * np.arange(1, 11), atol=1e-12)
    assert waist[10] == waist[11] == 0.52  # reached exactly, then passes
    np.testing.assert_allclose(sent[0].command[2], 1.16 - 0.05)
    np.testing.assert_allclose([d.command[6] for d in sent[:4]], [0.1, 0.2, 0.3, 0.35])
    np.testing.assert_array_equal(sent[0].command[7:], home()[7:])  # untouched channels
    assert [d.rate_limited for d in sent[:7]] == [3, 3, 3, 2, 2, 2, 1]
    assert safety.counters.rate_limited == 10 and sent[11].status == "passed"
    small = safety.filter(sent[-1].command + 0.01)
    assert small.status == "passed"
    np.testing.assert_array_equal(small.command, sent[-1].command + 0.01)  # exact


def test_filter_needs_reset_and_reset_needs_a_finite_position():
    with pytest.raises(RuntimeError, match="reset"):
        SafetyLayer().filter(home())
    with pytest.raises(ValueError, match="non-finite"):
        SafetyLayer().reset(np.full(14, np.nan))
    safety = SafetyLayer()
    start = home()
    start[1] = -3.0  # a reading outside the range: the reference starts inside it
    assert safety.reset(start)[1] == SafetyConfig().bounds()[0][1]


@pytest.mark.parametrize("bad", [dict(max_joint_step=0.0), dict(max_gripper_step=-1.0),
                                 dict(watchdog_timeout=float("nan")), dict(joint_margin=2.0)])
def test_config_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="SafetyConfig"):
        SafetyConfig(**bad)


# -- watchdog ------------------------------------------------------------------------
def test_watchdog_holds_the_last_safe_command_after_the_timeout():
    safety, clock = layer(watchdog_timeout=0.125)  # binary fractions: exact clock sums
    assert safety.watchdog() is None  # right after reset
    clock.t += 0.0625
    sent = safety.filter(home() + 0.02).command
    clock.t += 0.125  # exactly the timeout: not yet
    assert safety.watchdog() is None
    clock.t += 2.0 ** -10
    hold = safety.watchdog()
    assert hold.status == "hold"
    np.testing.assert_array_equal(hold.command, sent)
    for _ in range(4):
        clock.t += 0.015625
        np.testing.assert_array_equal(safety.watchdog().command, sent)
    assert (safety.counters.watchdog_holds, safety.counters.watchdog_trips) == (5, 1)
    safety.filter(home())  # commands resume: no hold until the next stall
    assert safety.watchdog() is None
    clock.t += 0.25
    assert safety.watchdog() is not None
    assert (safety.counters.watchdog_holds, safety.counters.watchdog_trips) == (6, 2)


def test_watchdog_starts_from_reset_when_no_command_came():
    safety, clock = layer(watchdog_timeout=0.1)
    clock.t += 0.11
    np.testing.assert_array_equal(safety.watchdog().command, home())


# -- the independent audit -----------------------------------------------------------
def test_audit_flags_what_the_filter_must_never_send():
    audit = CommandAudit(SafetyConfig())
    audit.reset(home())
    assert audit.check(home() + 0.049)  # within every step
    over = home() + 0.049
    over[0] += 0.06
    assert not audit.check(over) and audit.rate_violations == 1
    out = over.copy()
    out[1] = 1.3  # past the shoulder's 1.2566 (and a jump)
    assert not audit.check(out) and audit.limit_violations == 1
    assert audit.max_limit_excess == pytest.approx(1.3 - math.radians(72))
    assert not audit.check(np.full(14, np.nan)) and not audit.check(np.zeros(3))
    assert (audit.non_finite, audit.wrong_shape, audit.rate_violations) == (1, 1, 2)
    assert audit.violations == 5  # events: a command can break two rules
    assert audit.max_violation > 0.04
