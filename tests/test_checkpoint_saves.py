"""Checkpoint saves of replicated arrays on several devices: small arrays are copied to
the host whole, not cut into one eagerly dispatched slice per replica (orbax's
replica-parallel default, which cost 12 s of a tiny model's 20 s save on 8 CPU
devices), and what is restored is what was saved."""

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from atomskill_jax.training import checkpoints


def test_small_replicated_arrays_are_saved_without_per_replica_slices(tmp_path, monkeypatch):
    assert jax.device_count() == 8  # tests/conftest.py
    mesh = jax.make_mesh((8,), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = np.random.default_rng(0)
    host = {f"w{i}": rng.normal(size=(8 * (i + 1), 16)).astype(np.float32) for i in range(12)}
    tree = {k: jax.device_put(v, replicated) for k, v in host.items()}

    slices = []
    original = jax.lax.slice_in_dim
    monkeypatch.setattr(jax.lax, "slice_in_dim",
                        lambda *a, **k: slices.append(a[0].shape) or original(*a, **k))
    manager = checkpoints.make_manager(str(tmp_path / "ckpt"), keep=1, async_save=False)
    manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(tree)))
    manager.wait_until_finished()
    assert slices == []  # orbax's default cuts every array here 8 ways: 96 slices

    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          tree)
    restored = manager.restore(1, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))["params"]
    manager.close()
    for k, v in host.items():
        np.testing.assert_array_equal(np.asarray(restored[k]), v)
