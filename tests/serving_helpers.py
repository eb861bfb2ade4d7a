"""Shared by the server tests: a served tiny policy, observations, the in-process
reference actions, and raw websocket frames."""

from __future__ import annotations

import numpy as np

from atomskill_jax.serving import codec

STATE, PROPRIO, LANG = 39, 4, 384


def observation(rng) -> dict:
    return {"state": (0.3 * rng.normal(size=STATE)).astype(np.float32),
            "proprio": (0.1 * rng.normal(size=PROPRIO)).astype(np.float32),
            "language_embedding": rng.normal(size=LANG).astype(np.float32)}


def episode(seed: int, steps: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [observation(rng) for _ in range(steps)]


def task(i: int) -> dict:
    return {"task": "pick-place", "instruction": "pick", "layout": 1_000_000 + i, "seed": 0,
            "episode": i}


def reference_actions(policy_dir: str, episodes: list[list[dict]], options=None) -> np.ndarray:
    """[E, T, A]: the exported policy in this process, all episodes as one batch (each
    environment's actions depend on its own episode only)."""
    from atomskill_jax.export import loader
    from atomskill_jax.policies.base import TaskInfo

    policy = loader.load_policy(policy_dir, **(options or {}))
    policy.reset([TaskInfo(**task(i)) for i in range(len(episodes))])
    out = []
    for t in range(len(episodes[0])):
        obs = {k: np.stack([e[t][k] for e in episodes]) for k in episodes[0][0]}
        out.append(policy.infer(obs))
    return np.stack(out, axis=1)


def request(kind: str, rid, **fields) -> bytes:
    return codec.encode({"type": kind, "id": rid, **fields})
