"""Training and evaluation images agree: size, dtype, value range, orientation, scaling.

One tiny MetaWorld dataset with two cameras (corner, which MetaWorld mounts rolled by
180 degrees, and gripperPOV) is built on evaluation layout 0, rendered at 40x48 with a
non-default render quality. The training pipeline reads it back resized to 32x40 (no
augmentation) and normalised, as a model sees it. Evaluation runs the same layout
through `evaluate` (a spawned rollout worker, the real env adapter) with a policy that
replays the dataset's actions and records what the chunk runtime hands the model
function. Step by step the two must match pixel for pixel, up to 1 level of float
rounding between TensorFlow's resize and its numpy twin: a flipped, transposed,
differently resized or differently rendered evaluation frame fails.

The model reads them as its cameras "front" and "wrist" through the dataset entry's
camera mapping, as the `paper` config does: evaluation must render the mapped cameras.
The `paper` variant itself then traces a whole training step on this dataset.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from tests.tiny_model import REPO

from atomskill_jax.policies.base import Policy, batch_size

TASK = "drawer-close"
STEPS = 4
CAMERAS = ("corner", "gripperPOV")  # what the dataset holds
CAMERA_MAP = {"front": "corner", "wrist": "gripperPOV"}  # the paper config's mapping
MODEL_CAMERAS = ("front", "wrist")  # what the model reads
NATIVE_SIZE = (40, 48)  # what the builder renders (H != W: a transpose shows)
TRAIN_SIZE = (32, 40)  # what the pipeline resizes to, and the policy's image size
QUALITY = "no_shadows"  # not the default: evaluation must read it from the dataset
LANGUAGE_DIM = 384


class ReplayRecorder(Policy):
    """Replays the dataset's actions; records the observation the chunk runtime passes
    to its model function (normalised, as a trained model would get it)."""

    def __init__(self, actions, record_path, settings, image_source):
        from atomskill_jax.policies import chunk_policy, runtime_settings

        self.spec = runtime_settings.policy_spec(settings)
        self.image_source = image_source  # what policies.loading attaches from the data
        self.actions = np.asarray(actions, np.float32)
        self.record_path = record_path
        self.runtime = chunk_policy.build({"decode": self._decode}, settings, {})
        self.seen: list[dict] = []
        self.t = 0

    def _decode(self, observation, language_embedding):
        self.seen.append({k: np.asarray(v).copy() for k, v in observation.items()})
        return np.zeros((len(language_embedding), 1, self.spec.action_dim), np.float32)

    def reset(self, task_info):
        self.runtime.reset(task_info)
        self.seen, self.t = [], 0  # drop the warm-up call

    def infer(self, observation):
        b = batch_size(observation)
        self.runtime.infer({**observation,
                            "language_embedding": np.zeros((b, LANGUAGE_DIM), np.float32)})
        # The policy lives in the worker: hand the records back through a file.
        np.savez(self.record_path, **{f"{k}@{t}": v for t, obs in enumerate(self.seen)
                                      for k, v in obs.items()})
        action = np.repeat(self.actions[self.t][None], b, axis=0)
        self.t += 1
        return action


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """(training images, evaluation images, dataset dir): {camera: uint8 [STEPS, h, w, 3]}."""
    from atomskill_jax.envs import metaworld as mw

    with mw.RenderingRolloutWorker() as worker:
        ok, why = worker.check()
    if not ok:
        pytest.skip(f"no offscreen GL for MetaWorld: {why}")
    from atomskill_jax.data import config as data_config
    from atomskill_jax.data import pipeline
    from atomskill_jax.data.image_source import policy_image_source
    from atomskill_jax.eval import evaluate
    from atomskill_jax.policies import runtime_settings
    from atomskill_jax.policies.base import PolicySpec
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    tmp = tmp_path_factory.mktemp("image_parity")
    dataset_dir, _ = mwb.build(
        str(tmp / "data"), tasks=TASK, episodes_per_task=1, max_steps=STEPS,
        only_successful=False, cameras=CAMERAS, image_size=NATIVE_SIZE,
        render_quality=QUALITY, layout_split="eval", show_progress=False)

    # Training: one pass in file order, no augmentation; the normalised batch.
    c = data_config.default_data_config()
    c.datasets = ({"name": dataset_dir, "weight": 1.0, "cameras": CAMERA_MAP},)
    c.update(cameras=MODEL_CAMERAS, image_size=TRAIN_SIZE, augment=False, use_state=False,
             batch_size=STEPS, horizon=2, skill_resample_length=3, num_parallel_calls=1,
             prefetch=1)
    pipe = pipeline.make_pipeline(c, train=False)
    (batch,) = list(pipe.numpy_batches())
    assert list(batch["timestep"]) == list(range(STEPS))
    train = pipe.normalizer.normalize(batch)["observation"]
    actions = batch["action_chunk"][:, 0]  # the command executed at each step (no noise)

    # Evaluation: the same layout (eval layout 0 = seed 0's first episode), replayed.
    keys = ("proprio",) + tuple(f"image_{cam}" for cam in MODEL_CAMERAS)
    spec = PolicySpec(name="replay", observation_keys=keys, image_size=TRAIN_SIZE)
    input_spec = {"proprio": ((4,), "float32"),
                  **{f"image_{cam}": ((*TRAIN_SIZE, 3), "uint8") for cam in MODEL_CAMERAS},
                  "language_embedding": ((LANGUAGE_DIM,), "float32")}
    settings = runtime_settings.common_settings(
        spec, input_spec, pipe.normalizer, [s.to_json() for s in pipe.statistics], horizon=1)
    record = str(tmp / "eval_observations.npz")
    source = policy_image_source([dataset_dir], MODEL_CAMERAS, [CAMERA_MAP])
    assert source["camera_map"] == CAMERA_MAP
    factory = functools.partial(ReplayRecorder, actions, record, settings, source)
    (result,) = evaluate(factory, [TASK], episodes_per_task=1, seeds=(0,), max_steps=STEPS,
                         num_workers=1, progress=False).results
    assert result.layout == mw.layout_id("eval", 0) and result.steps == STEPS
    with np.load(record) as seen:
        evaluation = {k: np.stack([seen[f"{k}@{t}"][0] for t in range(STEPS)]) for k in keys}
    training = {k: np.asarray(train[k]) for k in keys}
    return training, evaluation, dataset_dir


def test_dataset_records_how_its_frames_were_rendered(frames):
    from atomskill_jax.data.image_source import read_image_source
    from atomskill_jax.envs import metaworld as mw
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    *_, dataset_dir = frames
    source = read_image_source(dataset_dir)
    assert source["cameras"] == list(CAMERAS) and source["image_size"] == list(NATIVE_SIZE)
    assert source["render_settings"] == mw.render_settings(QUALITY).to_json()
    # A build under another quality is a different dataset: not reused silently.
    with pytest.raises(FileExistsError, match="render_quality"):
        mwb.build(os.path.dirname(os.path.dirname(os.path.dirname(dataset_dir))),
                  tasks=TASK, episodes_per_task=1, max_steps=STEPS, only_successful=False,
                  cameras=CAMERAS, image_size=NATIVE_SIZE, render_quality="metaworld",
                  layout_split="eval", show_progress=False)


def test_evaluation_frames_equal_training_frames(frames):
    training, evaluation, _ = frames
    np.testing.assert_allclose(evaluation["proprio"], training["proprio"], atol=1e-5)
    for cam in MODEL_CAMERAS:
        key = f"image_{cam}"
        train, evaluate = training[key], evaluation[key]
        assert train.shape == evaluate.shape == (STEPS, *TRAIN_SIZE, 3), key
        assert train.dtype == evaluate.dtype == np.uint8, key
        assert train.std() > 5 and evaluate.std() > 5, f"{key}: a blank frame"
        diff = np.abs(train.astype(np.int16) - evaluate.astype(np.int16))
        # Same pixels, up to float rounding of the two resizes (measured: <0.2% at 1).
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (
            f"{key}: evaluation frames differ from training frames (max {diff.max()}, "
            f"{100 * (diff > 0).mean():.2f}% of values, mean {diff.mean():.2f})")
        # Not vacuous: the same frames turned by 180 degrees are far apart.
        turned = np.abs(train.astype(np.int16) - evaluate[:, ::-1, ::-1].astype(np.int16))
        assert turned.mean() > 5, key


def test_numpy_resize_is_the_pipelines(frames):
    """The evaluation resize equals TensorFlow's for shrinking and enlarging alike."""
    from atomskill_jax.data.frame_transforms import resize_image
    from atomskill_jax.data.image_resize import resize_uint8
    from atomskill_jax.data.tf_setup import tf

    _, evaluation, _ = frames
    image = evaluation["image_front"][0]
    for size in ((16, 20), (57, 31), (64, 80), TRAIN_SIZE):
        ours = resize_uint8(image, size).astype(np.int16)
        theirs = resize_image(tf.constant(image), size).numpy().astype(np.int16)
        assert ours.shape == theirs.shape == (*size, 3)
        assert np.abs(ours - theirs).max() <= 1 and (ours != theirs).mean() < 0.01, size


def test_rendering_of_older_builds_and_errors():
    """No render_settings recorded (built before they existed): MetaWorld's own scene,
    what those builds used; a camera the data lacks is refused."""
    from atomskill_jax.envs import metaworld as mw
    from atomskill_jax.envs.metaworld_eval import rendering_of
    from atomskill_jax.policies.base import PolicySpec

    spec = PolicySpec(observation_keys=("image_corner",), image_size=(32, 32))
    legacy = {"dataset": "d", "cameras": ["corner"], "image_size": [128, 128],
              "render_settings": None}
    assert rendering_of(spec, legacy) == ((128, 128), mw.RENDER_QUALITIES["metaworld"])
    assert rendering_of(spec, None) == ((32, 32), mw.render_settings(None))
    with pytest.raises(ValueError, match="d: policy .* reads cameras \\['corner'\\]"):
        rendering_of(spec, dict(legacy, cameras=["topview"]))
    # A mapped camera is checked under the name it is rendered by.
    front = PolicySpec(observation_keys=("image_front",), image_size=(32, 32))
    assert rendering_of(front, dict(legacy, camera_map={"front": "corner"}))[0] == (128, 128)
    with pytest.raises(ValueError, match="reads cameras \\['front'\\] \\(rendered as "
                                         "\\['corner'\\]\\)"):
        rendering_of(front, dict(legacy, cameras=["topview"], camera_map={"front": "corner"}))


def test_paper_variant_traces_a_training_step_on_the_image_build(frames):
    """The `paper` config (ResNet-18 on front + wrist at 224 px, the paper's model
    sizes) on this `build-data` dataset, read through its own camera mapping: one
    pipeline batch and a whole skill-stage training step (loss, gradients, AdamW,
    EMA) traced with jax.eval_shape. Only the batch size is changed; compiling the
    step would take ~1 minute on these CPUs (`atomskill train` with this config and
    --config.data.batch_size=2 ran both stages in 3 minutes)."""
    import jax

    from atomskill_jax.data import pipeline
    from atomskill_jax.training import config_flags, mesh as mesh_lib, optimizer, trainer
    from atomskill_jax.training.train_state import create_train_state, make_train_step

    *_, dataset_dir = frames
    config = config_flags.load_config(os.path.join(REPO, "configs/atomskill.py:paper"))
    (entry,) = config.data.datasets
    config.data.datasets = (dict(entry.to_dict() if hasattr(entry, "to_dict") else entry,
                                 name=dataset_dir),)
    config.data.update(batch_size=2, num_parallel_calls=1, prefetch=1,
                       episode_shuffle_buffer=1, example_shuffle_buffer=4)
    pipe = pipeline.make_pipeline(config.data, train=True)
    trainer.fill_model_dims(config, pipe)
    batch = next(iter(pipe.numpy_batches()))
    for cam in ("front", "wrist"):
        assert batch["observation"][f"image_{cam}"].shape == (2, 224, 224, 3)
    batch = pipe.normalizer.normalize(batch)
    tx, schedule = optimizer.make_optimizer(config.optim, 10)
    mesh = mesh_lib.make_mesh()
    graphdef, state, _ = create_train_state(config, "skill", tx, mesh, abstract_only=True)
    step = make_train_step(graphdef, tx, config, "skill", schedule=schedule, ema_decay=0.999)
    new_state, metrics = jax.eval_shape(step, jax.random.key(0), state, batch)
    assert metrics["loss"].shape == () and "keypose_l1" in metrics
    n_params = sum(x.size for x in jax.tree.leaves(new_state.params))
    assert n_params > 20_000_000, n_params  # two ResNet-18s alone hold ~22M
