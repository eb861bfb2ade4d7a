"""State observations as tokens: USR's offline scene encoder (in place of CLIP patch tokens).

Each part of the state vector gets its own linear embedding plus a learned part
embedding (which part a token is), so attention downstream can tell the hand from the
goal; a constant part (a second object that does not exist) still yields a nonzero,
learnable token.

MetaWorld v3's 39-d observation, checked against the installed metaworld 3.1.1
(`metaworld/sawyer_xyz_env.py`):
  `_get_curr_obs_combined_no_goal()` = hstack(pos_hand = get_endeff_pos() [3],
      gripper_distance_apart = clip(||rightclaw - leftclaw|| / 0.1, 0, 1) [1],
      obs_obj_padded [14] = (pos [3], quat [4]) per object, zero-padded to two objects
      (`_obs_obj_max_len = 14`))                                    -> 18 values
  `_get_obs()` = hstack(curr_obs [18], self._prev_obs [18], pos_goal [3]) -> 39; the goal
      is zeroed when `_partially_observable` (the goal-hidden envs), and `reset()` sets
      `_prev_obs = obs[:18]`, so the previous frame equals the current one at reset.
Run on pick-place-v3 (goal observable): obs[0:3] == get_endeff_pos(), obs[4:7] ==
_get_pos_objects(), obs[7:11] == _get_quat_objects() (that env's quaternion is scipy
x, y, z, w), obs[11:18] == 0 (one object), obs[18:36] == obs[0:18] after reset and == the
previous step's obs[0:18] after a step, obs[36:39] == _target_pos.

The 9 tokens: hand, gripper, object-1 pose (pos + quat), object-2 pose, the same four of
the previous frame, goal (`METAWORLD_STATE_PARTS`); `METAWORLD_STATE_FIELDS` is the finer
layout they are made of. Other state sizes: one token per `slice_size` values
(`parts_for`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import FSDP, dense, sharded_param

METAWORLD_STATE_DIM = 39

METAWORLD_STATE_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("hand_pos", 0, 3), ("gripper", 3, 4), ("object1_pos", 4, 7), ("object1_quat", 7, 11),
    ("object2_pos", 11, 14), ("object2_quat", 14, 18),
    ("prev_hand_pos", 18, 21), ("prev_gripper", 21, 22), ("prev_object1_pos", 22, 25),
    ("prev_object1_quat", 25, 29), ("prev_object2_pos", 29, 32), ("prev_object2_quat", 32, 36),
    ("goal_pos", 36, 39))

METAWORLD_STATE_PARTS: tuple[tuple[str, int, int], ...] = (
    ("hand", 0, 3), ("gripper", 3, 4), ("object1_pose", 4, 11), ("object2_pose", 11, 18),
    ("prev_hand", 18, 21), ("prev_gripper", 21, 22), ("prev_object1_pose", 22, 29),
    ("prev_object2_pose", 29, 36), ("goal", 36, 39))


def parts_for(state_dim: int, slice_size: int = 8) -> tuple[tuple[str, int, int], ...]:
    """MetaWorld's 9 parts for a 39-d state; otherwise consecutive slices of `slice_size`
    values (the last one shorter), one token each."""
    state_dim, slice_size = int(state_dim), int(slice_size)
    if state_dim <= 0 or slice_size <= 0:
        raise ValueError(f"parts_for: state_dim={state_dim} and slice_size={slice_size} "
                         "must be positive")
    if state_dim == METAWORLD_STATE_DIM:
        return METAWORLD_STATE_PARTS
    return tuple((f"slice{i}", start, min(start + slice_size, state_dim))
                 for i, start in enumerate(range(0, state_dim, slice_size)))


def check_parts(parts) -> tuple[tuple[str, int, int], ...]:
    parts = tuple((str(name), int(a), int(b)) for name, a, b in parts)
    if not parts:
        raise ValueError("StateTokenizer: no state parts given")
    for name, a, b in parts:
        if not 0 <= a < b:
            raise ValueError(f"StateTokenizer: part {name!r} = [{a}, {b}) is empty or negative")
    return parts


class StateTokenizer(nnx.Module):
    def __init__(self, parts, dim: int, *, rngs: nnx.Rngs, proprio_dim: int = 0,
                 state_dim: int | None = None):
        """`state_dim`: the width of the state vectors (default: the end of the last part;
        larger when some values are deliberately left out of every part)."""
        self.parts = check_parts(parts)
        end = max(b for _, _, b in self.parts)
        self.state_dim = end if state_dim is None else int(state_dim)
        if self.state_dim < end:
            raise ValueError(f"StateTokenizer: state_dim={self.state_dim} but a part ends at {end}")
        self.proprio_dim = int(proprio_dim)
        self.embed = nnx.List([dense(b - a, dim, rngs=rngs) for _, a, b in self.parts])
        self.proprio = dense(self.proprio_dim, dim, rngs=rngs) if self.proprio_dim else None
        self.num_tokens = len(self.parts) + int(self.proprio is not None)
        self.part_embedding = sharded_param(
            0.02 * jax.random.normal(rngs.params(), (self.num_tokens, dim)), (None, FSDP))

    def __call__(self, state, proprio=None) -> jax.Array:
        """state [..., S] (and proprio [..., P]) -> tokens [..., num_parts (+1), dim]."""
        state = jnp.asarray(state, jnp.float32)
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"StateTokenizer: state has {state.shape[-1]} values, its parts "
                             f"({self.parts[0][0]} .. {self.parts[-1][0]}) describe {self.state_dim}")
        tokens = [layer(state[..., a:b]) for layer, (_, a, b) in zip(self.embed, self.parts)]
        if self.proprio is not None:
            if proprio is None:
                raise ValueError(f"StateTokenizer: built with proprio_dim={self.proprio_dim}: "
                                 "pass `proprio`")
            proprio = jnp.asarray(proprio, jnp.float32)
            if proprio.shape[-1] != self.proprio_dim:
                raise ValueError(f"StateTokenizer: proprio has {proprio.shape[-1]} values, "
                                 f"expected proprio_dim={self.proprio_dim}")
            tokens.append(self.proprio(proprio))
        elif proprio is not None:
            raise ValueError("StateTokenizer: got `proprio` but was built with proprio_dim=0")
        return jnp.stack(tokens, axis=-2) + self.part_embedding[...]
