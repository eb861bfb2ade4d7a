"""Closed-loop evaluation in ALOHA sim (eval/suites.py + eval/rollout.py): success is
reaching gym-aloha's reward 4, ATP counts its reward stages. A policy replaying the
scripted expert's actions for each evaluation layout succeeds everywhere; one holding
the arms still reaches no stage."""

import functools

import numpy as np

from atomskill_jax.policies.base import Policy, PolicySpec

KEYS = ("state", "proprio")


class Replay(Policy):
    """Plays the scripted expert's actions of each episode's layout (or holds the start)."""

    def __init__(self, hold: bool = False):
        self.spec = PolicySpec(name="hold" if hold else "replay", action_space="action_abs",
                               action_dim=14, observation_keys=KEYS)
        self.hold = hold

    def reset(self, task_info):
        from data_builders.aloha_sim_scripted.rollouts import rollout_expert

        self.plans = [rollout_expert(t.task, t.layout)["action"] for t in task_info]
        self.t = 0

    def infer(self, observation):
        if self.hold:
            return np.asarray(observation["proprio"], np.float32)
        t = self.t
        self.t += 1
        return np.stack([p[min(t, len(p) - 1)] for p in self.plans])


def test_the_expert_succeeds_and_holding_still_reaches_no_stage(tmp_path):
    from atomskill_jax.eval import evaluate

    run = functools.partial(evaluate, episodes_per_task=1, seeds=[0], num_workers=0,
                            progress=False)
    expert = run(Replay, tasks=["insertion"], name="replay", out_dir=str(tmp_path / "replay"))
    held = run(functools.partial(Replay, hold=True), tasks=["transfer_cube", "insertion"],
               name="hold", max_steps=30, out_dir=str(tmp_path / "hold"))
    assert [r.success for r in expert.results] == [True]
    assert all(r.stages_reached == 4 and r.num_stages == 4 for r in expert.results)
    # Insertion succeeds near step 340: the 400-step default cap, not gym-aloha's 300.
    assert max(r.success_step for r in expert.results if r.task == "insertion") > 300
    assert all(r.layout >= 1_000_000 for r in expert.results)  # evaluation layouts only
    assert not any(r.success for r in held.results)
    assert all(r.stages_reached == 0 for r in held.results)
    assert expert.meta["stages"]["insertion"] == ["reward>=1", "reward>=2", "reward>=3",
                                                  "reward>=4"]
    assert "gym-aloha" in expert.meta["versions"]
