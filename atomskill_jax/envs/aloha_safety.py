"""The safety layer every ALOHA arm command passes (numpy only).

Commands here are in the *robot's* units: 14 values, per arm (left, then right) six joint
angles and the gripper motor angle, all rad (`aloha_grippers.policy_to_robot` turns a
policy action into this). `SafetyLayer.filter` applies, in this order:

1. rejection: anything but 14 finite real numbers (wrong shape, NaN, inf, strings,
   bools, complex) is refused whole, and the last safe command is sent again (held);
2. limits: each target is clipped into the vx300s joint range (`VX300S_JOINT_LIMITS`) or
   the gripper's motor range (closed..open of its `GripperCalibration`);
3. rate: each target moves at most `max_joint_step` (arm) / `max_gripper_step` (gripper)
   from the last safe command; a jump becomes a ramp at that speed.

The reference of the rate limit is the last command *sent*, not the measured position
(`reset` starts it at the measured position): the arm's servos track their target, and
a reference that followed the measured position would let commands run away from an arm
that is blocked or sagging. `watchdog` sends the last safe command again when no
command arrived within `watchdog_timeout`: holding the last target rather than the
measured position, which lies below the target by the servos' steady-state error under
gravity and would let the arm sag step after step.

Every decision is counted (`SafetyCounters`) for logging. `CommandAudit` checks commands
independently of the filter (limits, rate, finiteness) - what tests and the benchmark
assert on, and what a robot log can record.

Joint limits: Interbotix's vx300s description (interbotix_xsarm_descriptions
`vx300s.urdf.xacro`): waist and both rolls +-(pi - 1e-5), shoulder -106..72 deg, elbow
-101..92 deg, wrist angle -107..128 deg. gym-aloha's model (`vx300s_left.xml`) rounds the
same ranges to five decimals. Commanding past them makes the Interbotix API refuse the
command and drives the motors into their hard stops.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import numpy as np

from atomskill_jax.envs.aloha_grippers import ALOHA_1, GRIPPER_CHANNELS, GripperCalibration

JOINT_NAMES = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
CHANNEL_NAMES = tuple(f"{side}_{name}" for side in ("left", "right")
                      for name in JOINT_NAMES + ("gripper",))
COMMAND_DIM = len(CHANNEL_NAMES)  # 14
ARM_CHANNELS = tuple(i for i in range(COMMAND_DIM) if i not in GRIPPER_CHANNELS)
_ROLL = math.pi - 1e-5  # the description's pi_offset keeps +-pi itself out
VX300S_JOINT_LIMITS = (
    (-_ROLL, _ROLL),  # waist
    (math.radians(-106), math.radians(72)),  # shoulder  -1.85005 .. 1.25664
    (math.radians(-101), math.radians(92)),  # elbow     -1.76278 .. 1.60570
    (-_ROLL, _ROLL),  # forearm roll
    (math.radians(-107), math.radians(128)),  # wrist angle -1.86750 .. 2.23402
    (-_ROLL, _ROLL),  # wrist rotate
)
# 50 Hz defaults. 0.05 rad/step = 2.5 rad/s: ~80 % of the no-load speed of the
# shoulder/elbow motors (XM540-W270, ~3.1 rad/s), above what teleoperated demonstrations
# need. Gripper motor: 0.1 rad/step = 5 rad/s, closed to open (2.1 rad) in ~0.4 s.
DEFAULT_MAX_JOINT_STEP = 0.05
DEFAULT_MAX_GRIPPER_STEP = 0.1
DEFAULT_WATCHDOG_TIMEOUT = 0.1  # s: five missed 50 Hz steps


@dataclasses.dataclass(frozen=True)
class SafetyConfig:
    """Limits of the safety layer (see the module docstring for the defaults)."""

    max_joint_step: float = DEFAULT_MAX_JOINT_STEP  # rad per control step, each arm joint
    max_gripper_step: float = DEFAULT_MAX_GRIPPER_STEP  # rad per step of the gripper motor
    watchdog_timeout: float = DEFAULT_WATCHDOG_TIMEOUT  # s without a command -> hold
    joint_margin: float = 0.0  # rad kept off each end of every joint range
    gripper: GripperCalibration = ALOHA_1  # its closed..open motor angles bound the gripper
    joint_limits: tuple[tuple[float, float], ...] = VX300S_JOINT_LIMITS

    def __post_init__(self):
        for name in ("max_joint_step", "max_gripper_step", "watchdog_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SafetyConfig.{name}={value!r}: must be a positive number")
        if len(self.joint_limits) != len(JOINT_NAMES):
            raise ValueError(f"SafetyConfig.joint_limits: {len(self.joint_limits)} pairs, "
                             f"expected one per joint {JOINT_NAMES}")
        lower, upper = self.bounds()
        if not np.all(lower < upper):
            bad = [CHANNEL_NAMES[i] for i in np.flatnonzero(lower >= upper)]
            raise ValueError(f"SafetyConfig: empty range for {bad} (joint_margin="
                             f"{self.joint_margin} too large?)")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) float64[14] in rad, the margin applied to the arm joints."""
        arm = np.asarray(self.joint_limits, np.float64)
        lower, upper = np.empty(COMMAND_DIM), np.empty(COMMAND_DIM)
        for arm_start, grip in zip((0, 7), GRIPPER_CHANNELS):
            lower[arm_start:arm_start + 6] = arm[:, 0] + self.joint_margin
            upper[arm_start:arm_start + 6] = arm[:, 1] - self.joint_margin
            lower[grip], upper[grip] = self.gripper.joint_range
        return lower, upper

    def max_step(self) -> np.ndarray:
        step = np.full(COMMAND_DIM, float(self.max_joint_step))
        step[list(GRIPPER_CHANNELS)] = self.max_gripper_step
        return step


@dataclasses.dataclass
class SafetyCounters:
    """What the layer did since the last `reset_counters` (ints, JSON-friendly)."""

    commands: int = 0  # commands received
    passed: int = 0  # sent unchanged
    rejected: int = 0  # refused; the last safe command held instead
    clipped: int = 0  # commands with a target outside the limits
    clipped_channels: int = 0
    rate_limited: int = 0  # commands with a change above the step limit
    rate_limited_channels: int = 0
    watchdog_holds: int = 0  # holds sent because no command arrived in time
    watchdog_trips: int = 0  # times the command stream stalled (first hold of each stall)
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SafetyDecision:
    """One command's fate: `command` is what goes to the arm."""

    command: np.ndarray  # float64[14], rad
    status: str  # "passed" | "limited" | "rejected" | "hold"
    reason: str = ""
    clipped: int = 0  # channels clipped into the limits
    rate_limited: int = 0  # channels slowed by the step limit


def check_command(command: Any) -> tuple[np.ndarray | None, str, str]:
    """(float64[14], "", "") for 14 finite real numbers, else (None, kind, message)."""
    try:
        arr = command if isinstance(command, np.ndarray) else np.asarray(command)
    except Exception as err:  # noqa: BLE001 - ragged lists, odd objects: all are refused
        return None, "type", f"not an array ({type(err).__name__}: {err})"
    if arr.dtype.kind not in "iuf":
        return None, "dtype", f"dtype {arr.dtype}; need real numbers"
    if arr.shape != (COMMAND_DIM,):
        hint = " (one step of a chunk at a time)" if arr.shape[-1:] == (COMMAND_DIM,) else ""
        return None, "shape", f"shape {arr.shape}; need ({COMMAND_DIM},){hint}"
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = [CHANNEL_NAMES[i] for i in np.flatnonzero(~finite)]
        return None, "non_finite", f"non-finite values at {bad}"
    return arr, "", ""


class SafetyLayer:
    """Filters commands (see module docstring); `reset` with the measured position first."""

    def __init__(self, config: SafetyConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or SafetyConfig()
        self._clock = clock
        self._lower, self._upper = self.config.bounds()
        self._step = self.config.max_step()
        self.counters = SafetyCounters()
        self._last_safe: np.ndarray | None = None
        self._last_time: float | None = None
        self._stalled = False
        self.last_rejection = ""

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._lower.copy(), self._upper.copy()

    @property
    def last_safe(self) -> np.ndarray | None:
        return None if self._last_safe is None else self._last_safe.copy()

    def reset(self, measured: np.ndarray, now: float | None = None) -> np.ndarray:
        """Start from the arm's measured position (robot units, clipped into the limits);
        the watchdog's timer starts now. Returns the reference held until a command."""
        arr, _, message = check_command(measured)
        if arr is None:
            raise ValueError(f"SafetyLayer.reset: measured position {message}; the arm's "
                             "joint readings are needed to start the rate limit")
        self._last_safe = np.clip(arr, self._lower, self._upper)
        self._last_time = self._clock() if now is None else now
        self._stalled = False
        return self._last_safe.copy()

    def reset_counters(self) -> None:
        self.counters = SafetyCounters()

    def _require_reset(self) -> np.ndarray:
        if self._last_safe is None:
            raise RuntimeError("SafetyLayer: call reset(measured_position) before sending "
                               "commands (the rate limit starts from the arm's position)")
        return self._last_safe

    def filter(self, command: Any, now: float | None = None) -> SafetyDecision:
        """The command to send for one received command (never raises on bad input)."""
        last = self._require_reset()
        counters = self.counters
        counters.commands += 1
        self._last_time = self._clock() if now is None else now
        self._stalled = False
        target, kind, message = check_command(command)
        if target is None:
            counters.rejected += 1
            counters.rejected_by_reason[kind] = counters.rejected_by_reason.get(kind, 0) + 1
            self.last_rejection = message
            return SafetyDecision(last.copy(), "rejected", message)
        lower, upper = self._lower, self._upper
        # ufuncs, not np.clip: its wrapper costs more than the arithmetic on 14 values
        clipped = np.count_nonzero((target < lower) | (target > upper))
        if clipped:
            target = np.minimum(np.maximum(target, lower), upper)
            counters.clipped += 1
            counters.clipped_channels += clipped
        low, high = last - self._step, last + self._step
        limited = np.count_nonzero((target < low) | (target > high))
        if limited:
            # bounded, not last + clip(delta): an unlimited channel keeps its exact target
            target = np.minimum(np.maximum(target, low), high)
            counters.rate_limited += 1
            counters.rate_limited_channels += limited
        # in limits already (between two points inside them); kept as a last guard
        target = np.minimum(np.maximum(target, lower), upper)
        self._last_safe = target
        if not (clipped or limited):
            counters.passed += 1
        return SafetyDecision(target.copy(), "limited" if clipped or limited else "passed",
                              clipped=clipped, rate_limited=limited)

    def stale(self, now: float | None = None) -> bool:
        """No command within `watchdog_timeout` (measured from `reset` before the first)."""
        self._require_reset()
        now = self._clock() if now is None else now
        return now - self._last_time > self.config.watchdog_timeout

    def watchdog(self, now: float | None = None) -> SafetyDecision | None:
        """A hold of the last safe command if the command stream stalled, else None."""
        if not self.stale(now):
            return None
        self.counters.watchdog_holds += 1
        if not self._stalled:
            self.counters.watchdog_trips += 1
            self._stalled = True
        return SafetyDecision(self._last_safe.copy(), "hold",
                              f"no command for more than {self.config.watchdog_timeout} s")


class CommandAudit:
    """Checks what reached the arm, independently of `SafetyLayer.filter`.

    `max_limit_excess` / `max_rate_excess` (rad) are the largest amounts by which a sent
    command left its range or moved more than its step from the previous one; `tolerance`
    absorbs float64 rounding of the differences (~1e-16), not real violations."""

    def __init__(self, config: SafetyConfig | None = None, tolerance: float = 1e-12):
        config = config or SafetyConfig()
        self.lower, self.upper = config.bounds()
        self.step = config.max_step()
        self.tolerance = tolerance
        self.previous: np.ndarray | None = None
        self.commands = self.non_finite = self.wrong_shape = 0
        self.limit_violations = self.rate_violations = 0
        self.max_limit_excess = self.max_rate_excess = 0.0

    def reset(self, reference: np.ndarray) -> None:
        """Where the next command's rate is measured from (the arm's position)."""
        self.previous = np.clip(np.asarray(reference, np.float64), self.lower, self.upper)

    def check(self, command: np.ndarray) -> bool:
        """Record one sent command; True when it broke no rule."""
        self.commands += 1
        arr = np.asarray(command)
        if arr.shape != (COMMAND_DIM,) or arr.dtype.kind not in "iuf":
            self.wrong_shape += 1
            return False
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            self.non_finite += 1
            return False
        limit = float(np.max(np.maximum(arr - self.upper, self.lower - arr)))
        ok = limit <= 0.0
        if not ok:
            self.limit_violations += 1
        self.max_limit_excess = max(self.max_limit_excess, limit)
        if self.previous is not None:
            rate = float(np.max(np.abs(arr - self.previous) - self.step))
            if rate > self.tolerance:
                self.rate_violations += 1
                ok = False
            self.max_rate_excess = max(self.max_rate_excess, rate)
        self.previous = arr
        return ok

    @property
    def max_violation(self) -> float:
        """The largest excess beyond tolerance (0.0: nothing out of range or too fast)."""
        rate = self.max_rate_excess if self.max_rate_excess > self.tolerance else 0.0
        return max(0.0, self.max_limit_excess, rate)

    @property
    def violations(self) -> int:
        return self.non_finite + self.wrong_shape + self.limit_violations + self.rate_violations
