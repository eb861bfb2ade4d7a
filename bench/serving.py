"""Latency and throughput of a policy in-process, exported, and behind `atomskill serve`.

    python bench/serving.py [--config=configs/atomskill.py:cpu] [--requests=300]

A randomly initialised model of the config (latency does not depend on the values;
MetaWorld state dimensions), one environment per caller, each step one `infer`:
  in-process      the program's policy with jitted functions (policies/in_process.py)
  exported        the same program through `atomskill export` and the jax+numpy loader
  server, 1       one client on loopback (websockets + msgpack), batching on
  server, 8       eight clients stepping at once, batching on / off
Prints p50 / p99 per request and requests/s, and the ratios the issue aims at:
round trip p50 <= 1.1 x in-process p50 + 1 ms; throughput with 8 clients >= 4 x one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from atomskill_jax.policies.base import TaskInfo  # noqa: E402
from bench.policy_latency import observation, resolved_config  # noqa: E402
from bench.random_policy import random_program  # noqa: E402


def _timed_policy(policy, config, n: int) -> np.ndarray:
    policy.reset([TaskInfo("reach", "", 1_000_000)])
    obs = [observation(config, 1, seed=i) for i in range(n + 5)]
    for o in obs[:5]:
        policy.infer(o)
    out = []
    for o in obs[5:]:
        t = time.perf_counter()
        policy.infer(o)
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def _client_process(url, dims, n, barrier, queue, index):
    """One client in its own process (clients threads of this process would share its
    GIL with the server and measure that instead)."""
    from atomskill_client import PolicyClient

    r = np.random.default_rng(index)
    obs = [{k: r.normal(size=d).astype(np.float32) for k, d in dims.items()}
           for _ in range(n + 5)]
    with PolicyClient(url, recv_timeout=120) as client:
        client.reset(task="reach", instruction="", layout=1_000_000 + index, seed=0, episode=0)
        for o in obs[:5]:
            client.infer(o)
        barrier.wait()
        times = []
        for o in obs[5:]:
            t = time.perf_counter()
            client.infer(o)
            times.append(time.perf_counter() - t)
    queue.put(times)


def _served(url, config, clients: int, n: int):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    dims = {k: v.shape[1:] for k, v in observation(config, 1).items()}
    barrier, queue = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(url, dims, n, barrier, queue, i))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    times = [queue.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    return np.concatenate(times), clients * n / wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "atomskill.py") + ":cpu")
    p.add_argument("--requests", type=int, default=300, help="timed requests per caller")
    args = p.parse_args(argv)
    from atomskill_jax.export import loader, writer
    from atomskill_jax.policies.in_process import policy_from_program
    from atomskill_jax.serving import policy_source
    from atomskill_jax.serving.server import PolicyServer, ServerThread

    config = resolved_config(args.config)
    program, _ = random_program(config)
    rows = []
    local = _timed_policy(policy_from_program(program), config, args.requests)
    rows.append(("in-process", 1, local, len(local) / local.sum()))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "policy")
        writer.write_program(program, out, platforms=("cpu",))
        exported = _timed_policy(loader.load_policy(out), config, args.requests)
        rows.append(("exported", 1, exported, len(exported) / exported.sum()))
        served = policy_source.from_exported(out)
        for label, clients, batching in (("server", 1, True), ("server", 8, True),
                                         ("server, no batching", 8, False)):
            server = PolicyServer(served, port=0, max_batch=8, batching=batching)
            with ServerThread(server) as url:
                times, rate = _served(url, config, clients, args.requests)
            rows.append((label, clients, times, rate))
            print(f"  ({label}, {clients} clients: {server.batcher.batches} model calls for "
                  f"{server.batcher.calls} requests' calls)", flush=True)
    print(f"\n{'path':22s} {'clients':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>9s}")
    for label, clients, times, rate in rows:
        print(f"{label:22s} {clients:7d} {1e3 * np.percentile(times, 50):8.2f} "
              f"{1e3 * np.percentile(times, 99):8.2f} {rate:9.1f}")
    p50 = {(r[0], r[1]): np.percentile(r[2], 50) * 1e3 for r in rows}
    rate = {(r[0], r[1]): r[3] for r in rows}
    bound = 1.1 * p50[("in-process", 1)] + 1.0
    print(f"\nround trip p50 (1 client) {p50[('server', 1)]:.2f} ms vs 1.1 x in-process + 1 ms "
          f"= {bound:.2f} ms: {'met' if p50[('server', 1)] <= bound else 'NOT met'}")
    print(f"round trip / in-process p50: {p50[('server', 1)] / p50[('in-process', 1)]:.2f}; "
          f"exported / in-process: {p50[('exported', 1)] / p50[('in-process', 1)]:.2f}")
    gain = rate[("server", 8)] / rate[("server", 1)]
    print(f"throughput 8 clients / 1 client: {gain:.2f} (aim >= 4: "
          f"{'met' if gain >= 4 else 'NOT met'}); without batching: "
          f"{rate[('server, no batching', 8)] / rate[('server', 1)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
