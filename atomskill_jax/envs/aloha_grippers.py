"""ALOHA gripper units: the policy's normalised opening, the finger position, the motor angle.

Three units describe one ALOHA (follower / "puppet") gripper:

- normalised opening, 0 closed .. 1 open: what gym-aloha's and ACT's 14-d actions and
  `qpos` carry at channels 6 and 13, hence what policies trained on that data output
  and read (`proprio`);
- finger position (m): the left finger's slide joint (`joint_states.position[7]` on the
  real arm, `qpos[6]` / `qpos[14]` of gym-aloha's model); the right finger mirrors it;
- gripper motor angle (rad): the Dynamixel joint the real stack commands
  (`JointSingleCommand(name="gripper")`, `joint_states.position[6]`).

ACT and gym-aloha normalise *observations* with the finger position and turn the
normalised *action* into a motor angle with the same 0..1 fraction of the motor's range,
so finger position and motor angle are related linearly through the normalised value
(ACT's `PUPPET_POS2JOINT` / gym-aloha's `convert_puppet_from_position_to_join`). Each
conversion here is that affine map; `GripperCalibration` names the four endpoints.

Sources of the constants:
- `ALOHA_1` (the ACT-era ALOHA, the default): ACT `aloha_scripts/constants.py`
  `PUPPET_GRIPPER_POSITION_{CLOSE,OPEN}` = 0.01844 / 0.05800 m and
  `PUPPET_GRIPPER_JOINT_{CLOSE,OPEN}` = -0.6213 / 1.4910 rad; gym-aloha 0.1.5
  `gym_aloha/constants.py` repeats the same four values (the test checks them).
- `ALOHA_2` (Interbotix/aloha, ROS 2, "follower" arms): `aloha/constants.py`
  `FOLLOWER_GRIPPER_POSITION_{CLOSE,OPEN}` = 0.0440 / 0.0579 m and
  `FOLLOWER_GRIPPER_JOINT_{CLOSE,OPEN}` = 0.6197 / 1.6214 rad.
- gym-aloha's model limits each finger to 0.021..0.057 m (slide-joint range and the
  actuator's ctrlrange in `bimanual_viperx_*.xml`): `SIM_FINGER_RANGE`. A normalised
  command outside ~0.04..0.98 therefore saturates in simulation but not on the real arm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GRIPPER_CHANNELS = (6, 13)  # left, right in the 14-d layout (6 joints + gripper per arm)
SIM_FINGER_RANGE = (0.021, 0.057)  # m, gym-aloha's finger slide joints (see module doc)


@dataclasses.dataclass(frozen=True)
class GripperCalibration:
    """The closed / open endpoints of one gripper in finger metres and motor radians."""

    name: str
    finger_closed: float  # m
    finger_open: float  # m
    joint_closed: float  # rad
    joint_open: float  # rad
    source: str = ""

    def __post_init__(self):
        if not (self.finger_open > self.finger_closed and self.joint_open != self.joint_closed):
            raise ValueError(f"GripperCalibration {self.name!r}: need finger_open > "
                             f"finger_closed and distinct joint endpoints, got {self}")

    @property
    def finger_span(self) -> float:
        return self.finger_open - self.finger_closed

    @property
    def joint_span(self) -> float:
        return self.joint_open - self.joint_closed

    @property
    def joint_range(self) -> tuple[float, float]:
        """(low, high) of the motor angle between closed and open."""
        return (min(self.joint_closed, self.joint_open), max(self.joint_closed, self.joint_open))

    # normalised <-> finger position
    def normalized_to_finger(self, x):
        return np.asarray(x, np.float64) * self.finger_span + self.finger_closed

    def finger_to_normalized(self, position):
        return (np.asarray(position, np.float64) - self.finger_closed) / self.finger_span

    def finger_velocity_to_normalized(self, velocity):
        """m/s -> normalised opening per second (positive: opening), as ACT's qvel."""
        return np.asarray(velocity, np.float64) / self.finger_span

    # normalised <-> motor angle
    def normalized_to_joint(self, x):
        return np.asarray(x, np.float64) * self.joint_span + self.joint_closed

    def joint_to_normalized(self, angle):
        return (np.asarray(angle, np.float64) - self.joint_closed) / self.joint_span

    # finger position <-> motor angle (through the normalised value)
    def finger_to_joint(self, position):
        return self.normalized_to_joint(self.finger_to_normalized(position))

    def joint_to_finger(self, angle):
        return self.normalized_to_finger(self.joint_to_normalized(angle))


ALOHA_1 = GripperCalibration(
    "aloha1_puppet", finger_closed=0.01844, finger_open=0.05800,
    joint_closed=-0.6213, joint_open=1.4910,
    source="ACT aloha_scripts/constants.py PUPPET_GRIPPER_*; gym_aloha 0.1.5 constants.py")
ALOHA_2 = GripperCalibration(
    "aloha2_follower", finger_closed=0.0440, finger_open=0.0579,
    joint_closed=0.6197, joint_open=1.6214,
    source="Interbotix/aloha aloha/constants.py FOLLOWER_GRIPPER_*")
CALIBRATIONS = {c.name: c for c in (ALOHA_1, ALOHA_2)}


def policy_to_robot(action: np.ndarray, calibration: GripperCalibration = ALOHA_1) -> np.ndarray:
    """14-d policy action (grippers normalised) -> robot command (grippers in motor rad).

    A copy in float64; the six joints of each arm pass unchanged (both sides use rad)."""
    out = np.array(action, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # huge -> inf: the safety layer rejects it
        out[..., GRIPPER_CHANNELS] = calibration.normalized_to_joint(out[..., GRIPPER_CHANNELS])
    return out


def robot_to_policy(command: np.ndarray, calibration: GripperCalibration = ALOHA_1) -> np.ndarray:
    """The inverse of `policy_to_robot` (a command in motor rad -> normalised grippers)."""
    out = np.array(command, dtype=np.float64)
    out[..., GRIPPER_CHANNELS] = calibration.joint_to_normalized(out[..., GRIPPER_CHANNELS])
    return out
