"""Per-call latency of AtomSkill inference: skill sampling and the decoder (p50 / p99).

    python bench/policy_latency.py --config=configs/atomskill.py:cpu
    python bench/policy_latency.py --config=configs/atomskill.py:cpu \
        --config=configs/atomskill.py:paper --batch=1,8

Randomly initialised parameters (latency does not depend on their values), jitted and
warmed up first, on the default JAX backend. Rows per config and batch size:
  sample_skill     obs encoder + DDIM (config's steps) + codebook snap: once per skill
  predict_actions  obs encoder + decoder -> chunk and keypose: every k steps
  policy.infer     one step of `AtomSkillPolicy` with re-query every step (decoder,
                   normalisation, chaining bookkeeping, trigger; no skill start)
  infer+new skill  a step where every environment starts a skill (sampler + decoder)
Dimensions as the configs' data would fill them: cpu = MetaWorld state (39) + proprio (4),
action 4; paper = front + wrist RGB at 224px, proprio 8, action 7.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from atomskill_jax.methods.atomskill.runtime import AtomSkillPolicy  # noqa: E402
from atomskill_jax.policies.base import TaskInfo  # noqa: E402
from atomskill_jax.policies.in_process import policy_from_program  # noqa: E402
from bench.random_policy import random_program  # noqa: E402
from atomskill_jax.training import config_flags  # noqa: E402
from atomskill_jax.training.train_state import build_model  # noqa: E402


def resolved_config(spec: str) -> ml_collections.ConfigDict:
    config = config_flags.load_config(spec)
    m, d = config.model, config.data
    with config.unlocked():
        m.cameras, m.image_size = tuple(d.cameras), tuple(d.image_size)
        m.state_dim = 39 if d.use_state else 0
        if not d.cameras:  # MetaWorld state observations
            m.action_dim, m.proprio_dim = 4, 4
    return ml_collections.ConfigDict(config.to_dict())


def make_policy(config) -> AtomSkillPolicy:
    """A random model's policy whose skills never end by themselves (ε < 0, no cap)."""
    return policy_from_program(random_program(config)[0])


def observation(config, b: int, seed: int = 0) -> dict:
    m, r = config.model, np.random.default_rng(seed)
    obs = {"proprio": r.normal(size=(b, m.proprio_dim)).astype(np.float32),
           "language_embedding": r.normal(size=(b, m.language_dim)).astype(np.float32)}
    if m.state_dim:
        obs["state"] = r.normal(size=(b, m.state_dim)).astype(np.float32)
    for cam in m.cameras:
        obs[f"image_{cam}"] = r.integers(0, 256, (b, *m.image_size, 3), dtype=np.uint8)
    return obs


def timed(fn, iters: int) -> np.ndarray:
    fn()  # warm-up (compiles on first use)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out) * 1e3


def bench(spec: str, b: int, iters: int) -> list[tuple]:
    config = resolved_config(spec)
    policy = make_policy(config)
    policy.reset([TaskInfo("reach", "", 1_000_000)] * b)  # compiles both calls
    obs = observation(config, b)
    model_obs, lang = policy._model_inputs(obs)
    key = jax.random.PRNGKey(0)
    graphdef, state = nnx.split(build_model(config, 0))
    sample = jax.jit(lambda s, k, o, l: nnx.merge(graphdef, s).sample_skill(k, o, l))
    tokens = sample(state, key, model_obs, lang)
    decode = jax.jit(lambda s, o, l, t: nnx.merge(graphdef, s).predict_actions(o, l, t))
    rows = [
        ("sample_skill", timed(lambda: jax.block_until_ready(
            sample(state, key, model_obs, lang)), iters)),
        ("predict_actions", timed(lambda: jax.block_until_ready(
            decode(state, model_obs, lang, tokens)), iters)),
        ("policy.infer", timed(lambda: policy.infer(obs), iters)),
    ]

    def new_skill():
        policy._trigger.need_skill[:] = True
        policy.infer(obs)

    rows.append(("infer+new skill", timed(new_skill, iters)))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(state, nnx.Param)))
    name = spec.rpartition(":")[2]
    return [(name, b, label, np.percentile(ms, 50), np.percentile(ms, 99), params)
            for label, ms in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", default=None,
                   help="configs/atomskill.py:VARIANT (repeatable; default cpu and paper)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (environments)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per row")
    args = p.parse_args(argv)
    specs = args.config or [os.path.join(REPO, "configs", "atomskill.py") + f":{v}"
                            for v in ("cpu", "paper")]
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPUs; {args.iters} calls per row after warm-up")
    print(f"{'config':8s} {'B':>3s} {'call':16s} {'p50 ms':>9s} {'p99 ms':>9s} {'params':>10s}")
    for spec in specs:
        for b in (int(x) for x in args.batch.split(",")):
            for name, bb, label, p50, p99, params in bench(spec, b, args.iters):
                print(f"{name:8s} {bb:3d} {label:16s} {p50:9.2f} {p99:9.2f} {params:10,d}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
