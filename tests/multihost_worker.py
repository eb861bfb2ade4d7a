"""The training processes of tests/test_multihost_training.py: the trainer's own entry
(`trainer.train`) on the stand-in model, recording which episode each row of the
batches it consumed came from.

    python -c "from tests.multihost_worker import main; main()" \
        DEVICES DATASET SHARDS OUT JOB [JOB ...]

DEVICES fake CPU devices in this process. With $ATOMSKILL_DISTRIBUTED=1 (and
$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID, as a launcher sets them)
the trainer joins the other processes itself (training/mesh.py `maybe_initialize_
distributed`). Each JOB, `WORKDIR:STEPS` or `WORKDIR:STEPS:GO_FILE` (start once GO_FILE
exists), trains WORKDIR to STEPS (a workdir with checkpoints resumes), one after the
other in the same processes (one launch: JAX and TensorFlow are imported once). After
job j each process writes OUT with ".j<j>.p<process index>" before ".json":
{process_index, process_count, local_devices, rows, result}.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback

GO_TIMEOUT_S = 240


def train_config(dataset: str, steps: int, shards: int):
    """configs/atomskill.py:tiny with the stand-in model, stage 'skill', `shards` data
    shards, checkpoints every 2 steps, and the mesh data 1 x fsdp 8: with 2 processes
    the sharded parameters (and their optimiser state) are split across the processes,
    not only within one."""
    from tests.tiny_model import tiny_train_config

    config = tiny_train_config(dataset, real_model=False, skill_steps=int(steps),
                               checkpoint_every=2)
    config.stage = "skill"
    config.data.shards = int(shards)
    config.mesh.data, config.mesh.fsdp = 1, 8
    return config


@contextlib.contextmanager
def recorded_rows():
    """Yields a list that gets, per batch the trainer reads (DataIterator.next_local),
    the episode index of each of this process's rows (from the segment uid)."""
    from atomskill_jax.data import iterator as iterator_lib, traj_transforms

    rows: list[list[int]] = []
    next_local = iterator_lib.DataIterator.next_local

    def recording(self):
        batch = next_local(self)
        rows.append([traj_transforms.decode_segment_uid(u)[1] for u in batch["skill"]["uid"]])
        return batch

    iterator_lib.DataIterator.next_local = recording
    try:
        yield rows
    finally:
        iterator_lib.DataIterator.next_local = next_local


def main(argv=None) -> None:
    devices, dataset, shards, out, *jobs = sys.argv[1:] if argv is None else argv
    import jax

    jax.config.update("jax_num_cpu_devices", int(devices))
    # Cross-process collectives of the CPU backend (its default has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from atomskill_jax.training import trainer

    try:
        _run_jobs(jax, trainer, dataset, int(shards), out, jobs)
    except BaseException:
        # Exit now: a normal exit would wait in JAX's shutdown barrier for the peer,
        # which waits in a collective for this process (minutes, until timeouts).
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if jax.process_count() > 1:
        jax.distributed.shutdown()


def _run_jobs(jax, trainer, dataset: str, shards: int, out: str, jobs) -> None:
    for j, job in enumerate(jobs):
        workdir, steps, *go = job.split(":")
        deadline = time.monotonic() + GO_TIMEOUT_S
        while go and not os.path.exists(go[0]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {j}: no {go[0]} within {GO_TIMEOUT_S} s")
            time.sleep(0.05)
        with recorded_rows() as rows:
            result = trainer.train(train_config(dataset, int(steps), shards), workdir)
        report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
                  "local_devices": jax.local_device_count(), "rows": rows, "result": result}
        path = out.replace(".json", f".j{j}.p{jax.process_index()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(path + ".tmp", path)  # the test polls for it: never half a file


if __name__ == "__main__":
    main()
