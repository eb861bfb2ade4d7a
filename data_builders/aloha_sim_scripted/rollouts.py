"""Scripted-expert rollouts in the ALOHA sim, in this process or in a render worker.

`rollout_expert(task, seed)` runs the expert of `scripted_policy` in an
`envs.aloha_sim.AlohaSimEnv` and returns per-step numpy arrays, each observation
taken before the action of its step (RLDS order). With cameras, rollouts run in a
spawned worker process (`RenderingRolloutWorker`) that never imports TensorFlow:
MuJoCo's OSMesa backend and TensorFlow crash together at interpreter exit (see
`envs.metaworld`), and the builder needs TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from atomskill_jax.envs import aloha_sim
from data_builders.aloha_sim_scripted.scripted_policy import make_expert


def rollout_expert(task: str, seed: int, *, max_steps: int = aloha_sim.DEFAULT_MAX_STEPS,
                   cameras: Sequence[str] = (), image_size: Sequence[int] | None = None,
                   env: aloha_sim.AlohaSimEnv | None = None) -> dict[str, Any]:
    """One scripted episode of `task` in layout `seed`: the script's length, capped
    at `max_steps`. `success` = reward 4 reached at any step (insertion's flickers)."""
    task = aloha_sim.canonical_task(task)
    own_env = env is None
    if env is None:
        env = aloha_sim.AlohaSimEnv(task, cameras=cameras, image_size=image_size,
                                    max_steps=max_steps)
    try:
        obs = env.reset(seed)
        layout_vec = env.object_state()[:7 * (1 + (task == "insertion"))].astype(np.float32)
        expert = make_expert(task, env)
        rec: dict[str, list] = {k: [] for k in ("proprio", "state", "action", "reward")}
        images: dict[str, list] = {cam: [] for cam in env.cameras}
        for t in range(min(expert.length, max_steps)):
            rec["proprio"].append(obs["proprio"])
            rec["state"].append(obs["state"])
            for cam in env.cameras:
                images[cam].append(obs[f"image_{cam}"])
            action = expert.act(t)
            obs, reward, _, _, _ = env.step(action)
            rec["action"].append(action)
            rec["reward"].append(reward)
    finally:
        if own_env:
            env.close()
    out = {k: np.asarray(v, np.float32) for k, v in rec.items()}
    out["images"] = {cam: np.asarray(v, np.uint8) for cam, v in images.items()}
    reward = out["reward"]
    out["success"] = bool(reward.max() >= aloha_sim.MAX_REWARD)
    out["first_success_step"] = int(np.argmax(reward >= aloha_sim.MAX_REWARD)) if out["success"] else -1
    out["layout_vec"] = layout_vec
    return out


# -- rendering out of process ----------------------------------------------------
_WORKER_ENVS: dict[tuple, aloha_sim.AlohaSimEnv] = {}


def _init_worker(gl_backend: str) -> None:
    os.environ["MUJOCO_GL"] = gl_backend
    os.environ["PYOPENGL_PLATFORM"] = gl_backend


def _worker_rollout(task, seed, cameras, image_size, max_steps) -> dict[str, Any]:
    key = (task, cameras, image_size, max_steps)
    if key not in _WORKER_ENVS:
        _WORKER_ENVS[key] = aloha_sim.AlohaSimEnv(task, cameras=cameras, image_size=image_size,
                                                  max_steps=max_steps)
    return rollout_expert(task, seed, max_steps=max_steps, env=_WORKER_ENVS[key])


def _worker_check() -> tuple[bool, str]:
    try:
        env = aloha_sim.AlohaSimEnv("transfer_cube", cameras=("top",), image_size=(8, 8))
        env.reset(0)
        env.close()
    except Exception as err:  # noqa: BLE001 - any GL failure means no rendering
        return False, f"{type(err).__name__}: {err} (set MUJOCO_GL=egl or osmesa)"
    return True, ""


class RenderingRolloutWorker:
    """Runs `rollout_expert` with cameras in one spawned process (see module doc)."""

    def __init__(self, gl_backend: str | None = None):
        from atomskill_jax.envs.metaworld import render_backend

        self._gl_backend = gl_backend or render_backend()
        self._pool = self._start()

    def _start(self):
        import concurrent.futures
        import multiprocessing

        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(self._gl_backend,))

    def check(self) -> tuple[bool, str]:
        """(True, '') if the worker can render the ALOHA scene, else (False, why)."""
        return self._pool.submit(_worker_check).result()

    def rollout(self, task: str, seed: int, *, cameras: Sequence[str],
                image_size: Sequence[int] | None = None,
                max_steps: int = aloha_sim.DEFAULT_MAX_STEPS) -> dict[str, Any]:
        """A worker that dies (e.g. in native GL code) loses this episode only: the
        error is raised for it and a fresh worker takes the next one."""
        from concurrent.futures.process import BrokenProcessPool

        size = None if image_size is None else tuple(int(s) for s in image_size)
        try:
            return self._pool.submit(_worker_rollout, task, int(seed), tuple(cameras), size,
                                     int(max_steps)).result()
        except BrokenProcessPool:
            self._pool.shutdown(wait=False)
            self._pool = self._start()
            raise

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
