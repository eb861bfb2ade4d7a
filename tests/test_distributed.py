"""`maybe_initialize_distributed` for real: 2 processes x 2 fake CPU devices on loopback.

Each child is configured only through the environment a launcher would set
(ATOMSKILL_DISTRIBUTED, JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID),
calls the function, and checks the process count, the global devices and a psum
over a mesh that spans both processes (CPU collectives over gloo).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests.tiny_model import REPO, child_env

CHILD = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from atomskill_jax.training.mesh import make_mesh, maybe_initialize_distributed
assert maybe_initialize_distributed() is True  # on through $ATOMSKILL_DISTRIBUTED

import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

mesh = make_mesh()  # data over all devices of both processes
sharding = NamedSharding(mesh, P("data"))
# Each device holds (process index * 2 + local index + 1): the sum over 4 devices is 10.
local = {d: jax.device_put(np.array([jax.process_index() * 2 + i + 1], np.float32), d)
         for i, d in enumerate(jax.local_devices())}
x = jax.make_array_from_single_device_arrays(
    (jax.device_count(),), sharding, [local[d] for d in sharding.addressable_devices])
total = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "data"), mesh=mesh,
                              in_specs=P("data"), out_specs=P()))(x)
print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                  "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                  "psum": float(np.asarray(total.addressable_data(0))[0])}), flush=True)
jax.distributed.shutdown()
"""
TIMEOUT_S = 180
# What a coordinator says when its port was taken between our pick and its bind.
PORT_TAKEN = ("address already in use", "failed to add port", "could not start")


def _free_port() -> int:
    # The coordinator is JAX's gRPC server and takes a port number, not a socket: pick
    # a free one and release it. Another process could take it in between; that race
    # is retried below (PORT_TAKEN) rather than ignored.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(port: int) -> list[tuple[int, str, str]]:
    procs = []
    try:
        for pid in range(2):
            env = child_env()
            env.update(ATOMSKILL_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
            procs.append(subprocess.Popen([sys.executable, "-c", CHILD], cwd=REPO, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        out = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
            out.append((proc.returncode, stdout, stderr))
        return out
    finally:
        for proc in procs:  # a hung or failed peer must not outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)


def test_two_processes_initialise_and_reduce_across_each_other():
    for _ in range(3):
        results = _launch(_free_port())
        if not any(rc and any(m in err.lower() for m in PORT_TAKEN)
                   for rc, _, err in results):
            break
    reports = []
    for pid, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"process {pid} exited {rc}:\n{stderr[-3000:]}"
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["process_index"] for r in reports] == [0, 1]
    for r in reports:
        assert r["process_count"] == 2
        assert r["devices"] == 4 and r["local_devices"] == 2
        assert r["psum"] == 10.0  # 1 + 2 from process 0, 3 + 4 from process 1


def test_off_unless_asked(monkeypatch):
    from atomskill_jax.training import mesh

    monkeypatch.delenv("ATOMSKILL_DISTRIBUTED", raising=False)
    assert mesh.maybe_initialize_distributed(None) is False
    assert mesh.maybe_initialize_distributed(False) is False


def test_bad_process_id_is_named(monkeypatch):
    import pytest

    from atomskill_jax.training import mesh

    monkeypatch.setattr(mesh.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match=r"\$JAX_PROCESS_ID='one' is not an integer"):
        mesh.maybe_initialize_distributed(True)
