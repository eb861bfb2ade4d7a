"""Contrastive and VQ losses and the codebook state, pinned where mutation testing
(bench/mutation.py contrastive vector_quantizer) found changes nothing else noticed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.models import vector_quantizer as vq
from atomskill_jax.methods.atomskill.config import tiny_model_config


def _quantizer(d=2, codes=4, buffer=6, decay=0.0, dead=0.5, commitment=0.25):
    config = tiny_model_config()
    config.d_model = d
    config.vq.update(codebook_size=codes, recent_buffer_size=buffer, usage_decay=decay,
                     dead_usage_fraction=dead, commitment=commitment)
    return vq.VectorQuantizer(config, rngs=nnx.Rngs(0))


@nnx.jit
def _train_call(quantizer, z_e):
    """One compiled call (eager dispatch of each small op is slow on a loaded machine)."""
    out = quantizer(z_e, update_state=True)
    return out.indices, out.loss, out.metrics


# -- codebook state -------------------------------------------------------------------
def test_fresh_state_is_uniform_usage_and_an_empty_buffer():
    # A resumed run restores this state; a fresh one must start from exactly it.
    q = _quantizer(d=3, codes=5, buffer=7)
    assert q.codebook[...].shape == (5, 3)
    np.testing.assert_array_equal(q.usage[...], np.full(5, 0.2, np.float32))
    np.testing.assert_array_equal(q.recent[...], np.zeros((7, 3)))
    assert int(q.num_recent[...]) == 0 and int(q.write_position[...]) == 0
    # Restored from a checkpoint into these: counters stay integers.
    assert q.num_recent[...].dtype == jnp.int32 and q.write_position[...].dtype == jnp.int32


def test_usage_is_an_ema_of_each_batch_share():
    q = _quantizer(decay=0.9)
    q.codebook[...] = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    z_e = jnp.array([[0.1, 0.0], [0.0, 0.2], [9.0, 1.0], [0.2, 0.2]])  # codes 0, 0, 1, 0
    _train_call(q, z_e)
    share = np.array([0.75, 0.25, 0.0, 0.0])
    first = 0.9 * 0.25 + 0.1 * share
    np.testing.assert_allclose(q.usage[...], first, rtol=1e-6)
    _train_call(q, z_e)
    np.testing.assert_allclose(q.usage[...], 0.9 * first + 0.1 * share, rtol=1e-6)


def test_a_batch_larger_than_the_buffer_keeps_its_last_rows():
    q = _quantizer(buffer=3)
    z_e = jnp.arange(10.0).reshape(5, 2)
    _train_call(q, z_e)
    np.testing.assert_array_equal(q.recent[...], z_e[-3:])
    assert int(q.num_recent[...]) == 3 and int(q.write_position[...]) == 0
    _train_call(q, z_e[:2] + 100)  # then the ring wraps from the write position
    np.testing.assert_array_equal(q.recent[...], [[100, 101], [102, 103], z_e[-1]])
    assert int(q.write_position[...]) == 2


# -- contrastive ----------------------------------------------------------------------
from atomskill_jax.methods.atomskill import contrastive  # noqa: E402


def test_small_embeddings_are_normalised_too():
    # Encoder outputs can have norms well below 1: the loss sees directions only.
    z = jax.random.normal(jax.random.key(3), (6, 4))
    positives = jnp.asarray(np.eye(6, k=1, dtype=bool) | np.eye(6, k=-1, dtype=bool))
    loss, _ = contrastive.supervised_contrastive(z, positives, 0.1)
    small, _ = contrastive.supervised_contrastive(1e-3 * z, positives, 0.1)
    assert float(small) == pytest.approx(float(loss), rel=1e-5)


def test_a_single_anchor_is_averaged_over_itself_only():
    # Positives need not be symmetric: one anchor with two positives, three without.
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]], np.float32)
    positives = np.zeros((4, 4), bool)
    positives[0, [1, 2]] = True
    loss, m = contrastive.supervised_contrastive(jnp.asarray(z), jnp.asarray(positives), 0.5)
    sim = z @ z.T / 0.5
    log_denominator = np.log(np.exp(sim[0, 1:]).sum())
    want = -np.mean([sim[0, 1] - log_denominator, sim[0, 2] - log_denominator])
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["anchor_fraction"]) == pytest.approx(0.25)
    assert float(m["mean_positives"]) == pytest.approx(2.0)


def test_loss_metrics_carry_the_values_the_logs_name():
    z = jax.random.normal(jax.random.key(4), (3, 2, 4))
    indices, labels = jnp.array([[0, 1], [0, 1], [1, 1]]), jnp.array([0, 0, 1])
    total, m = contrastive.contrastive_loss(z, indices, labels)
    assert float(m["contrastive"]) == float(total)
    assert float(total) == pytest.approx(
        float(m["contrastive_temporal"]) + float(m["contrastive_semantic"]), rel=1e-6)
    loss, m = vq.vq_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 1.0]]), 0.5)
    assert float(m["vq_commitment"]) == pytest.approx(1.0)  # mean of (1, 1)
    assert float(loss) == pytest.approx(1.0 + 0.5 * 1.0)


def test_quantized_codes_are_the_nearest_code_vectors():
    q = _quantizer()
    q.codebook[...] = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    out = q(jnp.array([[9.0, 1.0], [1.0, 8.0]]))
    np.testing.assert_array_equal(out.indices, [1, 2])
    np.testing.assert_array_equal(out.codes, [[10.0, 0.0], [0.0, 10.0]])
    want, _ = vq.vq_loss(jnp.array([[9.0, 1.0], [1.0, 8.0]]), out.codes, 0.25)
    assert float(out.loss) == pytest.approx(float(want))  # the loss the model adds up


def test_nearest_is_by_squared_distance_not_a_scaled_dot_product():
    # 0.4 is nearer 0 than 1; -3 z.c + |c|^2 (a wrong weight) would pick code 1.
    codebook = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(vq.nearest_codes(jnp.array([[0.4, 0.0], [0.6, 0.0]]),
                                                   codebook), [0, 1])


def test_dead_means_usage_strictly_below_the_threshold():
    # Threshold 0.5 / 4 = 0.125, exactly representable: a code at it is alive.
    mask = vq.dead_code_mask(jnp.array([0.125, 0.1, 0.5, 0.275]), 0.5)
    np.testing.assert_array_equal(mask, [False, True, False, False])


def test_contrastive_is_computed_in_float32_from_bfloat16_embeddings():
    # A bfloat16 encoder still gets a float32 loss (logsumexp over 1/τ-scaled logits in
    # bfloat16 would be off by about 1e-2).
    z = jax.random.normal(jax.random.key(5), (8, 16)).astype(jnp.bfloat16)
    positives = jnp.asarray(np.eye(8, k=2, dtype=bool) | np.eye(8, k=-2, dtype=bool))
    loss, _ = contrastive.supervised_contrastive(z, positives, 0.1)
    want, _ = contrastive.supervised_contrastive(z.astype(jnp.float32), positives, 0.1)
    assert loss.dtype == jnp.float32
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def test_mean_positives_over_several_anchors():
    z = jax.random.normal(jax.random.key(6), (5, 3))
    positives = np.zeros((5, 5), bool)
    positives[0, [1, 2, 3]] = positives[1, 0] = True  # anchors 0 (3 positives) and 1 (1)
    _, m = contrastive.supervised_contrastive(z, jnp.asarray(positives), 0.1)
    assert float(m["mean_positives"]) == pytest.approx(2.0)
    assert float(m["anchor_fraction"]) == pytest.approx(0.4)


# -- dead-code re-seeding and stateless quantisation ------------------------------------
def test_reseeding_draws_every_filled_row_and_distinct_small_noise():
    # 32 dead codes, 3 of 8 buffer rows filled (row i is (100 i, 0)), d=2 < filled rows.
    recent = jnp.zeros((8, 2)).at[:3, 0].set(jnp.array([0.0, 100.0, 200.0]))
    codebook = jnp.full((32, 2), 7.0)
    new, usage, n = vq.reinit_dead_codes(codebook, jnp.zeros(32), recent, jnp.int32(3),
                                         jax.random.key(0), dead_usage_fraction=0.5)
    new = np.asarray(new)
    assert int(n) == 32
    rows = np.round(new[:, 0] / 100).astype(int)
    assert set(rows.tolist()) == {0, 1, 2}  # rows 0..num_recent-1, and only those
    np.testing.assert_array_less(np.abs(new - np.asarray(recent)[rows]), 1e-2)
    assert len(np.unique(new, axis=0)) == 32  # codes from one row still differ
    np.testing.assert_allclose(usage, 1 / 32)
    # A single filled row is enough to re-seed.
    one, _, n = vq.reinit_dead_codes(codebook, jnp.zeros(32), recent, jnp.int32(1),
                                     jax.random.key(1), dead_usage_fraction=0.5)
    assert int(n) == 32
    np.testing.assert_array_less(np.abs(np.asarray(one)), 1e-2)


def test_quantize_snaps_to_the_nearest_codes_without_touching_state():
    # What the sampler's generated tokens go through before the decoder sees them.
    q = _quantizer()
    q.codebook[...] = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    usage = np.asarray(q.usage[...])
    codes, indices = q.quantize(jnp.array([[[9.0, 1.0], [-7.0, 2.0]], [[1.0, 8.0], [0.5, 0.5]]]))
    np.testing.assert_array_equal(indices, [[1, 3], [2, 0]])
    np.testing.assert_array_equal(codes, [[[10, 0], [-10, 0]], [[0, 10], [0, 0]]])
    assert codes.dtype == jnp.float32 and indices.dtype == jnp.int32
    np.testing.assert_array_equal(q.usage[...], usage)
    assert int(q.num_recent[...]) == 0


def test_usage_share_of_a_single_vector_is_all_of_it():
    q = _quantizer(decay=0.5)
    q.codebook[...] = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    _train_call(q, jnp.array([[9.0, 0.0]]))
    np.testing.assert_allclose(q.usage[...], [0.125, 0.625, 0.125, 0.125], rtol=1e-6)
