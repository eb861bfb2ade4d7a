"""Checkpoints: a checkpoint written on 8 devices restores on 1, in child processes, on
the MetaWorld fixture, with the stand-in model (the trainer is model-agnostic). A killed
run resuming exactly is tests/test_train_resume_atomskill.py (the real model, both
stages, killed twice, every array bit-identical), which replaced the stand-in's
single-kill version here. Every read of a child has a timeout: a hung child fails the
test with its stderr, and is killed."""

import json
import os

import numpy as np
import pytest

from tests.train_helpers import Child

# argv: devices, dataset, workdir, steps, then optionally "dump:STEP:OUT" (before
# training: the train state of checkpoint STEP, restored onto this process's devices,
# replicated, whatever device count wrote it, saved as npz) and/or "train".
CHILD = """
import numpy as np, orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from atomskill_jax.training import trainer
dataset, workdir, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])

def dump(step, out):
    path = os.path.join(workdir, 'skill', 'checkpoints', step, 'train_state')
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(path).item_metadata.tree
    mesh = jax.make_mesh((jax.device_count(),), ('d',))
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(
        m.shape, m.dtype, sharding=NamedSharding(mesh, PartitionSpec())), meta)
    flat = jax.tree_util.tree_leaves_with_path(checkpointer.restore(path, target))
    np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in flat})

for action in sys.argv[5:]:
    if action.startswith('dump:'):
        dump(*action.split(':')[1:])
    else:
        config = tiny_train_config(dataset, real_model=False, skill_steps=steps,
                                   checkpoint_every=2)
        config.stage = 'skill'
        config.mesh.fsdp = 2 if jax.device_count() > 1 else 1
        print(json.dumps(trainer.train(config, workdir)), flush=True)
"""


def _ckpt(workdir, step):
    return os.path.join(workdir, "skill", "checkpoints", str(step))


def test_hung_child_fails_with_its_stderr_and_is_killed():
    child = Child("import time\nprint('started', flush=True)\n"
                  "print('a warning', file=sys.stderr, flush=True)\ntime.sleep(600)", 1,
                  prelude=False)
    assert child.wait_for_line("started", timeout=120).strip() == "started"
    with pytest.raises(AssertionError, match=r"(?s)no 'HANGING' line within 1 s.*a warning"):
        child.wait_for_line("HANGING", timeout=1)
    assert child.proc.poll() is not None  # killed, not left running
    child = Child("sys.exit(3)", 1, prelude=False)
    with pytest.raises(AssertionError, match=r"exited \(3\) without printing 'HANGING'"):
        child.wait_for_line("HANGING", timeout=120)


def test_checkpoint_from_8_devices_restores_on_1(metaworld_rlds_dir, tmp_path):
    cache = tmp_path / "cache"
    workdir = tmp_path / "w"
    Child(CHILD, 8, metaworld_rlds_dir, workdir, 2, "train",
          f"dump:2:{tmp_path / 'eight.npz'}", cache_dir=cache).finish(timeout=300)
    # On 1 device: the same train state (resharded), then one more step from it.
    out = Child(CHILD, 1, metaworld_rlds_dir, workdir, 3, f"dump:2:{tmp_path / 'one.npz'}",
                "train", cache_dir=cache).finish(timeout=300)
    saved, restored = np.load(tmp_path / "eight.npz"), np.load(tmp_path / "one.npz")
    for name in saved.files:
        np.testing.assert_array_equal(saved[name], restored[name], err_msg=name)
    out = json.loads(out.strip().splitlines()[-1])
    assert out["skill"]["step"] == 3 and np.isfinite(out["skill"]["metrics"]["loss"])
    assert os.path.isdir(_ckpt(workdir, 3))
