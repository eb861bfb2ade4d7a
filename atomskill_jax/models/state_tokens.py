"""State observations as tokens: each part of the state vector embedded as one token
(USR's offline scene encoder in place of CLIP patch tokens).

MetaWorld v3's 39-d observation (metaworld 3.1.1, sawyer_xyz_env.py:
`_get_curr_obs_combined_no_goal` returns hstack(hand xyz, gripper opening clipped to
[0, 1], `obs_obj_padded` of 14 = two objects' position + quaternion, zero-padded), and
`_get_obs` returns hstack(current 18, the previous frame's 18, goal xyz)):
  hand 0:3, gripper 3:4, object 1 pose 4:11, object 2 pose 11:18, the same four for the
  previous frame 18:36, goal 36:39  -> 9 tokens.
Each part has its own linear embedding plus a learned part embedding (which part a
token is), so the downstream attention can tell the hand from the goal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from atomskill_jax.models.layers import dense

METAWORLD_STATE_PARTS: tuple[tuple[str, int, int], ...] = (
    ("hand", 0, 3), ("gripper", 3, 4), ("object1_pose", 4, 11), ("object2_pose", 11, 18),
    ("prev_hand", 18, 21), ("prev_gripper", 21, 22), ("prev_object1_pose", 22, 29),
    ("prev_object2_pose", 29, 36), ("goal", 36, 39))
METAWORLD_STATE_DIM = 39


def parts_for(state_dim: int, slice_size: int = 8) -> tuple[tuple[str, int, int], ...]:
    """MetaWorld's parts for a 39-d state, else one token per `slice_size` values."""
    if state_dim == METAWORLD_STATE_DIM:
        return METAWORLD_STATE_PARTS
    if state_dim <= 0:
        raise ValueError(f"state_dim must be positive, got {state_dim}")
    return tuple((f"slice{i}", s, min(s + slice_size, state_dim))
                 for i, s in enumerate(range(0, state_dim, slice_size)))


class StateTokenizer(nnx.Module):
    def __init__(self, parts, dim: int, *, rngs: nnx.Rngs, proprio_dim: int = 0):
        self.parts = tuple((str(n), int(a), int(b)) for n, a, b in parts)
        if any(b <= a for _, a, b in self.parts):
            raise ValueError(f"empty state part in {self.parts}")
        self.embed = nnx.List([dense(b - a, dim, rngs=rngs) for _, a, b in self.parts])
        self.proprio = dense(proprio_dim, dim, rngs=rngs) if proprio_dim else None
        count = len(self.parts) + (1 if proprio_dim else 0)
        self.part_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (count, dim)))
        self.state_dim = max(b for _, _, b in self.parts)

    def __call__(self, state, proprio=None):
        state = jnp.asarray(state, jnp.float32)
        if state.shape[-1] < self.state_dim:
            raise ValueError(f"state has {state.shape[-1]} values; the parts need "
                             f"{self.state_dim}")
        tokens = [layer(state[..., a:b]) for layer, (_, a, b) in zip(self.embed, self.parts)]
        if self.proprio is not None:
            if proprio is None:
                raise ValueError("this tokenizer embeds proprio too: pass it")
            tokens.append(self.proprio(jnp.asarray(proprio, jnp.float32)))
        return jnp.stack(tokens, axis=-2) + self.part_embedding[...]
