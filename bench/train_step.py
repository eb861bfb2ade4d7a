"""Benchmark one jitted train step of a config on the local devices.

  .venv/bin/python bench/train_step.py --config=configs/atomskill.py:cpu
  .venv/bin/python bench/train_step.py --config=configs/atomskill.py:paper \
      --config.data.batch_size=4 --steps=3

Prints: parameters, FLOPs per step (XLA's cost analysis of the compiled step), step
time, examples/s, achieved FLOP/s and its ratio to a float32 matmul measured in the
same run (what this machine can do at best), per stage of the config's method (every
method on the contract: atomskill, mlp, usr), and peak memory. The batch is the spec's
`fake_batch` with the dimensions of the config's data (state observations take
MetaWorld's sizes), so no dataset is needed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from atomskill_jax.data import mesh_batches  # noqa: E402
from atomskill_jax.methods import registry  # noqa: E402
from atomskill_jax.training import config_flags, mesh as mesh_lib, optimizer  # noqa: E402
from atomskill_jax.training import train_state as ts  # noqa: E402


def matmul_flops_per_sec(n: int = 1024, repeats: int = 5) -> float:
    """Best-of float32 [n, n] @ [n, n] throughput: the machine's practical ceiling."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def peak_memory() -> str:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**20:.1f} MiB (device 0 peak)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return f"{rss:.1f} MiB (process max RSS; CPU devices report no allocator stats)"


def time_stage(config, stage: str, steps: int) -> dict:
    """Compile and time `steps` train steps of one stage on the spec's fake batch."""
    spec = registry.get_spec(config)
    batch_size = int(config.data.batch_size)
    mesh = mesh_lib.mesh_from_config(config.mesh)
    tx, schedule = optimizer.make_optimizer(config.optim, 1000)
    graphdef, state, shardings = ts.create_train_state(config, stage, tx, mesh)
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    trained, frozen = count(state.params), count(state.frozen)
    step = ts.jit_train_step(ts.make_train_step(graphdef, tx, config, stage, schedule=schedule,
                                                ema_decay=0.999), shardings, mesh)
    batch = mesh_batches.put_on_mesh(ts.host_batch(spec.fake_batch(config, batch_size)), mesh)
    rng = jax.device_put(np.asarray(jax.random.PRNGKey(0)), mesh_lib.replicated(mesh))
    # FLOPs from XLA's cost analysis of the step's HLO; the step itself runs through the
    # jitted function (calling the AOT-compiled object fails in jax 0.10 when the graph
    # holds hoisted constants, e.g. the decoder's sinusoidal queries).
    cost = step.lower(rng, state, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    t = time.perf_counter()
    state, metrics = step(rng, state, batch)  # compile + warm-up
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step(rng, state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    return {"trained": trained, "frozen": frozen, "compile_s": compile_s, "flops": flops,
            "step_s": step_s, "loss": float(metrics["loss"]), "mesh": dict(mesh.shape)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = config_flags.split_config_args(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--stage", default=None,
                   help="the method's stage to time (default: each stage in turn)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
    p.add_argument("--dims", default="4,4,39", help="action,proprio,state dims of the fake batch")
    args = p.parse_args(rest)
    config = config_flags.apply_overrides(config_flags.load_config(args.config), overrides)
    action, proprio, state_dim = (int(x) for x in args.dims.split(","))
    m = config.model
    # The dimensions the trainer fills from the data, where the model config has them.
    dims = {"action_dim": action, "proprio_dim": proprio,
            "state_dim": state_dim if config.data.use_state else 0,
            "cameras": tuple(config.data.cameras), "image_size": tuple(config.data.image_size)}
    with m.unlocked():
        for key, value in dims.items():
            if key in m:
                m[key] = value
    spec = registry.get_spec(config)
    stages = [args.stage] if args.stage else spec.stage_names(config)
    batch_size = int(config.data.batch_size)
    ceiling = matmul_flops_per_sec()
    print(f"config            {args.config} {' '.join(overrides)} (method {spec.name})")
    print(f"devices           {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"batch             {batch_size}")
    print(f"f32 matmul        {ceiling / 1e9:.2f} GFLOP/s (1024^3, same run)")
    print(f"{'stage':10s} {'params':>10s} {'trained':>10s} {'compile s':>9s} {'GFLOP':>8s} "
          f"{'ms/step':>8s} {'ex/s':>8s} {'GFLOP/s':>8s} {'ratio':>6s} {'loss':>8s}")
    for stage in stages:
        r = time_stage(config, stage, args.steps)
        achieved = r["flops"] / r["step_s"]
        print(f"{stage:10s} {r['trained'] + r['frozen']:10,d} {r['trained']:10,d} "
              f"{r['compile_s']:9.1f} {r['flops'] / 1e9:8.3f} {r['step_s'] * 1e3:8.1f} "
              f"{batch_size / r['step_s']:8.1f} {achieved / 1e9:8.2f} {achieved / ceiling:6.3f} "
              f"{r['loss']:8.4f}")
    print(f"peak memory       {peak_memory()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
