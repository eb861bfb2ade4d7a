"""Which channels of an embodiment's action / proprio carry its gripper(s).

Keyframes are cut where a gripper changes state (AtomSkill sec. 3.1). Grippers
differ in channel, polarity and levels (MetaWorld's scripted experts command 0→1,
0→0.1, 0.5→1 or -1→0.7; ALOHA commands a normalised position, 0 closed, 1 open), so
detection works on levels *relative to the episode* and this spec only fixes where
the signal is, which way is "closed", and the scales below which a change is not a
grasp or release.

`EMBODIMENTS` holds the built-in specs; `register_embodiment` adds more (a data
builder for a new robot registers its spec before annotating).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GripperSpec:
    """Where an embodiment's grippers are and how to read them.

    Attributes:
      name: registry key.
      action_channels: action channels of the gripper command(s), one per gripper.
      proprio_channels: proprio channels of the observed gripper opening(s), one per
        gripper, in the same order (optional; used with `signal="proprio"`).
      action_closed_high: a larger command means more closed (MetaWorld effort: yes;
        ALOHA normalised position: no).
      proprio_closed_high: a larger reading means more closed (openings: no).
      min_contrast: smallest difference between an episode's open and closed
        levels, in signal units, that counts as a gripper change; below it a
        channel is constant (e.g. an ALOHA arm whose gripper only twitches).
      proprio_min_contrast: the same for the proprio signal.
      hysteresis: half-width of the dead band around the mid level, as a fraction of
        the episode's level range; a piece inside the band keeps the previous state.
      min_hold: shortest run (steps) of a gripper state between two runs of the
        other state that counts; shorter runs are chatter (e.g. the box-close expert
        re-closing for 1-4 steps under action noise; a gripper needs ~15 steps to
        close, so such a blip grasps nothing).
      min_segment_len: shortest skill segment (steps) after merging all grippers.
      penalty: change-point penalty, in units of noise variance times log(T).
      ee_position_channels: proprio channels holding an end-effector xyz position,
        used to describe motion (empty: motion is described in joint space).
    """

    name: str
    action_channels: tuple[int, ...]
    proprio_channels: tuple[int, ...] = ()
    action_closed_high: bool = True
    proprio_closed_high: bool = False
    min_contrast: float = 0.05
    proprio_min_contrast: float = 0.1
    hysteresis: float = 0.2
    min_hold: int = 8
    min_segment_len: int = 4
    penalty: float = 3.0
    ee_position_channels: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.action_channels and not self.proprio_channels:
            raise ValueError(f"GripperSpec {self.name!r}: give action_channels or "
                             "proprio_channels")
        if self.proprio_channels and self.action_channels and (
                len(self.proprio_channels) != len(self.action_channels)):
            raise ValueError(f"GripperSpec {self.name!r}: one proprio channel per "
                             "gripper, in the order of action_channels")
        if not 0.0 <= self.hysteresis < 0.5:
            raise ValueError(f"GripperSpec {self.name!r}: hysteresis must be in [0, 0.5)")
        if self.min_hold < 1 or self.min_segment_len < 1:
            raise ValueError(f"GripperSpec {self.name!r}: min_hold and min_segment_len "
                             "must be >= 1")

    @property
    def num_grippers(self) -> int:
        return len(self.action_channels) or len(self.proprio_channels)


EMBODIMENTS: dict[str, GripperSpec] = {}


def register_embodiment(spec: GripperSpec, *, overwrite: bool = False) -> GripperSpec:
    """Add `spec` to `EMBODIMENTS`; refuses to replace a different spec silently."""
    old = EMBODIMENTS.get(spec.name)
    if old is not None and old != spec and not overwrite:
        raise ValueError(f"embodiment {spec.name!r} is already registered with a "
                         "different spec; pass overwrite=True to replace it")
    EMBODIMENTS[spec.name] = spec
    return spec


def get_embodiment(embodiment: str | GripperSpec) -> GripperSpec:
    """The spec for a registered name (or the spec itself)."""
    if isinstance(embodiment, GripperSpec):
        return embodiment
    try:
        return EMBODIMENTS[embodiment]
    except KeyError:
        raise KeyError(f"unknown embodiment {embodiment!r}; known: {sorted(EMBODIMENTS)}. "
                       "Register it with atomskill_jax.skills.register_embodiment("
                       "GripperSpec(...))") from None


# MetaWorld v3 Sawyer: action = (dx, dy, dz, grab effort); obs[0:3] hand xyz,
# obs[3] gripper opening (1 open -> ~0.3 closed on an object).
register_embodiment(GripperSpec(
    name="metaworld_sawyer", action_channels=(3,), proprio_channels=(3,),
    action_closed_high=True, proprio_closed_high=False,
    min_contrast=0.05, ee_position_channels=(0, 1, 2)))

# ALOHA (gym-aloha / ACT): 14-d joint command, per arm 6 joints + a normalised
# gripper position (0 closed, 1 open) at channels 6 and 13; qpos uses the same layout.
register_embodiment(GripperSpec(
    name="aloha", action_channels=(6, 13), proprio_channels=(6, 13),
    action_closed_high=False, proprio_closed_high=False,
    min_contrast=0.2, proprio_min_contrast=0.2))

# LIBERO / robosuite OSC: 7-d action, channel 6 is the gripper (-1 open, +1 close).
register_embodiment(GripperSpec(
    name="libero_panda", action_channels=(6,), action_closed_high=True, min_contrast=0.5))

# RLBench (end-effector pose + discrete gripper): channel 7 is 1 open, 0 closed.
register_embodiment(GripperSpec(
    name="rlbench_panda", action_channels=(7,), action_closed_high=False, min_contrast=0.5))
