"""A tiny stand-in with the AtomSkill model contract, for fast trainer tests.

Same interface as `atomskill_jax.methods.atomskill.model.AtomSkill`: built from a config and
`nnx.Rngs`, `compute_loss(rng, batch, *, train, stage) -> (loss, metrics)`, a large
kernel annotated for the 'fsdp' axis, VQ usage counts as a non-Param variable, and
parts named like the real model so the stage filters freeze the same things. The
numbers mean nothing; the trainer only needs the shapes of the contract.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CodeUsage(nnx.Variable):
    """Exponential moving count of code use: state the step changes but never optimises."""


def tiny_model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.action_dim = 4
    c.proprio_dim = 4
    c.state_dim = 8
    c.use_state = True
    c.horizon = 4
    c.skill_length = 5
    c.num_tokens = 2
    c.codebook_size = 8
    c.width = 16
    c.dtype = "float32"
    return c


def _dense(din, dout, rngs, shard=False):
    init = nnx.initializers.lecun_normal()
    if shard:  # the large kernels of the real model carry this annotation
        init = nnx.with_partitioning(init, (None, "fsdp"))
    return nnx.Linear(din, dout, kernel_init=init, rngs=rngs)


class TinyModel(nnx.Module):
    def __init__(self, config, *, rngs: nnx.Rngs):
        self.config = c = config
        n, d = c.num_tokens, c.width
        obs_dim = c.proprio_dim + (c.state_dim if c.use_state else 0)
        self.skill_encoder = _dense(c.skill_length * c.action_dim, n * d, rngs, shard=True)
        self.codebook = nnx.Param(jax.random.normal(rngs.params(), (c.codebook_size, d)))
        self.usage = CodeUsage(jnp.zeros((c.codebook_size,)))
        self.obs_encoder = _dense(obs_dim, d, rngs)
        self.action_decoder = _dense(d + n * d, (c.horizon + 1) * c.action_dim, rngs, shard=True)
        if int(c.get("sampler_layers", 1)) == 2:  # a different sampler, same skill model
            self.sampler = nnx.Sequential(_dense(d, d, rngs), _dense(d, n * d, rngs, shard=True))
        else:
            self.sampler = _dense(d, n * d, rngs, shard=True)

    def _obs(self, batch):
        parts = [batch["observation"]["proprio"]]
        if self.config.use_state:
            parts.append(batch["observation"]["state"])
        return jnp.tanh(self.obs_encoder(jnp.concatenate(parts, -1)))

    def _quantize(self, z):  # z [B, n, d]
        dist = jnp.sum((z[..., None, :] - self.codebook[...]) ** 2, -1)
        idx = jnp.argmin(dist, -1)
        zq = self.codebook[...][idx]
        return z + jax.lax.stop_gradient(zq - z), zq, idx

    def compute_loss(self, rng, batch, *, train: bool, stage: str):
        c = self.config
        b = batch["action_chunk"].shape[0]
        obs = self._obs(batch)
        z = self.skill_encoder(batch["skill"]["actions"].reshape(b, -1))
        z = z.reshape(b, c.num_tokens, c.width)
        zst, zq, idx = self._quantize(z)
        counts = jax.nn.one_hot(idx, c.codebook_size).sum((0, 1))
        if train:
            self.usage[...] = 0.9 * self.usage[...] + 0.1 * counts
        probs = counts / counts.sum()
        perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
        metrics = {"perplexity": perplexity,
                   "dead_codes": jnp.sum(self.usage[...] < 1e-3).astype(jnp.float32)}
        if stage == "skill":
            vq = jnp.mean((jax.lax.stop_gradient(z) - zq) ** 2) + 0.25 * jnp.mean(
                (z - jax.lax.stop_gradient(zq)) ** 2)
            out = self.action_decoder(jnp.concatenate([obs, zst.reshape(b, -1)], -1))
            out = out.reshape(b, c.horizon + 1, c.action_dim)
            mask = batch["action_chunk_mask"][..., None].astype(jnp.float32)
            l1 = jnp.sum(jnp.abs(out[:, :-1] - batch["action_chunk"]) * mask) / (
                jnp.sum(mask) * c.action_dim + 1e-6)
            keypose = jnp.mean(jnp.abs(out[:, -1] - batch["keypose"]))
            loss = vq + l1 + keypose
            metrics.update(loss_vq=vq, loss_action_l1=l1, loss_keypose=keypose)
        else:
            target = jax.lax.stop_gradient(zq.reshape(b, -1))
            noise = jax.random.normal(rng, target.shape) * 0.1
            loss = jnp.mean((self.sampler(obs) + noise - target) ** 2)
            metrics.update(loss_diffusion=loss)
        return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def fake_batch(config, batch_size: int, seed: int = 0) -> dict:
    c = config
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    obs = {"proprio": f(batch_size, c.proprio_dim)}
    if c.use_state:
        obs["state"] = f(batch_size, c.state_dim)
    return {
        "observation": obs,
        "action_chunk": f(batch_size, c.horizon, c.action_dim),
        "action_chunk_mask": np.ones((batch_size, c.horizon), bool),
        "skill": {"actions": f(batch_size, c.skill_length, c.action_dim),
                  "label_id": r.integers(0, 3, batch_size).astype(np.int32),
                  "uid": r.integers(0, 10, batch_size).astype(np.int32)},
        "keypose": f(batch_size, c.action_dim),
    }


def two_stage_spec(name: str, model_class, fake=None):
    """A MethodSpec of a stand-in model with AtomSkill's two stages: 'skill' trains all
    but the `sampler` module, 'sampler' trains it, starting from the skill stage's
    variables outside it; EMA per `config.train.ema_stages`."""
    from atomskill_jax.methods.spec import MethodSpec, Stage

    in_sampler = nnx.PathContains("sampler")

    def stages(config):
        ema = tuple(config.train.get("ema_stages", ("sampler",)))
        return (Stage("skill", nnx.Not(in_sampler), ema="skill" in ema),
                Stage("sampler", in_sampler, starts_from="skill", carried=nnx.Not(in_sampler),
                      ema="sampler" in ema))

    def compute_loss(model, rng, batch, *, stage, step, train):
        return model.compute_loss(rng, batch, train=train, stage=stage)

    return MethodSpec(name=name, create=lambda config, rngs: model_class(config.model, rngs=rngs),
                      stages=stages, fake_batch=lambda config, b: fake(config.model, b),
                      input_spec=lambda config: {}, trajectory_transform=lambda config: None,
                      compute_loss=compute_loss, make_policy=None)


TINY_SPEC = two_stage_spec("tiny", TinyModel, fake_batch)


# -- helpers shared by the trainer tests (tests/test_train_*.py) ------------------------

def tiny_train_config(dataset_dir: str, *, real_model: bool = True, **train_overrides):
    """configs/atomskill.py:tiny on `dataset_dir`; with real_model=False the stand-in
    above replaces the AtomSkill model (same contract, compiles in a second)."""
    from atomskill_jax.training import config_flags

    c = config_flags.load_config(os.path.join(REPO, "configs", "atomskill.py") + ":tiny")
    c.data.datasets = ({"name": str(dataset_dir), "weight": 1.0},)
    if not real_model:
        with c.unlocked():
            c.method = "tests.tiny_model:TINY_SPEC"
            c.model = tiny_model_config()
            c.model.horizon = c.data.get_ref("horizon")
            c.model.skill_length = c.data.get_ref("skill_resample_length")
            c.train.sampler_modules = ("sampler",)
    c.train.update(train_overrides)
    return c


def child_env(cache_dir: str | None = None) -> dict:
    """Environment of a child training process: CPU, quiet, a shared compilation cache
    (the same step compiled in several children is compiled once) and cheaper XLA
    optimisation (compile time dominates these tiny runs; numerics stay IEEE float32)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                        " --xla_llvm_disable_expensive_passes=true").strip()
    # The session-wide cache (tests/conftest.py) wins over a test's own: entries are keyed
    # by the compiled program, so sharing only saves compilations.
    cache_dir = os.environ.get("ATOMSKILL_TEST_JAX_CACHE") or cache_dir
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return env


CHILD_PRELUDE = """
import sys, json, os
import jax
jax.config.update('jax_num_cpu_devices', int(sys.argv[1]))
from tests.tiny_model import tiny_train_config
"""


def start_child(code: str, devices: int, *args, cache_dir=None, **popen):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", CHILD_PRELUDE + code, str(devices),
                             *map(str, args)], cwd=REPO, env=child_env(cache_dir), **popen)


def run_child(code: str, devices: int, *args, cache_dir=None, timeout: float = 300) -> str:
    """Run `code` in a fresh Python with `devices` fake CPU devices; its stdout."""
    import subprocess

    proc = start_child(code, devices, *args, cache_dir=cache_dir, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hung child: killed, its stderr shown
        proc.kill()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"child did not finish in {timeout} s:\n{err[-4000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{err[-4000:]}")
    return out


def copy_workdir(workdir: str, tmp_path_factory, name: str) -> str:
    import shutil

    out = tmp_path_factory.mktemp(name) / "workdir"
    shutil.copytree(workdir, out)
    return str(out)
