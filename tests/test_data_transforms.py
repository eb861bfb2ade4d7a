"""Trajectory and frame transforms on hand-made episodes: chunks and pad masks, skill
segments resampled exactly, ids, keyposes, images; eager and inside tf.data alike."""

import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import synthetic_rlds
except ImportError:
    import synthetic_rlds
from atomskill_jax.data import frame_transforms, traj_transforms
from atomskill_jax.data.tf_setup import tf

SEGMENTS = (5, 9, 6)  # steps 0-4, 5-13, 14-19
H, L = 8, 7


def _episode_tensors(index=2, segments=SEGMENTS, cameras=()):
    ep = synthetic_rlds.make_episode(index, segments, cameras=cameras)
    steps = ep["steps"]
    obs = {k: tf.constant(v if k.startswith("image_") else np.float32(v))
           for k, v in steps["observation"].items()}
    return {
        "action": tf.constant(steps["action"], tf.float32),
        "action_abs": tf.constant(steps["action_abs"], tf.float32),
        "keypose": tf.constant(steps["keypose"], tf.float32),
        "skill_segment": tf.constant(steps["skill_segment"], tf.int32),
        "skill_label_id": tf.constant(steps["skill_label_id"], tf.int32),
        "language_embedding": tf.constant(steps["language_embedding"], tf.float32),
        "observation": obs,
        "episode_index": tf.constant(index, tf.int64),
    }


def _steps(episode, action_space="action"):
    return traj_transforms.training_steps(episode, dataset_index=3, horizon=H,
                                          resample_length=L, action_space=action_space)


def _numpy(tree):
    return tf.nest.map_structure(lambda x: np.asarray(x), tree)


def test_chunks_and_pad_mask_at_episode_end():
    out = _numpy(_steps(_episode_tensors()))
    action = _numpy(_episode_tensors())["action"]
    t_len = action.shape[0]
    assert out["action_chunk"].shape == (t_len, H, 3) and out["action_chunk"].dtype == np.float32
    for t in (0, 7, t_len - H, t_len - 3, t_len - 1):
        valid = min(H, t_len - t)
        np.testing.assert_array_equal(out["action_chunk"][t, :valid], action[t:t + valid])
        np.testing.assert_array_equal(out["action_chunk_mask"][t], np.arange(H) < valid)
        np.testing.assert_array_equal(out["action_chunk"][t, valid:],
                                      np.broadcast_to(action[-1], (H - valid, 3)))


def test_episode_shorter_than_horizon_is_padded():
    out = _numpy(_steps(_episode_tensors(segments=(2, 1))))
    assert out["action_chunk"].shape == (3, H, 3)
    np.testing.assert_array_equal(out["action_chunk_mask"].sum(1), [3, 2, 1])


@pytest.mark.parametrize("action_space", ["action", "action_abs"])
def test_segments_resampled_exactly(action_space):
    ep = _episode_tensors()
    out = _numpy(_steps(ep, action_space))
    actions = _numpy(ep)[action_space]
    bounds = [(0, 4), (5, 13), (14, 19)]
    for t in range(actions.shape[0]):
        run = [i for i, (s, e) in enumerate(bounds) if s <= t <= e][0]
        start, end = bounds[run]
        skill = {k: v[t] for k, v in out["skill"].items()}
        assert (skill["start"], skill["end"], skill["length"]) == (start, end, end - start + 1)
        assert skill["actions"].shape == (L, 3)
        np.testing.assert_array_equal(skill["actions"][0], actions[start])  # exact endpoints
        np.testing.assert_array_equal(skill["actions"][-1], actions[end])
        grid = np.linspace(start, end, L)
        for d in range(3):
            np.testing.assert_allclose(skill["actions"][:, d],
                                       np.interp(grid, np.arange(len(actions)), actions[:, d]),
                                       rtol=1e-6)
        assert skill["label_id"] == run % 3
        assert traj_transforms.decode_segment_uid(skill["uid"]) == (3, 2, run)
        np.testing.assert_array_equal(out["keypose"][t], _numpy(ep)["action_abs"][end])
    assert out["dataset_index"].tolist() == [3] * 20 and out["timestep"].tolist() == list(range(20))


def test_single_step_segment_and_repeated_label_runs():
    # A one-step segment resamples to L copies; a label reused later is a new run.
    ep = _episode_tensors(segments=(3, 1, 2))
    ep["skill_segment"] = tf.constant([0, 0, 0, 1, 0, 0], tf.int32)
    out = _numpy(_steps(ep))
    np.testing.assert_array_equal(out["skill"]["start"], [0, 0, 0, 3, 4, 4])
    np.testing.assert_array_equal(out["skill"]["actions"][3],
                                  np.broadcast_to(_numpy(ep)["action"][3], (L, 3)))
    assert len(set(out["skill"]["uid"].tolist())) == 3


def test_eager_and_tf_data_agree():
    ep = _episode_tensors(cameras=("front",))
    eager = _numpy(_steps(ep))
    graph = next(tf.data.Dataset.from_tensors(ep).map(_steps).as_numpy_iterator())
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(graph)):
        np.testing.assert_array_equal(a, b)

    batch = {"observation": {"image_front": ep["observation"]["image_front"][:4]}}
    kwargs = dict(cameras=("front",), augment_kwargs={"hue": 0.05})
    seed = tf.constant([5, 9], tf.int64)
    eager = frame_transforms.augment_batch(batch, seed, **kwargs)["observation"]["image_front"]
    graph = next(tf.data.Dataset.from_tensors((seed, batch)).map(
        lambda s, b: frame_transforms.augment_batch(b, s, **kwargs)).as_numpy_iterator())
    np.testing.assert_array_equal(eager.numpy(), graph["observation"]["image_front"])


def test_images_decoded_resized_and_augmented_by_seed():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    encoded = tf.io.encode_png(image)
    frame = {"observation": {"image_a": encoded, "proprio": tf.zeros(2)}}
    plain = frame_transforms.process_frame(frame, cameras=("a",), size=(16, 20))
    np.testing.assert_array_equal(plain["observation"]["image_a"].numpy(), image)  # no-op size
    small = frame_transforms.process_frame(frame, cameras=("a",), size=(8, 10))
    assert small["observation"]["image_a"].shape == (8, 10, 3)
    assert small["observation"]["image_a"].dtype == tf.uint8

    images = tf.stack([small["observation"]["image_a"]] * 3)

    def aug(seed, **kwargs):
        return frame_transforms.augment_images(images, tf.constant(seed, tf.int64),
                                               **kwargs).numpy()
    a, b, c = aug([0, 1]), aug([0, 1]), aug([0, 2])
    assert a.shape == (3, 8, 10, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # every image draws its own crop and jitter
    identity = aug([0, 1], crop_scale=(1, 1), crop_ratio=(1, 1), brightness=0,
                   contrast=(1, 1), saturation=(1, 1), hue=0)
    np.testing.assert_array_equal(identity, images.numpy())  # all off: unchanged
    hue_only = aug([0, 1], crop_scale=(1, 1), crop_ratio=(1, 1), brightness=0,
                   contrast=(1, 1), saturation=(1, 1), hue=0.1)
    gray = np.full((1, 4, 4, 3), 128, np.uint8)  # hue rotation keeps greys grey
    np.testing.assert_array_equal(frame_transforms.augment_images(
        gray, tf.constant([1, 2], tf.int64), crop_scale=(1, 1), hue=0.2, brightness=0,
        contrast=(1, 1), saturation=(1, 1)).numpy(), gray)
    assert np.abs(hue_only.astype(int) - images.numpy()).max() > 0


# -- found by mutation testing (bench/mutation.py traj_transforms) ----------------------
def test_every_field_of_an_example_and_its_dtype():
    ep = _episode_tensors()
    for key in ("language_embedding", "keypose"):  # cast to the example spec's float32
        ep[key] = tf.cast(ep[key], tf.float64)
    out = _numpy(_steps(ep))
    raw = _numpy(ep)
    assert set(out) == {"observation", "language_embedding", "action_chunk", "action_chunk_mask",
                        "skill", "keypose", "timestep", "episode_length", "dataset_index"}
    assert set(out["skill"]) == {"actions", "length", "start", "end", "label_id", "uid"}
    assert set(out["observation"]) == set(raw["observation"])
    for k, v in raw["observation"].items():
        np.testing.assert_array_equal(out["observation"][k], v)
    np.testing.assert_array_equal(out["language_embedding"], raw["language_embedding"])
    assert out["episode_length"].tolist() == [20] * 20
    dtypes = {k: out[k].dtype for k in ("language_embedding", "keypose", "timestep",
                                        "episode_length", "dataset_index")}
    assert dtypes == {"language_embedding": np.float32, "keypose": np.float32,
                      "timestep": np.int32, "episode_length": np.int32,
                      "dataset_index": np.int32}
    assert out["skill"]["label_id"].dtype == np.int32 and out["skill"]["uid"].dtype == np.int64


def test_resample_length_two_is_the_endpoints_and_one_is_refused():
    actions = tf.constant(np.arange(12.0).reshape(6, 2), tf.float32)
    starts, ends = tf.constant([0, 2]), tf.constant([1, 5])
    out = traj_transforms.resample_segments(actions, starts, ends, 2).numpy()
    np.testing.assert_array_equal(out, [[[0, 1], [2, 3]], [[4, 5], [10, 11]]])
    with pytest.raises(ValueError, match="skill resample length must be >= 2, got 1"):
        traj_transforms.resample_segments(actions, starts, ends, 1)


def test_unknown_action_space_is_named():
    with pytest.raises(ValueError, match="action_space must be 'action' or 'action_abs', "
                                         "got 'delta'"):
        _steps(_episode_tensors(), action_space="delta")


def test_more_segments_than_the_uid_holds_is_refused():
    # 2**16 one-step segments: the 16 segment bits of the uid would overflow into the
    # episode's, and two skills would share an id.
    t_len = 1 << traj_transforms.EPISODE_SHIFT
    episode = {"action": tf.zeros([t_len, 1]), "skill_segment": tf.range(t_len),
               "observation": {}, "language_embedding": tf.zeros([t_len, 1]),
               "skill_label_id": tf.zeros([t_len], tf.int32), "keypose": tf.zeros([t_len, 1]),
               "episode_index": tf.constant(0, tf.int64)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="more skill segments"):
        traj_transforms.training_steps(episode, dataset_index=0, horizon=2, resample_length=2)


def test_segment_uid_fields_do_not_bleed_into_each_other():
    # All-ones episode and segment fields next to a dataset index: every bit lands home.
    episode, segment = (1 << 32) - 1, (1 << 16) - 1
    uid = (5 << traj_transforms.DATASET_SHIFT) + (episode << traj_transforms.EPISODE_SHIFT) + segment
    assert traj_transforms.decode_segment_uid(uid) == (5, episode, segment)
    assert traj_transforms.decode_segment_uid(1 << traj_transforms.EPISODE_SHIFT) == (0, 1, 0)
    # An odd episode index through the transform; the default action space is "action".
    ep = _episode_tensors(index=7, segments=(2, 3))
    out = _numpy(traj_transforms.training_steps(ep, dataset_index=1, horizon=2, resample_length=2))
    assert [traj_transforms.decode_segment_uid(u) for u in out["skill"]["uid"][[0, 4]]] == [
        (1, 7, 0), (1, 7, 1)]
    np.testing.assert_array_equal(out["action_chunk"][:, 0], _numpy(ep)["action"])
    first = _numpy(traj_transforms.training_steps(ep, dataset_index=0, horizon=2,
                                                  resample_length=2))["skill"]["uid"]
    assert traj_transforms.decode_segment_uid(first[-1]) == (0, 7, 1)  # dataset 0: the usual
