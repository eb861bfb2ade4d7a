"""The pipeline on a tiny real dataset (MetaWorld experts, the conftest fixture):
every example checked against the episode it came from, statistics against numpy."""

import jax
import numpy as np
import pytest

from atomskill_jax.data import config as data_config
from atomskill_jax.data import pipeline, sources, statistics_compute, traj_transforms
from atomskill_jax.training.mesh import make_mesh

H, L = 32, 64


@pytest.fixture(scope="module")
def episodes(metaworld_rlds_dir):
    """Episodes by their global index (the one segment uids carry)."""
    source = sources.open_source(metaworld_rlds_dir)
    return {int(ep["episode_index"]): ep
            for ep in sources.read_episodes(source, keep_state=True).as_numpy_iterator()}


def _config(path, **overrides):
    c = data_config.default_data_config()
    c.datasets = ({"name": path, "weight": 1.0},)
    c.batch_size = 2
    c.example_shuffle_buffer = 256
    c.num_parallel_calls = 2
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.parametrize("action_space", ["action", "action_abs"])
def test_examples_match_their_episodes(metaworld_rlds_dir, episodes, action_space):
    pipe = pipeline.make_pipeline(_config(metaworld_rlds_dir, action_space=action_space),
                                  train=False)
    batches = [jax.tree.map(np.asarray, b) for b in pipe.dataset().as_numpy_iterator()]
    batch = jax.tree.map(lambda *x: np.concatenate(x), *batches)  # raw: not normalised
    assert len(batch["timestep"]) == sum(len(e["action"]) for e in episodes.values())
    assert batch["observation"]["state"].shape[1:] == (39,)
    uids = set()
    for i in range(len(batch["timestep"])):
        _, episode, run = traj_transforms.decode_segment_uid(batch["skill"]["uid"][i])
        ep, t = episodes[episode], int(batch["timestep"][i])
        actions, t_len = ep[action_space], len(ep["action"])
        valid = min(H, t_len - t)
        np.testing.assert_array_equal(batch["action_chunk"][i, :valid], actions[t:t + valid])
        np.testing.assert_array_equal(batch["action_chunk"][i, valid:],
                                      np.broadcast_to(actions[-1], (H - valid, 4)))
        np.testing.assert_array_equal(batch["action_chunk_mask"][i], np.arange(H) < valid)
        start, end = int(batch["skill"]["start"][i]), int(batch["skill"]["end"][i])
        segment = ep["skill_segment"]
        assert start <= t <= end and batch["skill"]["length"][i] == end - start + 1
        assert (segment[start:end + 1] == segment[t]).all()
        assert start == 0 or segment[start - 1] != segment[t]
        assert end == t_len - 1 or segment[end + 1] != segment[t]
        np.testing.assert_array_equal(batch["skill"]["actions"][i, 0], actions[start])
        np.testing.assert_array_equal(batch["skill"]["actions"][i, -1], actions[end])
        np.testing.assert_array_equal(batch["keypose"][i], ep["action_abs"][end])
        assert batch["skill"]["label_id"][i] == ep["skill_label_id"][t]
        np.testing.assert_array_equal(batch["observation"]["proprio"][i],
                                      ep["observation"]["proprio"][t])
        uids.add((int(batch["skill"]["uid"][i]), episode, start))
        assert run == len(np.unique(np.flatnonzero(np.diff(segment[:t + 1]))))
    assert len({u for u, _, _ in uids}) == len(uids)  # one (episode, segment) per uid


def test_statistics_match_numpy(metaworld_rlds_dir, episodes):
    stats = statistics_compute.compute_statistics(sources.open_source(metaworld_rlds_dir))
    assert stats.num_episodes == 4 and stats.num_steps == sum(
        len(e["action"]) for e in episodes.values())
    for field in ("action", "action_abs", "observation/proprio", "observation/state"):
        key = field.split("/")[-1]
        values = np.concatenate([e["observation"][key] if "/" in field else e[key]
                                 for e in episodes.values()]).astype(np.float64)
        np.testing.assert_allclose(stats[field].mean, values.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[field].std, values.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[field].p01, np.percentile(values, 1, axis=0),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[field].p99, np.percentile(values, 99, axis=0),
                                   rtol=1e-5, atol=1e-6)


def test_training_batches_on_the_mesh(metaworld_rlds_dir):
    mesh = make_mesh(data=4, fsdp=2)
    it = pipeline.make_pipeline(_config(metaworld_rlds_dir, batch_size=16)).iterator(mesh)
    for _ in range(3):
        batch = next(it)
    assert batch["action_chunk"].shape == (16, H, 4)
    assert batch["skill"]["actions"].shape == (16, L, 4)
    assert batch["language_embedding"].shape == (16, 384)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(batch)
               if np.issubdtype(x.dtype, np.floating))
    assert batch["keypose"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
