"""rlbench_eval without RLBench: conversions on hand-built observations, the episode
loop against the stub server with a fake task environment."""

from __future__ import annotations

import types

import numpy as np
import pytest

from atomskill_client import PolicyClient
from atomskill_client import rlbench_eval
from stub_server import metadata

SPEC = {"proprio": {"dtype": "<f4", "shape": [8]}, "state": {"dtype": "<f4", "shape": [3]},
        "image_front": {"dtype": "|u1", "shape": [4, 6, 3]},
        "language_instruction": {"dtype": "str"}}


def rlbench_observation(**overrides):
    """The attributes of rlbench.backend.observation.Observation this client reads."""
    fields = dict(gripper_pose=np.array([0.1, 0.2, 0.3, 0.0, 0.0, 0.6, 0.8]),
                  gripper_open=1.0, task_low_dim_state=np.array([1.0, 2.0, 3.0]),
                  front_rgb=np.full((4, 6, 3), 7, np.uint8), wrist_rgb=None)
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def test_observation_conversion():
    out = rlbench_eval.observation_from_rlbench(rlbench_observation(), SPEC, "push the button")
    assert sorted(out) == sorted(SPEC)
    assert out["proprio"].dtype == np.float32
    np.testing.assert_allclose(out["proprio"], [0.1, 0.2, 0.3, 0.0, 0.0, 0.6, 0.8, 1.0],
                               rtol=1e-6)
    assert out["state"].dtype == np.float32 and out["state"].tolist() == [1.0, 2.0, 3.0]
    assert out["image_front"].dtype == np.uint8 and out["image_front"].shape == (4, 6, 3)
    assert out["language_instruction"] == "push the button"


@pytest.mark.parametrize("overrides, spec_change, match", [
    ({"task_low_dim_state": None}, {}, r"state:.*task_low_dim_state=True"),
    ({"front_rgb": None}, {}, r"image_front:.*no front_rgb"),
    ({"front_rgb": np.zeros((8, 8, 3), np.uint8)}, {},
     r"image_front:.*image_size=\(W, H\)=\(6, 4\)"),
    ({"front_rgb": np.zeros((4, 6, 3), np.float32)}, {}, r"image_front:.*uint8"),
    ({"gripper_pose": np.zeros(3)}, {}, r"proprio:.*7"),
    ({}, {"language_embedding": {"dtype": "<f4", "shape": [4]}}, r"language_embedding"),
])
def test_observation_conversion_names_the_key_and_the_fix(overrides, spec_change, match):
    with pytest.raises(ValueError, match=match):
        rlbench_eval.observation_from_rlbench(rlbench_observation(**overrides),
                                              dict(SPEC, **spec_change))


def test_actions_are_unit_quaternion_targets_with_a_discrete_gripper():
    action = rlbench_eval.rlbench_action([1, 2, 3, 0, 0, 0, 2.0, 0.7])
    np.testing.assert_allclose(action, [1, 2, 3, 0, 0, 0, 1.0, 1.0])
    assert rlbench_eval.rlbench_action([0, 0, 0, 0, 0, 3, 4, 0.2])[3:].tolist() == \
        [0.0, 0.0, 0.6, 0.8, 0.0]
    with pytest.raises(ValueError, match="8"):
        rlbench_eval.rlbench_action(np.zeros(7))
    with pytest.raises(ValueError, match="normalised"):
        rlbench_eval.rlbench_action(np.zeros(8))


class InvalidActionError(Exception):
    """Named as rlbench.backend.exceptions.InvalidActionError."""


class FakeTask:
    """A TaskEnvironment: succeeds at the step `succeed_at` of every episode (terminate,
    reward 1), fails at `fail_at` (terminate, reward 0: a fail condition); `refuse_at`
    raises the planner's error instead."""

    def __init__(self, succeed_at=None, refuse_at=None, fail_at=None):
        self.succeed_at, self.refuse_at, self.fail_at = succeed_at, refuse_at, fail_at
        self.actions, self.variation = [], None

    def set_variation(self, variation):
        self.variation = variation

    def reset(self):
        self.steps = 0
        return ["reach the red target", "touch the red ball"], rlbench_observation()

    def step(self, action):
        self.steps += 1
        self.actions.append(action)
        if self.steps == self.refuse_at:
            raise InvalidActionError("A path could not be found")
        success = self.steps == self.succeed_at
        return rlbench_observation(), float(success), success or self.steps == self.fail_at


def test_evaluate_runs_episodes_against_the_server(stub):
    meta = metadata(action_dim=8, execute_steps=2, chunk_length=4,
                    observation={k: v for k, v in SPEC.items() if k != "image_front"})
    server = stub(meta=meta, offset=1.0)  # actions 1, 2, ...: unit quaternions, gripper open
    tasks = {"reach_target": FakeTask(succeed_at=3), "push_button": FakeTask(),
             "slide_block": FakeTask(refuse_at=2), "close_jar": FakeTask(fail_at=1)}
    with PolicyClient(server.uri) as client:
        report = rlbench_eval.evaluate(client, tasks, episodes=2, max_steps=5, seed=10,
                                       variation=1)
    assert report["per_task"] == {"reach_target": 1.0, "push_button": 0.0, "slide_block": 0.0,
                                  "close_jar": 0.0}
    assert report["success_rate"] == pytest.approx(1 / 4)
    episodes = report["episodes"]
    assert [e["steps"] for e in episodes] == [3, 3, 5, 5, 2, 2, 1, 1]
    assert "InvalidActionError" in episodes[4]["error"]
    resets = server.messages("reset")
    assert [r["task"] for r in resets[:2]] == [
        {"task": "reach_target", "instruction": "reach the red target", "layout": 1,
         "seed": 10, "episode": 0},
        {"task": "reach_target", "instruction": "reach the red target", "layout": 1,
         "seed": 11, "episode": 1}]
    # Every action of a reply is executed before observing again: 2 per infer.
    assert len(server.messages("infer")) == 2 + 2 + 3 + 3 + 1 + 1 + 1 + 1
    first = tasks["reach_target"].actions[0]
    np.testing.assert_allclose(first, [1, 1, 1, 0.5, 0.5, 0.5, 0.5, 1.0])
    assert tasks["push_button"].variation == 1
    assert report["server"]["method"] == "stub"


def test_launching_without_rlbench_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rlbench", None)  # not importable, even if installed
    with pytest.raises(ImportError, match="needs RLBench.*CoppeliaSim"):
        rlbench_eval.launch_rlbench(metadata(action_dim=8))


def test_the_command_line_evaluates_and_writes_the_report(stub, monkeypatch, tmp_path, capsys):
    import json

    meta = metadata(action_dim=8, execute_steps=2, chunk_length=4,
                    observation={k: v for k, v in SPEC.items() if k != "image_front"})
    server = stub(meta=meta, offset=1.0)
    launched = []

    class FakeEnvironment:
        def get_task(self, task_class):
            return FakeTask(succeed_at=2 if task_class == "ReachTarget" else None)

        def shutdown(self):
            launched.append("shutdown")

    def launch(metadata, headless):
        launched.append((metadata["method"], headless))
        return FakeEnvironment(), {"reach_target": "ReachTarget", "push_button": "PushButton"}.get

    monkeypatch.setattr(rlbench_eval, "launch_rlbench", launch)
    out = tmp_path / "sr.json"
    assert rlbench_eval.main(["--uri", server.uri, "--tasks", "reach_target, push_button",
                              "--episodes", "2", "--max-steps", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["per_task"] == {"reach_target": 1.0, "push_button": 0.0}
    assert report["success_rate"] == 0.5
    assert launched == [("stub", True), "shutdown"]
    printed = capsys.readouterr().out
    assert "push_button episode 2/2: failure after 3 steps" in printed
    assert "mean SR over 2 tasks: 50.0%" in printed
