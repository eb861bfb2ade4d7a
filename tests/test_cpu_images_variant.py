"""The `cpu_images` variants (configs/atomskill.py, configs/mlp.py) on a `build-data`
image dataset: MetaWorld's corner and gripperPOV cameras at 64 px, proprio, no state.

One tiny build (one 6-step episode, both cameras at 64 px). Each variant reads one
pipeline batch of it and traces a whole training step (loss, gradients, AdamW) with
jax.eval_shape; compiling it is what `atomskill train` measures, not this test. The
model's inputs are checked where a broken variant shows: AtomSkill's observation tokens
are 4 per camera (a 2x2 map at 64 px: 128 px would give 16) from two width-8 ResNets
plus one joint proprio+language token (the state's 39 dimensions absent from its
input); the MLP's input is proprio + language + two flattened 2x2x64 maps. Evaluation
renders the same cameras at the build's size (what MetaWorldEvalEnv is given).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.tiny_model import REPO

CAMERAS = ("corner", "gripperPOV")
SIZE = (64, 64)
BATCH = 2


@pytest.fixture(scope="module")
def image_build(tmp_path_factory):
    from atomskill_jax.envs import metaworld as mw

    with mw.RenderingRolloutWorker() as worker:
        ok, why = worker.check()
    if not ok:
        pytest.skip(f"no offscreen GL for MetaWorld: {why}")
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    out = tmp_path_factory.mktemp("cpu_images")
    dataset_dir, _ = mwb.build(str(out), tasks="drawer-close", episodes_per_task=1,
                               max_steps=6, only_successful=False, cameras=CAMERAS,
                               image_size=SIZE, show_progress=False)
    return dataset_dir


def _config_on(path: str, dataset_dir: str):
    from atomskill_jax.training import config_flags

    config = config_flags.load_config(os.path.join(REPO, path))
    (entry,) = config.data.datasets
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
    config.data.datasets = (dict(entry, name=dataset_dir),)
    config.data.update(batch_size=BATCH, num_parallel_calls=1, prefetch=1,
                       episode_shuffle_buffer=1, example_shuffle_buffer=4)
    return config


def _traced_step(config):
    """(normalised batch, traced new state, the step's metrics, graphdef, pipeline)."""
    import jax

    from atomskill_jax.data import pipeline
    from atomskill_jax.training import mesh as mesh_lib, optimizer, trainer
    from atomskill_jax.training.train_state import create_train_state, make_train_step

    pipe = pipeline.make_pipeline(config.data, train=True)
    trainer.fill_model_dims(config, pipe)
    batch = pipe.normalizer.normalize(next(iter(pipe.numpy_batches())))
    tx, schedule = optimizer.make_optimizer(config.optim, 10)
    graphdef, state, _ = create_train_state(config, "skill", tx, mesh_lib.make_mesh(),
                                            abstract_only=True)
    step = make_train_step(graphdef, tx, config, "skill", schedule=schedule, ema_decay=0.999)
    new_state, metrics = jax.eval_shape(step, jax.random.key(0), state, batch)
    assert metrics["loss"].shape == ()
    return batch, new_state, metrics, graphdef, pipe


def _abstract_model(graphdef, state):
    """The traced model: its structure with ShapeDtypeStruct values, for shape checks."""
    from flax import nnx

    return nnx.merge(graphdef, state.params, state.frozen, state.rest)


def _abstract_call(graphdef, state, fn, *args):
    """fn(model, *args) traced on the abstract state (shapes only)."""
    import jax
    from flax import nnx

    def call(params, frozen, rest, *args):
        return fn(nnx.merge(graphdef, params, frozen, rest), *args)

    return jax.eval_shape(call, state.params, state.frozen, state.rest, *args)


def _check_inputs_and_rendering(config, batch, pipe, dataset_dir, input_spec):
    from atomskill_jax.data.dataset_entries import parse_entries
    from atomskill_jax.data.image_source import policy_image_source
    from atomskill_jax.envs.metaworld_eval import camera_map_of, rendering_of
    from atomskill_jax.policies.base import PolicySpec

    obs = batch["observation"]
    assert "state" not in obs and int(config.model.state_dim) == 0
    for cam in CAMERAS:
        assert obs[f"image_{cam}"].shape == (BATCH, *SIZE, 3), cam
        assert obs[f"image_{cam}"].dtype == np.uint8, cam
    assert obs["proprio"].shape == (BATCH, pipe.sources[0].proprio_dim)
    # The policy asks evaluation for these keys; the loader's image source (the
    # dataset's build options, through the entry's camera mapping: none here) makes
    # MetaWorldEvalEnv render MetaWorld's own cameras at the build's size.
    keys = tuple(input_spec)
    assert {f"image_{c}" for c in CAMERAS} <= set(keys) and "state" not in keys
    source = policy_image_source([dataset_dir], CAMERAS,
                                 [dict(e.cameras) for e in parse_entries(config.data)])
    spec = PolicySpec(observation_keys=keys, image_size=tuple(config.data.image_size))
    assert camera_map_of(spec, source) == {c: c for c in CAMERAS}
    native, _ = rendering_of(spec, source)
    assert native == SIZE and spec.image_size == SIZE


def test_atomskill_cpu_images_traces_a_step_on_two_64px_cameras_without_state(image_build):
    import jax
    from flax import nnx

    from atomskill_jax.methods.atomskill import spec as atomskill_spec

    config = _config_on("configs/atomskill.py:cpu_images", image_build)
    assert tuple(config.data.cameras) == CAMERAS and not config.data.use_state
    batch, new_state, metrics, graphdef, pipe = _traced_step(config)
    assert "keypose_l1" in metrics
    _check_inputs_and_rendering(config, batch, pipe, image_build,
                                atomskill_spec.input_spec(config))

    # The observation tokens of the traced model: 2 cameras x 2x2 cells + joint + language.
    encoder = _abstract_model(graphdef, new_state).obs_encoder
    assert encoder.cameras == CAMERAS and not encoder.use_state
    lang = batch["language_embedding"]
    tokens = _abstract_call(graphdef, new_state, lambda m, o, l: m.obs_encoder(o, l),
                            batch["observation"], lang)
    assert tokens.shape == (BATCH, len(CAMERAS) * 2 * 2 + 2, int(config.model.d_model))
    # The joint token reads proprio + language only (a state would add 39 inputs).
    joint_in = encoder.joint_mlp.layers[0].kernel.shape[0]
    assert joint_in == batch["observation"]["proprio"].shape[-1] + lang.shape[-1]
    # Two separate small ResNets (stem width 8, 4 stages of one block), ~78k each.
    assert len(encoder.image_tokenizers) == len(CAMERAS)
    for tokenizer in encoder.image_tokenizers:
        net = tokenizer.backbone
        assert net.stem.kernel.shape == (7, 7, 3, 8) and len(net.blocks) == 4
        n = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
        assert 50_000 < n < 100_000, n


def test_calibration_of_an_image_build_leaves_the_images_encoded(image_build, monkeypatch):
    """The ε rule reads action_abs, keypose and skill_segment only. Decoding the camera
    images as well took 26 s an episode on a 2-camera 64 px rlbench6 build (an hour at
    the end of training); the rule's numbers are those of the episodes read by hand."""
    import tensorflow_datasets as tfds

    from atomskill_jax.data import sources
    from atomskill_jax.methods.atomskill import calibration
    from atomskill_jax.training.trainer import config_json

    config = _config_on("configs/atomskill.py:cpu_images", image_build)
    pipe = _traced_step(config)[4]
    stats = [s.to_json() for s in pipe.statistics]

    def refuse(*args, **kwargs):
        raise AssertionError("calibration decoded a camera image")

    monkeypatch.setattr(tfds.features.Image, "decode_example", refuse)
    monkeypatch.setattr(tfds.features.Image, "decode_batch_example", refuse, raising=False)
    out = calibration.compute_calibration([image_build], config_json(config), stats, "train")
    monkeypatch.undo()

    source = sources.open_source(image_build)
    (episode,) = tfds.as_numpy(source.builder.as_dataset(split="train"))
    steps = list(episode["steps"])
    fields = {k: np.stack([st[k] for st in steps])
              for k in ("action_abs", "keypose", "skill_segment")}
    assert steps[0]["observation"]["image_corner"].shape == SIZE + (3,)
    norm = lambda x: pipe.normalizer.normalize({"keypose": x})["keypose"]  # noqa: E731
    dims = config.model.decoder.get("trigger_dims")
    by_hand = calibration.epsilon_from_episodes([fields], norm, dims=dims, cap_quantile=float(
        config.model.decoder.get("skill_cap_quantile", 100.0)))
    assert out["epsilon"] == pytest.approx(by_hand["epsilon"], rel=1e-6)
    assert out["max_skill_steps"] == by_hand["max_skill_steps"]
    assert out["num_segments"] == by_hand["num_segments"] >= 1


def test_mlp_cpu_images_traces_a_step_on_the_same_images(image_build):
    from atomskill_jax.methods.mlp import spec as mlp_spec

    config = _config_on("configs/mlp.py:cpu_images", image_build)
    assert config.method == "mlp" and tuple(config.data.cameras) == CAMERAS
    batch, new_state, metrics, graphdef, pipe = _traced_step(config)
    _check_inputs_and_rendering(config, batch, pipe, image_build, mlp_spec.input_spec(config))
    model = _abstract_model(graphdef, new_state)
    # Input: proprio + language + 2 cameras x (2 x 2 cells x 64 channels).
    low_dim = batch["observation"]["proprio"].shape[-1] + batch["language_embedding"].shape[-1]
    assert model.net.layers[0].kernel.shape[0] == low_dim + len(CAMERAS) * 2 * 2 * 64
    chunk = _abstract_call(graphdef, new_state, lambda m, o, l: m.predict_actions(o, l)[0],
                           batch["observation"], batch["language_embedding"])
    assert chunk.shape == (BATCH, int(config.model.horizon), int(config.model.action_dim))


def test_mlp_chunk_depends_on_each_camera():
    """The MLP reads every camera, not only their shapes: changing either camera's image
    changes the chunk (a model reading one camera twice fails)."""
    from flax import nnx

    from atomskill_jax.methods.mlp import model as mlp_model
    from configs import mlp as mlp_configs

    c = mlp_configs.get_config("tiny").model
    c.update(action_dim=4, proprio_dim=4, state_dim=0, cameras=CAMERAS, image_size=(32, 32))
    c.observation.resnet_stage_sizes = (1, 1)
    model = mlp_model.MLPPolicy(c, rngs=nnx.Rngs(0))
    batch = mlp_model.fake_batch(c, 2)
    predict = nnx.jit(lambda m, o, l: m.predict_actions(o, l)[0])
    base = np.asarray(predict(model, batch["observation"], batch["language_embedding"]))
    for cam in CAMERAS:
        obs = dict(batch["observation"])
        obs[f"image_{cam}"] = 255 - obs[f"image_{cam}"]
        moved = np.asarray(predict(model, obs, batch["language_embedding"]))
        assert np.abs(moved - base).max() > 1e-4, cam
    # Images of another size are refused by name, not by a matmul shape error.
    obs = dict(batch["observation"], image_corner=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="image_corner: images of shape .* model.image_size"):
        predict(model, obs, batch["language_embedding"])
