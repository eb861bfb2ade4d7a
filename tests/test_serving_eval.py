"""Closed-loop MetaWorld evaluation through `atomskill serve` on loopback matches the
in-process evaluation on the same seeds: the same actions step by step (skills end and
start on the way), the same episodes, and `atomskill eval --server` reports them."""

import functools
import json
import os

import numpy as np

from atomskill_jax.policies.base import Policy

RECORDED: dict[str, list] = {}
OPTIONS = {"max_skill_steps": 5}


class Recording(Policy):
    """Wraps a policy and keeps every batch of actions it sends."""

    def __init__(self, key, factory):
        self.inner, self.key = factory(), key
        self.spec = self.inner.spec
        RECORDED[key] = []

    def reset(self, task_info):
        self.inner.reset(task_info)

    def infer(self, observation):
        actions = np.asarray(self.inner.infer(observation))
        RECORDED[self.key].append(actions)
        return actions

    def close(self):
        self.inner.close()


def test_metaworld_through_the_server_matches_in_process(tiny_trained_workdir, tmp_path):
    from atomskill_jax import cli
    from atomskill_jax.eval import evaluate
    from atomskill_jax.policies.loading import policy_factory
    from atomskill_jax.policies.remote import RemotePolicy
    from atomskill_jax.serving import policy_source
    from atomskill_jax.serving.server import PolicyServer, ServerThread

    run = functools.partial(evaluate, tasks=["pick-place"], episodes_per_task=2, seeds=[0],
                            max_steps=40, num_workers=0, progress=False)
    local = run(functools.partial(Recording, "local",
                                  policy_factory(tiny_trained_workdir, **OPTIONS)),
                name="local", out_dir=str(tmp_path / "local"))
    served = policy_source.from_workdir(tiny_trained_workdir)
    with ServerThread(PolicyServer(served, port=0, max_batch=2, options=OPTIONS)) as url:
        remote = run(functools.partial(Recording, "remote",
                                       functools.partial(RemotePolicy, url)),
                     name="remote", out_dir=str(tmp_path / "remote"))
        out = tmp_path / "cli"
        code = cli.main(["eval", f"--server={url}", "--tasks=pick-place", "--episodes=2",
                         "--seeds=0", "--max-steps=40", "--workers=0", f"--out={out}"])
        assert code == 0
    a, b = np.stack(RECORDED["local"]), np.stack(RECORDED["remote"])
    assert a.shape == b.shape == (40, 2, 4)
    # Step by step equal up to float rounding: XLA's matmuls round differently for
    # batches of 1 and 2 (the server batches whoever is waiting), ~1e-7 per call, which
    # the closed loop amplifies over 40 steps (seen here: 2e-4 at the last step).
    np.testing.assert_allclose(b[:20], a[:20], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)
    assert np.abs(a[1:] - a[:-1]).max() > 1e-3  # the policy acts, not a constant
    fields = ("task", "seed", "episode", "layout", "success", "steps", "stages_reached")
    rows = [[{f: getattr(r, f) for f in fields} for r in report.results]
            for report in (local, remote)]
    assert rows[0] == rows[1]
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["meta"]["server"] == url and report["meta"]["method"] == "atomskill"
    assert len(report["episodes"]) == 2
