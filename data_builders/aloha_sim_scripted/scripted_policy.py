"""A scripted bimanual expert for gym-aloha's joint-space tasks.

Each arm follows fingertip waypoints (position, orientation, gripper command) in
world coordinates, placed from the objects' poses; every control step the
interpolated waypoint is turned into joint targets by inverse kinematics on the
arm's own kinematic chain, and those targets are the action (absolute joint
targets, what the env and the dataset take). The position actuators track them
within ~0.1 s, so the expert runs directly in the joint-space env a policy is
evaluated in: no end-effector (mocap) simulation and no replay, so a scripted
success is a success of the recorded actions.

The fingertip point is `TIP_OFFSET` along the gripper link's x axis (the fingers
point along x and close along y; finger pads span x 0.064..0.154). Where the
objects' real poses matter, the remaining waypoints are re-planned from the
physics at fixed steps: the left gripper meets the cube where the right one
actually holds it, the peg is aligned with the socket as both are actually held.

Gripper commands ramp linearly, 1 -> 0 over `CLOSE_STEPS` and 0 -> 1 over
`OPEN_STEPS`, so a command crosses 0.5 once per grasp or release: the skill cuts.
The expert reads the objects' poses from the physics (privileged state).

Why not gym-aloha's end-effector (mocap) tasks, as ACT scripts them: their soft weld
lets the wrist lag ~40 degrees behind open-loop waypoints, their object placement
ignores the seed, and replaying the joint trajectory in the joint-space env loses
episodes (measured: 49/50 cube, 42/50 insertion). Here, measured on gym-aloha 0.1.5 /
MuJoCo 3.3.0: 200/200 successes per task on seeds 0-199 and 100/100 on the
evaluation seeds 1_000_000-1_000_099, 0.2 s (cube) and 0.3 s (insertion) an episode
without rendering.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TIP_OFFSET = 0.14  # the point between the finger pads near their tips, along x (m)
CLOSE_STEPS = 15
OPEN_STEPS = 10
_ROT_WEIGHT = 0.15  # m per rad: orientation error against position error in IK
_ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def frame(approach, pinch) -> np.ndarray:
    """Gripper orientation [3, 3] (columns x, y, z) pointing along `approach`, the
    fingers closing along `pinch` (made orthogonal to it)."""
    x = np.asarray(approach, np.float64)
    x = x / np.linalg.norm(x)
    y = np.asarray(pinch, np.float64)
    y = y - (y @ x) * x
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def _quat(rot: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(rot, np.float64).reshape(-1))
    return q


def _rotvec_between(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking orientation `current` to `target`."""
    q = _quat(target @ current.T)
    if q[0] < 0:
        q = -q
    s = np.linalg.norm(q[1:])
    return np.zeros(3) if s < 1e-12 else q[1:] * (2.0 * np.arctan2(s, q[0]) / s)


def slerp(r0: np.ndarray, r1: np.ndarray, u: float) -> np.ndarray:
    """Orientation a fraction `u` of the way from r0 to r1 (shortest rotation)."""
    import mujoco

    v = _rotvec_between(r1, r0) * u
    angle = np.linalg.norm(v)
    if angle < 1e-12:
        return r0.copy()
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, v / angle, angle)
    step = np.zeros(9)
    mujoco.mju_quat2Mat(step, q)
    return step.reshape(3, 3) @ r0


class Arm:
    """Forward and inverse kinematics of one arm on a scratch copy of the model."""

    def __init__(self, physics, side: str):
        import mujoco

        self._mj = mujoco
        self.model = physics.model.ptr
        self.data = mujoco.MjData(self.model)
        self.data.qpos[:] = physics.data.qpos
        joints = [mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, f"vx300s_{side}/{j}")
                  for j in _ARM_JOINTS]
        self.qpos_index = np.array([self.model.jnt_qposadr[j] for j in joints])
        self.dof_index = np.array([self.model.jnt_dofadr[j] for j in joints])
        self.limits = np.array([self.model.jnt_range[j] for j in joints])
        self.body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY,
                                      f"vx300s_{side}/gripper_link")
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def tip_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qpos_index] = q
        self._mj.mj_kinematics(self.model, self.data)
        rot = self.data.xmat[self.body].reshape(3, 3).copy()
        return self.data.xpos[self.body] + rot[:, 0] * TIP_OFFSET, rot

    def solve(self, q: np.ndarray, pos: np.ndarray, rot: np.ndarray, *, iters: int = 12,
              tol: float = 1e-5) -> np.ndarray:
        """Joint angles near `q` putting the fingertip at `pos` with orientation `rot`
        (damped least squares, clipped to the joint limits)."""
        q = np.array(q, np.float64)
        for _ in range(iters):
            tip, cur = self.tip_pose(q)
            err = np.concatenate([pos - tip, _ROT_WEIGHT * _rotvec_between(rot, cur)])
            if np.linalg.norm(err) < tol:
                break
            self._mj.mj_comPos(self.model, self.data)
            self._mj.mj_jac(self.model, self.data, self._jacp, self._jacr, tip, self.body)
            jac = np.concatenate([self._jacp[:, self.dof_index],
                                  _ROT_WEIGHT * self._jacr[:, self.dof_index]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-6 * np.eye(6), err)
            q = np.clip(q + dq, self.limits[:, 0], self.limits[:, 1])
        return q


@dataclasses.dataclass
class Waypoint:
    t: int
    pos: np.ndarray
    rot: np.ndarray
    grip: float


class Track:
    """One arm's waypoints, interpolated linearly (orientation by slerp)."""

    def __init__(self, start: Waypoint):
        self.points = [start]

    def add(self, t: int, pos=None, rot=None, grip=None) -> "Track":
        last = self.points[-1]
        if t <= last.t:
            raise ValueError(f"waypoint at step {t} after one at step {last.t}")
        self.points.append(Waypoint(
            int(t), last.pos if pos is None else np.asarray(pos, np.float64),
            last.rot if rot is None else rot, last.grip if grip is None else float(grip)))
        return self

    def grip_to(self, t: int, grip: float) -> "Track":
        """Hold the pose and ramp the gripper to `grip` from step t on."""
        last = self.points[-1]
        if t > last.t:
            self.add(t)
        steps = CLOSE_STEPS if grip < self.points[-1].grip else OPEN_STEPS
        return self.add(t + steps, grip=grip)

    def truncate(self, t: int) -> "Track":
        """Keep the path up to step t, ending with its pose at t (for a re-plan)."""
        pos, rot, grip = self.at(t)
        self.points = [p for p in self.points if p.t < t] + [Waypoint(t, pos, rot, grip)]
        return self

    @property
    def end(self) -> int:
        return self.points[-1].t

    def at(self, t: int) -> tuple[np.ndarray, np.ndarray, float]:
        pts = self.points
        if t <= pts[0].t:
            return pts[0].pos, pts[0].rot, pts[0].grip
        for a, b in zip(pts[:-1], pts[1:]):
            if t <= b.t:
                u = (t - a.t) / (b.t - a.t)
                u_smooth = u * u * (3 - 2 * u)  # ease in and out: no velocity jumps
                return (a.pos + u_smooth * (b.pos - a.pos), slerp(a.rot, b.rot, u_smooth),
                        a.grip + u * (b.grip - a.grip))
        return pts[-1].pos, pts[-1].rot, pts[-1].grip


# -- the experts ---------------------------------------------------------------------
# Resting heights of the objects' centres on the table (m): cube 4 cm, peg 2 cm,
# socket 4.4 cm tall. gym-aloha places them 5 cm up; they settle within ~10 steps.
_CUBE_Z, _PEG_Z, _SOCKET_Z = 0.02, 0.01, 0.022
# Pointing down, fingers closing along world y; the right arm's base is turned by pi.
_DOWN = {"left": frame((0, 0, -1), (0, 1, 0)), "right": frame((0, 0, -1), (0, -1, 0))}


def _body_pose(physics, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (physics.named.data.xpos[name].copy(),
            physics.named.data.xmat[name].reshape(3, 3).copy())


class ScriptedExpert:
    """Base: per step, the tracks' waypoints -> joint targets (the action)."""

    length = 0  # steps of the script
    replans: tuple[int, ...] = ()  # steps at which `replan(t)` runs, before acting

    def __init__(self, env):
        self.env = env
        physics = env.physics
        self.arms = {side: Arm(physics, side) for side in ("left", "right")}
        self.q = {side: physics.data.qpos[arm.qpos_index].copy()
                  for side, arm in self.arms.items()}
        self.tracks = {}
        for side, arm in self.arms.items():
            pos, rot = arm.tip_pose(self.q[side])
            # Grippers commanded open from the first step: no "open" keyframe at the start.
            self.tracks[side] = Track(Waypoint(0, pos, rot, 1.0))
        self.plan()

    def plan(self) -> None:
        raise NotImplementedError

    def replan(self, t: int) -> None:
        raise NotImplementedError

    def tip(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """The fingertip's actual pose in the simulation."""
        pos, rot = _body_pose(self.env.physics, f"vx300s_{side}/gripper_link")
        return pos + rot[:, 0] * TIP_OFFSET, rot

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _body_pose(self.env.physics, name)

    def act(self, t: int) -> np.ndarray:
        if t in self.replans:
            self.replan(t)
        parts = []
        for side in ("left", "right"):
            pos, rot, grip = self.tracks[side].at(t)
            self.q[side] = self.arms[side].solve(self.q[side], pos, rot)
            parts += [self.q[side], [grip]]
        return np.concatenate(parts).astype(np.float32)

    def hold_target(self, side: str, obj: str, obj_pos, obj_rot=None):
        """The fingertip pose that puts held object `obj` at (obj_pos, obj_rot), keeping
        the grasp as it is now in the simulation (the object's pose in the tip frame)."""
        tip_pos, tip_rot = self.tip(side)
        pos, rot = self.object_pose(obj)
        grasp_pos = tip_rot.T @ (pos - tip_pos)
        grasp_rot = tip_rot.T @ rot
        target_rot = tip_rot if obj_rot is None else obj_rot @ grasp_rot.T
        return np.asarray(obj_pos) - target_rot @ grasp_pos, target_rot


class TransferCube(ScriptedExpert):
    """Right grasps the cube from above; the left, level and turned so its fingers
    close vertically, takes it by the top and bottom faces; the right lets go."""

    length = 300
    replans = (170,)
    meet = np.array([0.0, 0.5, 0.22])  # where the right presents the cube
    # Left: pointing +x, fingers closing along z (between the right's fingers).
    _side_grip = frame((1, 0, 0), (0, 0, 1))

    def plan(self):
        cube = self.env.object_state()[:3]
        right, left = self.tracks["right"], self.tracks["left"]
        above = np.array([cube[0], cube[1], _CUBE_Z + 0.08])
        right.add(60, above, _DOWN["right"]).add(95, [cube[0], cube[1], 0.012])
        right.grip_to(100, 0.0).add(125).add(170, self.meet - [0, 0, 0.008])
        left.add(110, self.meet - [0.12, 0, 0], self._side_grip).add(170)

    def replan(self, t):
        cube, _ = self.object_pose("box")
        right, left = self.tracks["right"], self.tracks["left"]
        left.truncate(t).add(t + 45, cube + [0.008, 0, 0]).grip_to(t + 50, 0.0)
        right.truncate(t).grip_to(t + 70, 1.0)
        right.add(right.end + 30, right.points[-1].pos + [0.04, 0, 0.06]).add(self.length)
        left.add(left.end + 10).add(left.end + 50, self.meet - [0.08, 0, 0]).add(self.length)


class Insertion(ScriptedExpert):
    """Right grasps the peg, left the socket, both from above at their middles; both
    lift, the peg is lined up with the socket as actually held, then pushed in."""

    length = 350
    replans = (120, 190, 235)
    socket_meet = np.array([-0.08, 0.5, 0.22])
    _insert_depth = 0.095  # peg centre ahead of the socket centre; the pin is at 0.10

    def plan(self):
        objs = self.env.object_state()
        peg, socket = objs[:3], objs[7:10]
        right, left = self.tracks["right"], self.tracks["left"]
        # Both close at once: one keyframe. (A second grasp while the other gripper
        # holds would read as a handover to the rule annotator.)
        left.add(60, [socket[0], socket[1], _SOCKET_Z + 0.10], _DOWN["left"])
        left.add(95, [socket[0], socket[1], 0.012]).grip_to(100, 0.0)
        right.add(60, [peg[0], peg[1], _PEG_Z + 0.08], _DOWN["right"])
        right.add(95, [peg[0], peg[1], 0.008]).grip_to(100, 0.0)

    def _peg_target(self, offset: float):
        socket_pos, socket_rot = self.object_pose("socket")
        return socket_pos + socket_rot[:, 0] * offset, socket_rot

    def replan(self, t):
        right, left = self.tracks["right"], self.tracks["left"]
        if t == self.replans[0]:  # lift both to the meeting place, keeping the grasps
            level = frame((1, 0, 0), (0, 1, 0))
            pos, rot = self.hold_target("left", "socket", self.socket_meet, level)
            left.truncate(t).add(t + 65, pos, rot).add(self.length)
            pos, rot = self.hold_target("right", "peg", self.socket_meet + [0.20, 0, 0], level)
            right.truncate(t).add(t + 65, pos, rot)
        elif t == self.replans[1]:  # line the peg up with the socket, 5 cm short of its mouth
            pos, rot = self.hold_target("right", "peg", *self._peg_target(0.17))
            right.truncate(t).add(t + 40, pos, rot)
        else:  # re-aligned from where the objects are now, then in
            pos, rot = self.hold_target("right", "peg", *self._peg_target(0.17))
            right.truncate(t).add(t + 10, pos, rot)
            pos, rot = self.hold_target("right", "peg", *self._peg_target(self._insert_depth))
            right.add(t + 75, pos, rot).add(self.length)


EXPERTS = {"transfer_cube": TransferCube, "insertion": Insertion}


def make_expert(task: str, env) -> ScriptedExpert:
    """The expert for `task`, planned from `env` right after its reset."""
    return EXPERTS[task](env)
