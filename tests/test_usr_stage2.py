"""USR Stage II: the frozen Stage I encoder, the prior's cross-entropy to the frozen
encoder's code, the Gaussian policy loss, and the No-Skill variant."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from atomskill_jax.methods import registry
from atomskill_jax.methods.usr.model import code_vectors
from configs.usr import get_config

SPEC = registry.spec_by_name("usr")


def tiny(**model):
    c = get_config("tiny")
    c.model.update(model)
    return c


def as_jax(batch):
    return jax.tree.map(jnp.asarray, batch)


def flat(state):
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


def test_adapt_steps_leave_stage1_bit_unchanged():
    c = tiny()
    model = SPEC.create(c, nnx.Rngs(0))
    stage = SPEC.stage(c, "adapt")
    before = flat(nnx.state(model))
    graphdef, params, frozen, rest = nnx.split(model, nnx.All(nnx.Param, stage.trainable),
                                               nnx.Param, ...)
    trained = {p[0] for p in flat(params)}
    assert trained == {"stage2"}, trained  # nothing of Stage I is even optimised
    assert any(p[0] == "stage1" for p in flat(frozen))
    tx = optax.adam(1e-2)
    opt = tx.init(params)
    batch = as_jax(SPEC.fake_batch(c, 8))

    @jax.jit
    def step(params, opt, rest, s):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, frozen, rest, copy=True)
            loss, metrics = SPEC.compute_loss(m, jax.random.fold_in(jax.random.key(0), s), batch,
                                              stage="adapt", step=s, train=True)
            return loss, nnx.split(m, nnx.All(nnx.Param, stage.trainable), nnx.Param, ...)[3]

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, rest, loss

    losses = []
    for s in range(3):
        params, opt, rest, loss = step(params, opt, rest, jnp.int32(s))
        losses.append(float(loss))
    after = flat(nnx.state(nnx.merge(graphdef, params, frozen, rest)))
    assert after.keys() == before.keys()
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed, "no parameter moved"
    assert all(p[0] == "stage2" for p in changed), sorted(p for p in changed if p[0] != "stage2")
    # Stage I, codebook usage state included, is bit for bit what it was.
    for p in before:
        if p[0] != "stage2":
            np.testing.assert_array_equal(before[p], after[p], err_msg=str(p))
    assert {p[1] for p in changed} == {"history", "prior", "policy"}
    assert losses[-1] < losses[0]


def test_adapt_loss_gives_stage1_no_gradient_even_if_trained():
    # Even a stage that optimised every Param could not move the encoder: its outputs
    # enter Stage II under stop_gradient.
    c = tiny()
    model = SPEC.create(c, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = as_jax(SPEC.fake_batch(c, 4))
    grads = jax.jit(jax.grad(lambda p: SPEC.compute_loss(
        nnx.merge(graphdef, p, rest, copy=True), jax.random.key(0), batch, stage="adapt",
        step=jnp.int32(0), train=True)[0]))(params)
    g = flat(grads)
    assert all(not v.any() for p, v in g.items() if p[0] == "stage1")
    assert any(v.any() for p, v in g.items() if p[0] == "stage2")


def test_prior_cross_entropy_is_to_the_frozen_encoders_code():
    c = tiny(alpha=0.5)
    model = SPEC.create(c, nnx.Rngs(1))
    batch = as_jax(SPEC.fake_batch(c, 6, seed=2))
    # Codes 0-5 := the encoder's latents of examples 0-5 (given o_t and o_{t+H}), so the
    # pseudo-label of example i is i: labels that vary, and that a code computed from
    # any other input (e.g. without the future frame) would not reproduce.
    graphdef, state = nnx.split(model)
    latents = jax.jit(lambda st, b: nnx.merge(graphdef, st).stage1.vl_latent(b)[0])(state, batch)
    for _, var in nnx.to_flat_state(nnx.state(model.stage1.codebook, nnx.Param)):
        if var.get_value().shape == (int(c.model.num_codes), int(c.model.dim)):
            var.set_value(var.get_value().at[:6].set(latents))
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, batch):
        m = nnx.merge(graphdef, state)
        s1 = m.stage1
        lang = batch["language_embedding"]
        x = s1.trans(s1.task(batch["observation"], lang), s1.task(batch["observation_future"], lang))
        logits, _ = m.prior_code(batch["observation_history"], lang)
        loss, metrics = m.compute_loss(jax.random.key(0), batch, stage="adapt", train=False)
        mean, log_std = m.stage2.policy(*[m.stage2.history(batch["observation_history"], lang)[0]],
                                        s1.code(batch)[0])
        return x, code_vectors(s1.codebook, m.num_codes, m.code_dim), logits, loss, metrics, mean, log_std

    x, codes, logits, loss, metrics, mean, log_std = (jax.tree.map(np.asarray, o)
                                                      for o in run(state, batch))
    # By hand: the nearest code to the frozen encoder's latent, then softmax CE.
    dist = ((x[:, None, :] - codes[None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    np.testing.assert_array_equal(labels, np.arange(6))
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -log_p[np.arange(len(labels)), labels].mean()
    np.testing.assert_allclose(metrics["prior_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["prior_accuracy"], (logits.argmax(-1) == labels).mean())
    # eq. 5: policy NLL + alpha * CE, the NLL that of the policy's Gaussian on the chunk.
    from atomskill_jax.models.gaussian_head import gaussian_nll

    nll, _ = gaussian_nll(jnp.asarray(mean), jnp.asarray(log_std),
                          batch["action_chunk"], batch["action_chunk_mask"])
    np.testing.assert_allclose(metrics["policy_nll"], float(nll), rtol=1e-5)
    np.testing.assert_allclose(loss, float(nll) + 0.5 * ce, rtol=1e-5)


def test_no_skill_variant_ignores_the_code_and_has_no_prior():
    c = tiny(policy_condition="instruction")
    model = SPEC.create(c, nnx.Rngs(0))
    assert model.stage2.prior is None
    batch = SPEC.fake_batch(c, 4)
    other = dict(batch, observation_future=jax.tree.map(lambda v: v + 3.0,
                                                        batch["observation_future"]))
    other_lang = dict(batch, language_embedding=batch["language_embedding"] + 1.0)
    graphdef, state = nnx.split(model)
    loss_fn = jax.jit(lambda st, b: nnx.merge(graphdef, st).compute_loss(
        jax.random.key(0), b, stage="adapt", train=False))
    loss, metrics = loss_fn(state, as_jax(batch))
    assert "prior_ce" not in metrics
    # The future frame only changes z, which this variant never reads ...
    assert float(loss_fn(state, as_jax(other))[0]) == float(loss)
    # ... while the instruction conditions it.
    assert float(loss_fn(state, as_jax(other_lang))[0]) != float(loss)


def test_skill_variant_policy_reads_the_code():
    c = tiny()
    model = SPEC.create(c, nnx.Rngs(0))
    batch = as_jax(SPEC.fake_batch(c, 2))
    graphdef, state = nnx.split(model)

    @jax.jit
    def chunks(state, batch):
        m = nnx.merge(graphdef, state)
        hist, _ = m.stage2.history(batch["observation_history"], batch["language_embedding"])
        codes = code_vectors(m.stage1.codebook, m.num_codes, m.code_dim)
        return m.stage2.policy(hist, codes[jnp.zeros(2, jnp.int32)])[0], \
            m.stage2.policy(hist, codes[jnp.ones(2, jnp.int32)])[0]

    a, b = chunks(state, batch)
    assert not np.allclose(np.asarray(a), np.asarray(b))
