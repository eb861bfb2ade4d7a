"""Benchmark one jitted train step of a config on the local devices.

  .venv/bin/python bench/train_step.py --config=configs/atomskill.py:cpu
  .venv/bin/python bench/train_step.py --config=configs/atomskill.py:paper \
      --config.data.batch_size=4 --steps=3

Prints: parameters, FLOPs per step (XLA's cost analysis of the compiled step), step
time, examples/s, achieved FLOP/s and its ratio to a float32 matmul measured in the
same run (what this machine can do at best), and peak memory. The batch is the
model's `fake_batch` with the dimensions of the config's data (state observations
take MetaWorld's sizes), so no dataset is needed.
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = config_flags.split_config_args(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--stage", default="skill", choices=ts.STAGES)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up)")
    p.add_argument("--dims", default="4,4,39", help="action,proprio,state dims of the fake batch")
    args = p.parse_args(rest)
    config = config_flags.apply_overrides(config_flags.load_config(args.config), overrides)
    action, proprio, state_dim = (int(x) for x in args.dims.split(","))
    m = config.model
    m.action_dim, m.proprio_dim = action, proprio
    m.state_dim = state_dim if config.data.use_state else 0
    m.cameras, m.image_size = tuple(config.data.cameras), tuple(config.data.image_size)
    batch_size = int(config.data.batch_size)

    mesh = mesh_lib.mesh_from_config(config.mesh)
    tx, schedule = optimizer.make_optimizer(config.optim, 1000)
    graphdef, state, shardings = ts.create_train_state(config, args.stage, tx, mesh,
                                                       use_ema=args.stage == "sampler")
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    trained, frozen = count(state.params), count(state.frozen)
    step = ts.jit_train_step(ts.make_train_step(graphdef, tx, args.stage, schedule=schedule,
                                                ema_decay=0.999), shardings, mesh)
    fake = ts.load_symbol(config.model_factory.split(":")[0] + ":fake_batch")
    batch = mesh_batches.put_on_mesh(ts.host_batch(fake(m, batch_size)), mesh)
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
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = step(rng, state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    achieved = flops / step_s
    ceiling = matmul_flops_per_sec()

    print(f"config            {args.config} {' '.join(overrides)} (stage {args.stage})")
    print(f"devices           {jax.device_count()} x {jax.devices()[0].device_kind}, mesh "
          f"{dict(mesh.shape)}")
    print(f"parameters        {trained + frozen:,} ({trained:,} trained, {frozen:,} frozen)")
    print(f"batch             {batch_size}")
    print(f"first step        {compile_s:.1f} s (compile + run)")
    print(f"FLOPs / step      {flops / 1e9:.3f} GFLOP (XLA cost analysis)")
    print(f"step time         {step_s * 1e3:.1f} ms (median of {args.steps})")
    print(f"examples / s      {batch_size / step_s:.1f}")
    print(f"achieved          {achieved / 1e9:.2f} GFLOP/s")
    print(f"f32 matmul        {ceiling / 1e9:.2f} GFLOP/s (1024^3, same run)")
    print(f"ratio             {achieved / ceiling:.3f}")
    print(f"peak memory       {peak_memory()}")
    print(f"loss              {float(metrics['loss']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
