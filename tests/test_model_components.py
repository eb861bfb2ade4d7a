"""AtomSkill model components as pure functions: VQ, contrastive losses, action losses,
diffusion schedules. Hand-computed expectations on tiny inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill import contrastive
from atomskill_jax.models import vector_quantizer as vq
from atomskill_jax.models.chunk_losses import action_l1, keypose_l1
from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.models.diffusion import beta_schedule, ddim_timesteps


# -- vector quantiser -----------------------------------------------------------------
def test_nearest_codes_by_l2():
    codebook = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    z = jnp.array([[0.1, 0.1], [0.9, -0.2], [0.0, 2.0], [0.6, 0.0]])
    np.testing.assert_array_equal(vq.nearest_codes(z, codebook), [0, 1, 2, 1])


def test_straight_through_gradient_equals_gradient_wrt_quantised():
    codebook = jax.random.normal(jax.random.key(0), (8, 4))
    z_e = jax.random.normal(jax.random.key(1), (3, 4))
    weights = jax.random.normal(jax.random.key(2), (3, 4))
    downstream = lambda x: jnp.sum(jnp.sin(x) * weights)  # noqa: E731

    def through_st(z):
        z_q = codebook[vq.nearest_codes(z, codebook)]
        return downstream(z + jax.lax.stop_gradient(z_q - z))

    z_q = codebook[vq.nearest_codes(z_e, codebook)]
    np.testing.assert_allclose(jax.grad(through_st)(z_e), jax.grad(downstream)(z_q), rtol=1e-6)
    # The module's straight-through output carries the quantised value.
    config = tiny_model_config()
    config.d_model = 4
    config.vq.codebook_size = 8
    quantizer = vq.VectorQuantizer(config, rngs=nnx.Rngs(0))
    quantizer.codebook[...] = codebook
    out = quantizer(z_e)
    np.testing.assert_allclose(out.straight_through, z_q, atol=1e-6)
    grad_module = jax.grad(lambda z: downstream(quantizer(z).straight_through))(z_e)
    np.testing.assert_allclose(grad_module, jax.grad(downstream)(z_q), rtol=1e-6)


def test_vq_loss_terms_and_their_gradients():
    z_e = jnp.array([[1.0, 2.0]])
    z_q = jnp.array([[0.0, 0.0]])
    loss, m = vq.vq_loss(z_e, z_q, 0.25)
    assert float(m["vq_codebook"]) == pytest.approx(2.5)  # mean of (1, 4)
    assert float(loss) == pytest.approx(2.5 * 1.25)
    # Codebook term moves only z_q; commitment term moves only z_e (scaled by λ).
    g_e, g_q = jax.grad(lambda e, q: vq.vq_loss(e, q, 0.25)[0], argnums=(0, 1))(z_e, z_q)
    np.testing.assert_allclose(g_e, 0.25 * (z_e - z_q))  # d/dz_e of λ mean((z_e - z_q)^2)
    np.testing.assert_allclose(g_q, (z_q - z_e))


def test_perplexity_and_dead_codes_on_known_assignment():
    # 4 codes of 8 used equally -> perplexity 4, 4 unused.
    m = vq.codebook_metrics(jnp.array([[0, 1, 2, 3], [3, 2, 1, 0]]), 8)
    assert float(m["perplexity"]) == pytest.approx(4.0, rel=1e-5)
    assert float(m["codes_used"]) == 4 and float(m["batch_dead_codes"]) == 4
    assert float(m["codebook_usage"]) == pytest.approx(0.5)
    # Probabilities (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity 2^1.5.
    m = vq.codebook_metrics(jnp.array([0, 0, 1, 2]), 4)
    assert float(m["perplexity"]) == pytest.approx(2 ** 1.5, rel=1e-5)
    assert float(m["batch_dead_codes"]) == 1


def test_usage_state_and_dead_code_reinitialisation():
    config = tiny_model_config()
    config.d_model = 2
    config.vq.update(codebook_size=4, recent_buffer_size=6, usage_decay=0.0,
                     dead_usage_fraction=0.5)
    quantizer = vq.VectorQuantizer(config, rngs=nnx.Rngs(0))
    quantizer.codebook[...] = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    z_e = jnp.array([[[0.1, 0.0], [0.0, 0.2], [9.0, 1.0], [0.2, 0.2]]])  # codes 0, 0, 1, 0
    out = quantizer(z_e, update_state=True)
    np.testing.assert_allclose(quantizer.usage[...], [0.75, 0.25, 0.0, 0.0])
    assert float(out.metrics["dead_codes"]) == 2  # usage < 0.5 / 4
    assert int(quantizer.num_recent[...]) == 4
    np.testing.assert_allclose(quantizer.recent[...][:4], z_e[0])
    quantizer(z_e, update_state=True)  # ring buffer wraps: 8 rows into 6 slots
    assert int(quantizer.num_recent[...]) == 6 and int(quantizer.write_position[...]) == 2
    # Stateless use (the sampler stage, inference) leaves the state alone.
    before = np.asarray(quantizer.usage[...])
    quantizer(z_e * 0 + 10.0)
    np.testing.assert_array_equal(quantizer.usage[...], before)

    metrics = quantizer.reinit_dead_codes(jax.random.key(0))
    assert float(metrics["codes_reinitialised"]) == 2
    new = np.asarray(quantizer.codebook[...])
    np.testing.assert_array_equal(new[:2], [[0.0, 0.0], [10.0, 0.0]])  # live codes kept
    recent = np.asarray(quantizer.recent[...])
    for code in new[2:]:  # each replacement is a recent encoder output (+ tiny noise)
        assert np.min(np.linalg.norm(recent - code, axis=1)) < 1e-2
    np.testing.assert_allclose(quantizer.usage[...][2:], 0.25)


def test_reinit_with_empty_buffer_changes_nothing():
    codebook = jnp.ones((4, 2))
    new, usage, n = vq.reinit_dead_codes(codebook, jnp.zeros(4), jnp.zeros((3, 2)), 0,
                                         jax.random.key(0), dead_usage_fraction=0.5)
    assert int(n) == 0
    np.testing.assert_array_equal(new, codebook)


# -- contrastive --------------------------------------------------------------------
def _supcon_numpy(z, positives, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / tau
    losses = []
    for i in range(len(z)):
        pos = [p for p in range(len(z)) if p != i and positives[i, p]]
        if not pos:
            continue
        denom = np.log(sum(np.exp(sim[i, a]) for a in range(len(z)) if a != i))
        losses.append(-np.mean([sim[i, p] - denom for p in pos]))
    return np.mean(losses) if losses else 0.0


def test_temporal_and_semantic_positives_by_hand():
    # B=2 samples, n=2 tokens: flattened order (b0 j0, b0 j1, b1 j0, b1 j1).
    indices = jnp.array([[3, 5], [3, 3]])
    labels = jnp.array([1, 1])
    temporal = np.asarray(contrastive.temporal_positives(indices))
    # Only (b0 j0, b1 j0) share code 3 at position 0; b1 j1 has code 3 at position 1
    # (no partner), b0 j1 is the only code 5.
    expected = np.eye(4, dtype=bool)
    expected[0, 2] = expected[2, 0] = True
    np.testing.assert_array_equal(temporal, expected)
    semantic = np.asarray(contrastive.semantic_positives(indices, labels))
    expected = np.eye(4, dtype=bool)
    for i in (0, 2, 3):  # same label, code 3 regardless of position
        for j in (0, 2, 3):
            expected[i, j] = True
    np.testing.assert_array_equal(semantic, expected)
    # Different labels break the semantic pairs.
    semantic = np.asarray(contrastive.semantic_positives(indices, jnp.array([1, 2])))
    assert not semantic[0, 2] and semantic[2, 3]


def test_supervised_contrastive_matches_numpy_on_four_samples():
    z = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]], np.float32)
    positives = np.zeros((4, 4), bool)
    positives[0, 1] = positives[1, 0] = True  # anchors 2 and 3 have no positive
    positives[0, 0] = True  # self-pairs are ignored
    loss, m = contrastive.supervised_contrastive(jnp.asarray(z), jnp.asarray(positives), 0.1)
    assert float(loss) == pytest.approx(_supcon_numpy(z, positives, 0.1), rel=1e-5)
    assert float(m["anchor_fraction"]) == pytest.approx(0.5)
    # Hand value for anchor 0: sims to 1, 2, 3 are 0.8, 0, -1/sqrt(1.04).
    c3 = -1.0 / math.sqrt(1.04)
    l0 = -(8.0 - math.log(math.exp(8.0) + 1.0 + math.exp(10 * c3)))
    l1 = -(8.0 - math.log(math.exp(8.0) + math.exp(6.0) + math.exp(10 * (-0.8 + 0.12) / math.sqrt(1.04))))
    assert float(loss) == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # Scaling the embeddings changes nothing (they are normalised).
    loss2, _ = contrastive.supervised_contrastive(jnp.asarray(3 * z), jnp.asarray(positives), 0.1)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-5)


def test_contrastive_without_any_positive_is_zero_and_finite():
    z = jax.random.normal(jax.random.key(0), (2, 3, 4))
    indices = jnp.array([[0, 1, 2], [3, 4, 5]])  # all codes distinct
    loss, grads = jax.jit(jax.value_and_grad(
        lambda z: contrastive.contrastive_loss(z, indices, jnp.array([0, 1]))[0]))(z)
    assert float(loss) == 0.0 and np.all(np.isfinite(grads))


def test_contrastive_switches_and_batch_loss_matches_numpy():
    z = jax.random.normal(jax.random.key(1), (4, 2, 3))
    indices = jnp.array([[0, 1], [0, 1], [0, 0], [1, 1]])
    labels = jnp.array([0, 0, 1, 1])
    total, m = contrastive.contrastive_loss(z, indices, labels, temporal=True, semantic=True)
    flat = np.asarray(z).reshape(8, 3)
    want_t = _supcon_numpy(flat, np.asarray(contrastive.temporal_positives(indices)), 0.1)
    want_s = _supcon_numpy(flat, np.asarray(contrastive.semantic_positives(indices, labels)), 0.1)
    assert float(m["contrastive_temporal"]) == pytest.approx(want_t, rel=1e-5)
    assert float(m["contrastive_semantic"]) == pytest.approx(want_s, rel=1e-5)
    assert float(total) == pytest.approx(want_t + want_s, rel=1e-5)
    only_t, m = contrastive.contrastive_loss(z, indices, labels, semantic=False)
    assert float(only_t) == pytest.approx(want_t, rel=1e-5) and "contrastive_semantic" not in m
    none, _ = contrastive.contrastive_loss(z, indices, labels, temporal=False, semantic=False)
    assert float(none) == 0.0


# -- action losses ------------------------------------------------------------------
def test_chunk_l1_ignores_padded_steps():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    loss, _ = action_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    expected = np.abs(pred - target)[mask].mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    target[1, 2:] = 1e6  # padded targets do not matter
    loss2, _ = action_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    assert float(loss2) == pytest.approx(float(loss), rel=1e-6)
    kp, _ = keypose_l1(jnp.ones((2, 3)), jnp.zeros((2, 3)))
    assert float(kp) == 1.0


# -- diffusion schedules --------------------------------------------------------------
@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_beta_schedules_are_valid(name):
    betas = beta_schedule(name, 100)
    assert betas.shape == (100,) and np.all((betas > 0) & (betas < 1))
    alpha_bar = np.cumprod(1 - betas)
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 0.01


def test_ddim_timesteps():
    np.testing.assert_array_equal(ddim_timesteps(100, 4), [99, 66, 33, 0])
    assert len(ddim_timesteps(10, 50)) == 10


def test_hash_dropout_rate_scale_and_independence():
    from atomskill_jax.models.layers import dropout

    x = jnp.ones((64, 500))
    a = dropout(x, 0.2, train=True, rngs=nnx.Rngs(dropout=jax.random.key(0)))
    b = dropout(x, 0.2, train=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))
    assert float(jnp.mean(a == 0)) == pytest.approx(0.2, abs=0.01)
    assert float(jnp.mean(a)) == pytest.approx(1.0, abs=0.02)  # inverted scaling
    assert float(jnp.mean((a == 0) & (b == 0))) == pytest.approx(0.04, abs=0.01)
    np.testing.assert_array_equal(dropout(x, 0.2, train=False, rngs=None), x)
