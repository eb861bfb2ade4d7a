"""Helpers for the trainer tests: child training processes whose every read has a
timeout (a hung child is a test failure showing its stderr, and is killed), a dump of
a checkpoint's arrays for exact comparisons, and a probe model for train-step tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.tiny_model import CHILD_PRELUDE, REPO, child_env

def checkpoint_arrays(workdir, stage: str, step: int) -> dict:
    """Every array of a checkpoint's `params` and `train_state` items, restored
    replicated onto this process's devices (whatever device or process count wrote
    them), keyed "<item><keypath>"."""
    import orbax.checkpoint as ocp
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    arrays = {}
    for item in ("params", "train_state"):
        path = os.path.join(str(workdir), stage, "checkpoints", str(step), item)
        checkpointer = ocp.StandardCheckpointer()
        meta = checkpointer.metadata(path).item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(
            m.shape, m.dtype, sharding=NamedSharding(mesh, PartitionSpec())), meta)
        for p, x in jax.tree_util.tree_leaves_with_path(checkpointer.restore(path, target)):
            arrays[item + jax.tree_util.keystr(p)] = np.asarray(x)
    return arrays


# Appended to a child's code: `dump(workdir, stage, step, out)` writes
# `checkpoint_arrays` to out as npz, from inside the child (its own device count).
DUMP_CODE = """
def dump(workdir, stage, step, out):
    import numpy as np
    from tests.train_helpers import checkpoint_arrays
    np.savez(out, **checkpoint_arrays(workdir, stage, step))
"""


class Child:
    """A Python child (after tests.tiny_model's prelude, unless `prelude=False`: argv[1]
    = fake device count) whose stdout and stderr are drained by threads, so no read
    can block forever."""

    def __init__(self, code: str, devices: int, *args, cache_dir=None, env=None,
                 prelude: bool = True):
        full_env = child_env(cache_dir)
        full_env.update(env or {})
        code = (CHILD_PRELUDE if prelude else "import sys\n") + code
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(devices), *map(str, args)],
            cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stdout, True),
                                          daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stderr, False),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _drain(self, stream, is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr).append(line)
            if is_stdout:
                self._lines.put(line)
        if is_stdout:
            self._lines.put(None)  # end of output

    def _fail(self, what: str):
        self.kill()
        tail = "".join(self.stderr)[-4000:]
        raise AssertionError(f"child process {what}; its stderr ends:\n{tail}")

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with `prefix`, within `timeout` seconds."""
        try:
            while True:
                line = self._lines.get(timeout=timeout)
                if line is None:
                    self.proc.wait(timeout=30)
                    self._fail(f"exited ({self.proc.returncode}) without printing {prefix!r}")
                if line.startswith(prefix):
                    return line
        except queue.Empty:
            self._fail(f"printed no {prefix!r} line within {timeout:.0f} s (hung?)")

    def finish(self, timeout: float) -> str:
        """Wait for a successful exit; its whole stdout."""
        if self.wait_exit(timeout) != 0:
            self._fail(f"failed with exit code {self.proc.returncode}")
        return "".join(self.stdout)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the child to exit (any status) and its output to be read; the status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._fail(f"did not exit within {timeout:.0f} s")
        for t in self._threads:
            t.join(timeout=30)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (a machine failure: nothing runs after it) and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


def load_dump(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def assert_same_arrays(expected: dict, actual: dict, what: str) -> None:
    """Every array equal, bit for bit (same programs on the same devices)."""
    assert sorted(expected) == sorted(actual), f"{what}: different array names"
    different = [k for k in expected if not np.array_equal(expected[k], actual[k])]
    assert not different, f"{what}: arrays differ: {different}"


def ckpt_dir(workdir, stage: str, step: int | None = None) -> str:
    path = os.path.join(str(workdir), stage, "checkpoints")
    return path if step is None else os.path.join(path, str(step))


# -- the smallest model on the trainer's contract, for train-step tests ----------------

class ProbeCount(nnx.Variable):
    """Non-Param state the step updates (like the VQ usage counts)."""


class ProbeModel(nnx.Module):
    """loss = mean((sampler(tanh(body(x))) - y)^2); 'rng_draw' is a uniform draw from
    the step's rng, so tests see which key the loss got; `calls` counts training calls.
    `body` trains in stage 'skill', `sampler` in stage 'sampler' (the default filter)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        self.body = nnx.Linear(2, 3, rngs=rngs)
        self.sampler = nnx.Linear(3, 1, rngs=rngs)
        self.calls = ProbeCount(jnp.zeros((), jnp.float32))

    def compute_loss(self, rng, batch, *, train: bool, stage: str):
        pred = self.sampler(jnp.tanh(self.body(batch["x"])))[..., 0]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        if train:
            self.calls[...] = self.calls[...] + 1.0
        return loss, {"rng_draw": jax.random.uniform(rng, ()), "calls": self.calls[...]}


def probe_config(**train):
    import ml_collections

    return ml_collections.ConfigDict({
        "seed": 0, "method": "tests.train_helpers:PROBE_SPEC", "model": {},
        "train": dict(train)})


def _probe_spec():
    from tests.tiny_model import two_stage_spec

    return two_stage_spec("probe", ProbeModel)


PROBE_SPEC = _probe_spec()


def probe_batch(seed: int) -> dict:
    r = np.random.default_rng(seed)
    return {"x": r.normal(size=(4, 2)).astype(np.float32),
            "y": r.normal(size=(4,)).astype(np.float32)}
