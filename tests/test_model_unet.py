"""The sampler's UNet can pass its input through (what ε-prediction at high noise needs).

Without the full-resolution skip into the output block, every feature had to squeeze
through the stride-2 path: after 300 Adam steps (batch 32, lr 1e-3) the identity error
was still ~0.73 (sampled skills were then no better than random codes); with it, 0.32.
The test's shorter schedule (150 steps, batch 8, lr 3e-3) separates the two as clearly:
0.45 with the skip, 0.85 with the skip's features replaced by zeros.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from atomskill_jax.models.unet1d import ConditionalUnet1D

# The 150 steps are what this test costs: compiled at the suite's cheap backend level
# (tests/conftest.py) one step ran ~60-100 ms (unvectorised loops); fully optimised,
# ~7 ms, for ~1 s more compilation. The program and its float32 arithmetic are the same.
OPTIMISED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def test_unet_learns_identity_quickly():
    unet = ConditionalUnet1D(32, 48, [32, 64], kernel=5, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(unet, optax.adam(3e-3), wrt=nnx.Param)
    graphdef, state = nnx.split((unet, opt))

    # A plain jax.jit on the split state: nnx.jit's graph traversal cost ~30 ms a call.
    @jax.jit(donate_argnums=0, compiler_options=OPTIMISED)
    def step(state, x, cond):
        unet, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda u: jnp.mean((u(x, cond) - x) ** 2))(unet)
        opt.update(unet, grads)
        return nnx.state((unet, opt)), loss

    # numpy data: a fresh jax.random key per step would cost a dispatch of its own
    rng = np.random.default_rng(0)
    for _ in range(150):
        x = rng.standard_normal((8, 8, 32), dtype=np.float32)
        cond = rng.standard_normal((8, 48), dtype=np.float32)
        state, loss = step(state, x, cond)
    assert float(loss) < 0.65  # measured: 0.45 with the skip, 0.85 without
