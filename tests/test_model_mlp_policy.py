"""The MLP baseline (models/mlp_policy.py, configs/mlp.py): its losses, that it learns,
the configurations it refuses, and a trained workdir run by the shared policy runtime."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from atomskill_jax.methods.mlp import model as mlp_policy
from atomskill_jax.methods.atomskill.model import fake_batch
from configs import mlp as mlp_configs


def _model_config(**overrides):
    c = mlp_configs.get_config("tiny").model
    c.action_dim, c.proprio_dim, c.state_dim, c.cameras = 4, 4, 39, ()
    c.update(overrides)
    return c


@pytest.mark.parametrize("kind", ["l1", "mse", "huber"])
def test_chunk_loss_matches_numpy_on_valid_steps(kind):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 3, 4)) * 2, rng.normal(size=(2, 3, 4))
    mask = np.array([[True, True, False], [True, False, False]])
    d = (pred - target)[mask]
    expected = {"l1": np.abs(d), "mse": d ** 2,
                "huber": np.where(np.abs(d) <= 1, 0.5 * d ** 2, np.abs(d) - 0.5)}[kind].mean()
    loss, metrics = mlp_policy.chunk_loss(pred, target, mask, kind)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["action_l1"], np.abs(d).mean(), rtol=1e-5)


def test_mlp_fits_a_batch_and_predicts_chunks():
    c = _model_config()
    model = mlp_policy.MLPPolicy(c, rngs=nnx.Rngs(0))
    batch = fake_batch(c, 8)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        grad_fn = nnx.value_and_grad(lambda m: m.compute_loss(jax.random.PRNGKey(0), batch, train=True)[0])
        loss, grads = grad_fn(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0]
    chunk, keypose = model.predict_actions(batch["observation"], batch["language_embedding"])
    assert chunk.shape == (8, int(c.horizon), 4) and keypose is None


@pytest.mark.parametrize("override, message", [
    ({"decoder": {"skill_conditioning": True}}, "skill_conditioning"),
    ({"decoder": {"predict_keypose": True}}, "predict_keypose"),
    ({"mlp": {"loss": "l2"}}, "model.mlp.loss"),
])
def test_mlp_refuses_what_it_cannot_do(override, message):
    c = _model_config()
    for key, value in override.items():
        if isinstance(value, dict):
            c[key].update(value)
        else:
            c[key] = value
    with pytest.raises(ValueError, match=message):
        mlp_policy.MLPPolicy(c, rngs=nnx.Rngs(0))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="configs/mlp.py"):
        mlp_configs.get_config("paper")
