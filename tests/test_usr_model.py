"""USR Stage I: shapes, and the alternating schedule's gradients (methods/usr/model.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods import registry
from configs.usr import get_config

SPEC = registry.spec_by_name("usr")


def tiny(**model):
    c = get_config("tiny")
    c.model.update(model)
    return c


def as_jax(batch):
    return jax.tree.map(jnp.asarray, batch)


def test_fake_batch_matches_input_spec_and_shapes():
    c = tiny()
    batch = SPEC.fake_batch(c, 6)
    L, H = int(c.model.history), int(c.model.horizon)
    for key, (shape, dtype) in SPEC.input_spec(c).items():
        if key == "language_embedding":
            assert batch[key].shape == (6, *shape)
            continue
        assert batch["observation"][key].shape == (6, *shape)
        assert batch["observation_future"][key].shape == (6, *shape)
        assert batch["observation_history"][key].shape == (6, L, *shape)
        assert batch["observation"][key].dtype == np.dtype(dtype)
    assert batch["action_chunk"].shape == (6, H, 4)
    assert batch["action_chunk_mask"].shape == (6, H)
    assert batch["dataset_index"].dtype == np.int32
    # the current frame is the newest of the history
    np.testing.assert_array_equal(batch["observation"]["state"], batch["observation_history"]["state"][:, -1])


def test_stage1_shapes():
    c = tiny()
    model = SPEC.create(c, nnx.Rngs(0))
    batch = as_jax(SPEC.fake_batch(c, 4))
    graphdef, state = nnx.split(model)

    def shapes(state, batch):  # traced only (jax.eval_shape): no compilation
        s1 = nnx.merge(graphdef, state).stage1
        f = s1.task(batch["observation"], batch["language_embedding"])
        x, _ = s1.vl_latent(batch)
        z, idx = s1.code(batch)
        mean, codes = nnx.merge(graphdef, state).predict(batch["observation_history"],
                                                          batch["language_embedding"])
        return f, x, s1.act(batch["action_chunk"]), z, idx, s1.decoder(z, f), mean, codes

    f, x, xa, z, idx, chunk, mean, codes = jax.eval_shape(shapes, state, batch)
    d, h = int(c.model.dim), int(c.model.horizon)
    assert f.shape == (4, int(c.model.fusion_queries), d)
    assert x.shape == xa.shape == z.shape == (4, d) and idx.shape == (4,)
    assert chunk.shape == mean.shape == (4, h, 4) and codes.shape == (4,)


def test_stages_and_hook():
    c = tiny()
    stages = SPEC.stages(c)
    assert [s.name for s in stages] == ["pretrain", "adapt"]
    assert stages[1].starts_from == "pretrain"
    (hook,) = stages[0].hooks
    assert hook.name == "replace_unused" and hook.every == int(c.train.replace_unused_every)
    model = SPEC.create(c, nnx.Rngs(0))
    metrics = hook.fn(model, jax.random.key(1))
    assert isinstance(dict(metrics), dict)


GROUPS = ("task", "trans", "act", "codebook", "decoder")


def gradient_fn(c):
    """(step -> (metrics, grads of every Param)) of the pretrain loss; the step is traced,
    so one compilation serves every step, as in the trainer."""
    model = SPEC.create(c, nnx.Rngs(0))
    batch = SPEC.fake_batch(c, 8)
    # MetaWorld tasks with one object have a constant second object pose, 0 once
    # normalised: its token must still give finite gradients.
    for group in ("observation", "observation_future", "observation_history"):
        batch[group]["state"][..., 11:18] = 0.0
    batch = as_jax(batch)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, s):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return SPEC.compute_loss(m, jax.random.key(3), batch, stage="pretrain", step=s,
                                 train=True)

    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return lambda step: fn(params, jnp.int32(step))


def group_grad_norms(fn, step: int):
    """{Stage I module: gradient norm} at `step`."""
    (value, metrics), grads = fn(step)
    norms = {g: 0.0 for g in GROUPS}
    stage2 = 0.0
    for path, var in nnx.to_flat_state(grads):
        assert np.isfinite(np.asarray(var.get_value())).all(), path
        sq = float(jnp.sum(jnp.square(var.get_value())))
        if path[0] == "stage1":
            norms[path[1]] += sq
        else:
            stage2 += sq
    assert stage2 == 0.0  # Stage II is not part of the Stage I loss
    return {k: v ** 0.5 for k, v in norms.items()}, metrics


def test_alternating_schedule_gradients():
    alternate = (2, 3)  # steps 0-1 vl, 2-4 act, 5 vl again
    c = tiny(alternate=alternate)
    n_vl, n_act = alternate
    fn = gradient_fn(c)
    for step in range(n_vl + n_act + 1):
        vl = step % (n_vl + n_act) < n_vl
        norms, metrics = group_grad_norms(fn, step)
        assert float(metrics["vl_step"]) == float(vl), step
        # Shared by both pathways: the codebook and the decoder always learn.
        assert norms["codebook"] > 0 and norms["decoder"] > 0, (step, norms)
        if vl:
            assert norms["task"] > 0 and norms["trans"] > 0, (step, norms)
            assert norms["act"] == 0.0, (step, norms)
            assert float(metrics["recon_act"]) == 0.0
        else:
            assert norms["act"] > 0, (step, norms)
            assert norms["task"] == 0.0 and norms["trans"] == 0.0, (step, norms)
            assert float(metrics["recon_vl"]) == 0.0


def test_schedule_needs_a_pathway():
    with pytest.raises(ValueError, match="alternate"):
        SPEC.create(tiny(alternate=(0, 0)), nnx.Rngs(0))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="scene_encoder"):
        SPEC.create(tiny(scene_encoder="lidar"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="policy_condition"):
        SPEC.create(tiny(policy_condition="both"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="cameras"):
        SPEC.create(tiny(scene_encoder="resnet"), nnx.Rngs(0))


def test_resnet_scene_encoder_tokens():
    c = tiny(scene_encoder="resnet")
    c.data.cameras, c.data.image_size = ("corner",), (16, 16)  # 4 x 4 tokens (stride 4)
    model = SPEC.create(c, nnx.Rngs(0))
    assert model.stage1.task.scene.num_tokens == 16
    batch = as_jax(SPEC.fake_batch(c, 2))
    assert batch["observation_history"]["image_corner"].shape == (2, 3, 16, 16, 3)
    graphdef, state = nnx.split(model)
    for stage in ("pretrain", "adapt"):
        loss, _ = jax.eval_shape(lambda st, b: SPEC.compute_loss(
            nnx.merge(graphdef, st), jax.random.key(0), b, stage=stage, step=jnp.int32(0),
            train=True), state, batch)
        assert loss.shape == ()


def test_clip_scene_encoder_is_frozen_in_every_stage():
    import os

    c = tiny(scene_encoder="clip", clip_dir=os.path.join(os.path.dirname(__file__), "fixtures",
                                                           "tiny_clip"))
    c.data.cameras, c.data.image_size = ("corner",), (32, 32)
    model = SPEC.create(c, nnx.Rngs(0))
    assert model.stage1.task.scene.num_tokens == 16  # (32 / 8)^2 patches of the fixture
    clip_paths = {p for p, _ in nnx.to_flat_state(nnx.state(model.clip, nnx.Param))}
    assert clip_paths
    for stage in SPEC.stages(c):
        trained = {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param,
                                                                           stage.trainable)))}
        assert trained and not any(p[0] == "clip" for p in trained), stage.name
    batch = as_jax(SPEC.fake_batch(c, 2))
    graphdef, state = nnx.split(model)
    for stage in ("pretrain", "adapt"):
        loss, _ = jax.eval_shape(lambda st, b: SPEC.compute_loss(
            nnx.merge(graphdef, st), jax.random.key(0), b, stage=stage, step=jnp.int32(0),
            train=True), state, batch)
        assert loss.shape == ()
