"""The assembled AtomSkill model on a tiny config: loss terms and masks, stages and
frozen parts, sampling onto the codebook, ablation switches, bf16, sharding metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch, trainable_filter
from atomskill_jax.methods.atomskill.config import default_model_config, tiny_model_config
from atomskill_jax.models.vector_quantizer import CodebookState

B = 4


@pytest.fixture(scope="module")
def config():
    return tiny_model_config()


@pytest.fixture(scope="module")
def model(config):
    return AtomSkill(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch(config):
    return fake_batch(config, B)


@nnx.jit(static_argnames=("train", "stage"))
def _jitted_loss(model, rng, batch, train, stage):
    return model.compute_loss(rng, batch, train=train, stage=stage)


@nnx.jit(static_argnames=("num_steps", "guidance"))
def _sample_and_act(model, rng, batch, num_steps, guidance, label_id=None):
    tokens = model.sample_skill(rng, batch["observation"], batch["language_embedding"], num_steps,
                                guidance, label_id=label_id)
    chunk, keypose = model.predict_actions(batch["observation"], batch["language_embedding"], tokens)
    return tokens, chunk, keypose, model.encode_skill(batch)


def _loss(model, batch, *, train=True, stage="skill", seed=0):
    # jit: one compile per model structure, far cheaper than compiling op by op.
    return _jitted_loss(model, jax.random.key(seed), batch, train, stage)


def test_fake_batch_structure(config, batch):
    assert batch["observation"]["image_front"].shape == (B, 32, 32, 3)
    assert batch["observation"]["image_front"].dtype == np.uint8
    assert batch["observation"]["state"].shape == (B, config.state_dim)
    assert batch["action_chunk"].shape == (B, config.horizon, config.action_dim)
    assert batch["skill"]["actions"].shape == (B, config.skill_length, config.action_dim)
    assert batch["skill"]["uid"].dtype == np.int64
    assert not batch["action_chunk_mask"].all()  # some chunks run past the episode end
    other = fake_batch(config, 2, action_dim=3, cameras=(), state_dim=0)
    assert other["keypose"].shape == (2, 3) and set(other["observation"]) == {"proprio"}


def test_skill_loss_terms_weights_and_padding_mask(model, batch, config):
    loss, m = _loss(model, batch)
    for key in ("vq", "action_l1", "keypose_l1", "contrastive_temporal", "contrastive_semantic",
                "perplexity", "dead_codes", "codebook_usage", "batch_dead_codes"):
        assert key in m and np.isfinite(float(m[key])), key
    w = config.loss_weights
    expected = (w.vq * m["vq"] + w.action * m["action_l1"] + w.keypose * m["keypose_l1"]
                + w.contrastive * (m["contrastive_temporal"] + m["contrastive_semantic"]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(m["temporal_anchor_fraction"]) > 0  # pairs of examples share a segment

    padded = {**batch, "action_chunk": np.where(batch["action_chunk_mask"][..., None],
                                                batch["action_chunk"], 1e3).astype(np.float32)}
    loss_padded, _ = _loss(model, padded)
    assert float(loss_padded) == pytest.approx(float(loss), rel=1e-6)


def test_codebook_state_changes_in_skill_training_only(config, batch):
    model = AtomSkill(config, rngs=nnx.Rngs(1))
    state_before = jax.tree.map(np.asarray, nnx.state(model, CodebookState))
    _loss(model, batch, stage="sampler")  # the frozen skill space keeps its statistics
    unchanged = jax.tree.map(np.asarray, nnx.state(model, CodebookState))
    jax.tree.map(np.testing.assert_array_equal, state_before, unchanged)
    _loss(model, batch, stage="skill")
    assert int(model.vq.num_recent[...]) == B * config.skill_encoder.num_tokens
    assert float(jnp.sum(model.vq.usage[...])) == pytest.approx(1.0, rel=1e-5)
    assert "codes_reinitialised" in model.reinit_dead_codes(jax.random.key(0))


def test_stage_gradients_follow_the_trainable_filters(config):
    c = config.copy_and_resolve_references()
    c.cameras = ()  # a smaller graph to differentiate; images are covered by the loss tests
    model = AtomSkill(c, rngs=nnx.Rngs(2))
    batch = fake_batch(c, B)

    @nnx.jit
    def sampler_grads(model, batch):
        loss = lambda m: m.compute_loss(jax.random.key(0), batch, train=True, stage="sampler")[0]  # noqa: E731
        return nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(model)

    # (The skill stage's straight-through path is checked in test_model_components.)
    by_part = {}
    for path, value in nnx.to_flat_state(sampler_grads(model, batch)):
        by_part[path[0]] = by_part.get(path[0], 0.0) + float(jnp.sum(jnp.abs(value[...])))
    for part in ("obs_encoder", "skill_encoder", "vq", "decoder"):
        assert by_part[part] == 0.0, part  # frozen skill space
    assert by_part["sampler"] > 0

    trainable = nnx.state(model, trainable_filter("sampler"))
    assert set(trainable.keys()) == {"sampler"}
    assert "sampler" not in nnx.state(model, trainable_filter("skill")).keys()


def test_sampler_loss_terms(model, batch):
    loss, m = _loss(model, batch, stage="sampler", train=True)
    assert {"diffusion_mse", "label_ce", "label_accuracy", "loss"} <= set(m)
    assert np.isfinite(float(loss))


def test_ddim_samples_lie_on_codebook_vectors(model, batch, config):
    # Shapes and the snap only: the snap holds whatever the sampler computes. The sampler
    # itself (DDIM values, guidance, labels, un-standardisation) is checked exactly in
    # tests/test_model_sampler_{ddim,loss,labels,skill}.py.
    tokens, chunk, keypose, (encoded, indices) = _sample_and_act(
        model, jax.random.key(3), batch, 3, 3.0)  # with classifier-free guidance
    n, d = config.skill_encoder.num_tokens, config.d_model
    assert tokens.shape == (B, n, d)
    codebook = np.asarray(model.vq.codebook[...])
    flat = np.asarray(tokens).reshape(-1, d)
    assert all((codebook == row).all(axis=1).any() for row in flat)  # exact code rows
    assert chunk.shape == (B, config.horizon, config.action_dim)
    assert keypose.shape == (B, config.action_dim)
    assert encoded.shape == (B, n, d) and indices.shape == (B, n)


def test_sampling_with_given_labels_without_guidance(model, batch, config):
    tokens, *_ = _sample_and_act(model, jax.random.key(3), batch, 3, 1.0,
                                 label_id=jnp.array([0, 1, 2, 3]))
    assert tokens.shape == (B, config.skill_encoder.num_tokens, config.d_model)
    codebook = np.asarray(model.vq.codebook[...])
    flat = np.asarray(tokens).reshape(-1, config.d_model)
    assert all((codebook == row).all(axis=1).any() for row in flat)


def test_no_skill_conditioning_is_an_act_like_graph(config, batch):
    c = config.copy_and_resolve_references()
    c.decoder.skill_conditioning = False
    model = AtomSkill(c, rngs=nnx.Rngs(0))
    assert model.skill_encoder is None and model.vq is None and model.sampler is None
    assert all(layer.cross_attn is None for layer in model.decoder.fusion_layers)
    loss, m = _loss(model, batch)
    assert "vq" not in m and "contrastive" not in m and np.isfinite(float(loss))
    chunk, _ = nnx.eval_shape(lambda m: m.predict_actions(batch["observation"],
                                                          batch["language_embedding"]), model)
    assert chunk.shape == (B, c.horizon, c.action_dim)
    with pytest.raises(ValueError, match="skill_conditioning"):
        model.sample_skill(jax.random.key(0), batch["observation"], batch["language_embedding"])


def test_keypose_switch_removes_query_and_head(config, batch):
    c = config.copy_and_resolve_references()
    c.decoder.predict_keypose = False
    model = AtomSkill(c, rngs=nnx.Rngs(0))
    assert model.decoder.keypose_head is None
    loss, m = _loss(model, batch)
    assert "keypose_l1" not in m
    moved = {**batch, "keypose": batch["keypose"] + 100.0}
    assert float(_loss(model, moved)[0]) == pytest.approx(float(loss), rel=1e-6)
    chunk, keypose = nnx.eval_shape(lambda m: m.predict_actions(
        batch["observation"], batch["language_embedding"], m.encode_skill(batch)[0]), model)
    assert keypose is None and chunk.shape == (B, c.horizon, c.action_dim)


def test_bfloat16_compute_keeps_float32_params(config, batch):
    c = config.copy_and_resolve_references()
    c.dtype = "bfloat16"
    c.dropout = 0.1  # also runs the dropout sites once
    model = AtomSkill(c, rngs=nnx.Rngs(0))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    loss, m = _loss(model, batch)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))


def test_sharding_metadata_names_fsdp_on_divisible_axes(model):
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    flat = nnx.to_flat_state(specs)
    values = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    sharded = 0
    for path, spec in flat:
        spec = spec.get_value() if hasattr(spec, "get_value") else spec
        for axis, name in enumerate(spec):
            if name is not None:
                assert name == "fsdp"
                assert values[path].shape[axis] % 8 == 0, path  # tiny widths are multiples of 8
                sharded += 1
    assert sharded > 20


def test_default_config_sizes():
    c = default_model_config()
    assert (c.d_model, c.num_heads, c.skill_encoder.num_tokens, c.vq.codebook_size) == (256, 8, 8, 32)
    assert (c.skill_encoder.num_layers, c.decoder.fusion_layers, c.decoder.action_layers) == (6, 7, 7)
    assert (c.horizon, c.vq.commitment, c.contrastive.temperature) == (32, 0.25, 0.1)
    assert (c.loss_weights.action, c.loss_weights.contrastive) == (1.0, 1e-2)
