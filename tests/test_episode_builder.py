"""The builder base: bad episodes are skipped with a named reason, the rest is written."""

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema

SPEC = rlds_schema.EpisodeSpec(action_dim=2, proprio_dim=3, state_dim=5, language_dim=4)


def _episode(eid, num_steps=4):
    t = num_steps
    return {
        "steps": {
            "observation": {"state": np.ones((t, 5)), "proprio": np.ones((t, 3))},
            "action": np.full((t, 2), 0.5), "action_abs": np.zeros((t, 2)),
            "reward": np.zeros(t), "discount": np.ones(t),
            "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1,
            "is_terminal": np.arange(t) == t - 1,
            "language_instruction": ["push it"] * t,
            "language_embedding": np.ones((t, 4)) / 2,
            "skill_segment": np.zeros(t), "skill_label": ["push"] * t,
            "skill_label_id": np.zeros(t), "skill_description": ["push it"] * t,
            "is_keyframe": np.arange(t) == t - 1, "keypose": np.zeros((t, 2)),
        },
        "episode_metadata": {"episode_id": eid, "task": "push", "layout": 3, "success": True},
    }


class _Synthetic(episode_builder.RldsEpisodeBuilder):
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "test"}

    def episode_spec(self):
        return SPEC

    def generate_episodes(self):
        yield "good0", _episode("good0")
        nan = _episode("nan1")
        nan["steps"]["action"][2, 1] = np.nan
        yield "nan1", nan
        yield "empty2", _episode("empty2", num_steps=0)
        wrong = _episode("wrong3")
        wrong["steps"]["observation"]["proprio"] = np.ones((4, 7))
        yield "wrong3", wrong

        def crash():
            raise OSError("corrupt file demo.hdf5")
        yield "crash4", crash
        yield "skip5", lambda: (_ for _ in ()).throw(
            episode_builder.SkipEpisode("skip5", "failed demonstration"))
        yield "good6", lambda: _episode("good6")


def test_bad_episodes_skipped_rest_written(tmp_path):
    builder = _Synthetic(data_dir=str(tmp_path))
    out = builder.build()
    loaded = tfds.builder_from_directory(out)
    episodes = list(tfds.as_numpy(loaded.as_dataset(split="train")))
    ids = sorted(e["episode_metadata"]["episode_id"].decode() for e in episodes)
    assert ids == ["good0", "good6"]
    steps = list(episodes[0]["steps"])
    assert len(steps) == 4 and steps[0]["is_first"] and steps[-1]["is_keyframe"]
    assert steps[0]["skill_label"] == b"push"
    assert episodes[0]["episode_metadata"]["layout"] == 3
    report = json.load(open(os.path.join(out, episode_builder.REPORT_FILE)))
    assert report["written"] == 2 and report["num_skipped"] == 5
    reasons = {r: ids for r, ids in report["skipped"].items()}
    assert any("action" in r and "non-finite" in r and ids == ["nan1"] for r, ids in reasons.items())
    assert any("observation/proprio" in r and ids == ["wrong3"] for r, ids in reasons.items())
    assert any("corrupt file demo.hdf5" in r for r in reasons)
    assert reasons["failed demonstration"] == ["skip5"]
    assert any(ids == ["empty2"] for ids in reasons.values())
