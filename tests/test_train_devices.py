"""The same train steps on 1 device and on 8 fake CPU devices (data 4 x fsdp 2) give
the same losses and parameters; large parameters are really sharded along fsdp."""

import numpy as np

from tests.tiny_model import run_child

CHILD = """
import numpy as np
from flax import nnx
from atomskill_jax.data import mesh_batches
from atomskill_jax.methods.atomskill import model as atomskill
from atomskill_jax.training import mesh as mesh_lib, optimizer, train_state as ts
config = tiny_train_config('unused')
config.model.state_dim = 6
# Adam's eps well above rounding noise: parameters whose gradient is analytically zero
# (attention key biases, conv biases before GroupNorm) would otherwise take steps of
# size lr in the sign of their float noise, which differs between reduction orders.
config.optim.eps = 1e-3
config.optim.lr = 1e-3
devices = jax.device_count()
mesh = mesh_lib.make_mesh(data=-1, fsdp=2 if devices > 1 else 1)
tx, schedule = optimizer.make_optimizer(config.optim, 10)
graphdef, state, shardings = ts.create_train_state(config, 'skill', tx, mesh, use_ema=True)
step = ts.jit_train_step(ts.make_train_step(graphdef, tx, config, 'skill', schedule=schedule,
                                            ema_decay=0.9), shardings, mesh)
rng = jax.random.PRNGKey(7)
losses = []
for i in range(2):
    batch = ts.host_batch(atomskill.fake_batch(config.model, 8, seed=i))
    state, metrics = step(rng, state, mesh_batches.put_on_mesh(batch, mesh))
    losses.append(float(metrics['loss']))
leaves = jax.tree_util.tree_leaves_with_path(state.params)
np.savez(sys.argv[2], **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
fsdp = sum('fsdp' in str(x.sharding.spec) for _, x in leaves)
print(json.dumps({'losses': losses, 'fsdp_sharded': fsdp, 'devices': devices}))
"""


def test_one_and_eight_devices_agree(tmp_path):
    import json

    from tests.train_helpers import Child

    # Both at once: each compiles on its own core. Child: reads drained, waits timed out.
    procs = {n: Child(CHILD, n, tmp_path / f"params{n}.npz", cache_dir=tmp_path / "cache")
             for n in (1, 8)}
    results = {}
    try:
        for n, proc in procs.items():
            out = proc.finish(timeout=300)  # a failure or a hang shows the child's stderr
            results[n] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            proc.kill()
    assert results[8]["devices"] == 8 and results[1]["devices"] == 1
    assert results[8]["fsdp_sharded"] > 0, "no parameter sharded along fsdp on 8 devices"
    np.testing.assert_allclose(results[1]["losses"], results[8]["losses"], rtol=2e-5)
    one, eight = np.load(tmp_path / "params1.npz"), np.load(tmp_path / "params8.npz")
    assert sorted(one.files) == sorted(eight.files)
    for name in one.files:
        np.testing.assert_allclose(one[name], eight[name], rtol=1e-4, atol=2e-6, err_msg=name)


def test_run_child_reports_failures():
    import pytest

    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_child("1 / 0", 1)
