"""The sampler's UNet can pass its input through (what ε-prediction at high noise needs).

Without the full-resolution skip into the output block, every feature had to squeeze
through the stride-2 path: after 300 Adam steps the identity error was still ~0.73
(sampled skills were then no better than random codes); with it, 0.32.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from atomskill_jax.models.unet1d import ConditionalUnet1D


def test_unet_learns_identity_quickly():
    unet = ConditionalUnet1D(32, 48, [32, 64], kernel=5, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(unet, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(unet, opt, x, cond):
        loss, grads = nnx.value_and_grad(lambda u: jnp.mean((u(x, cond) - x) ** 2))(unet)
        opt.update(unet, grads)
        return loss

    for i in range(300):
        x = jax.random.normal(jax.random.key(i), (32, 8, 32))
        cond = jax.random.normal(jax.random.key(10_000 + i), (32, 48))
        loss = step(unet, opt, x, cond)
    assert float(loss) < 0.45  # measured: 0.32 with the skip, 0.73 without
