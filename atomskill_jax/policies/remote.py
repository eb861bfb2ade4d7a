"""A policy served by `atomskill serve`, as a `Policy` for closed-loop evaluation
(`atomskill eval --server=ws://...`): each of the B environments has its own connection
(the server keeps each connection's policy state and batches them together), requests
go out in parallel, the actions come back stacked.

The server is told each episode's TaskInfo at `reset`, so an episode is seeded as it
would be in-process, and the same seeds give the same episodes. Observation keys the
server fills itself (the instruction's embedding) are not sent.
"""

from __future__ import annotations

import concurrent.futures
from typing import Mapping, Sequence

import numpy as np

from atomskill_jax.policies.base import Policy, PolicySpec, TaskInfo, batch_size


class RemotePolicy(Policy):
    def __init__(self, url: str, *, token: str | None = None, name: str | None = None,
                 recv_timeout: float = 120.0):
        from atomskill_client import PolicyClient

        self._make = lambda: PolicyClient(url, token=token, recv_timeout=recv_timeout)
        self.url = url
        self._clients = [self._make()]
        meta = self.metadata = self._clients[0].metadata
        keys = tuple(k for k, v in meta["observation"].items() if not v.get("optional"))
        images = [tuple(v["shape"][:2]) for k, v in meta["observation"].items()
                  if k.startswith("image_")]
        self.spec = PolicySpec(name=name or meta["policy"], action_space=meta["action"]["space"],
                               action_dim=int(meta["action"]["dim"]), observation_keys=keys,
                               image_size=images[0] if images else (128, 128))
        self._pool = None

    def reset(self, task_info: Sequence[TaskInfo]) -> None:
        while len(self._clients) < len(task_info):
            self._clients.append(self._make())
        self._active = self._clients[:len(task_info)]
        if self._pool is None or self._pool._max_workers < len(self._active):
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = concurrent.futures.ThreadPoolExecutor(len(self._active))
        list(self._pool.map(lambda ct: ct[0].reset(
            task=ct[1].task, instruction=ct[1].instruction, layout=int(ct[1].layout),
            seed=int(ct[1].seed), episode=int(ct[1].episode)), zip(self._active, task_info)))

    def infer(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        b = batch_size(observation)
        if b != len(self._active):
            raise ValueError(f"remote policy: {b} observations after reset() with "
                             f"{len(self._active)} environments; call reset first")
        keys = [k for k in self.spec.observation_keys if k in observation]

        def one(i):
            obs = {k: np.asarray(observation[k][i]) for k in keys}
            return self._active[i].infer(obs)["actions"][0]

        return np.stack(list(self._pool.map(one, range(b))))

    def close(self) -> None:
        for client in self._clients:
            client.close()
        if self._pool is not None:
            self._pool.shutdown()
