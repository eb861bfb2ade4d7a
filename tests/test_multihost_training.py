"""Multi-host training for real: 2 processes x 4 fake CPU devices on loopback against
1 process x 8 devices, through the trainer's own entry (`trainer.train`; the children
are tests/multihost_worker.py, configured only by a launcher's environment).

Both runs use `data.shards=2` and the mesh data 1 x fsdp 8 (parameters sharded across
the two processes). The 2-process run must read one shard per process (disjoint
episode sets covering the dataset), build the same global batches as the 1-process
run (which reads both shards), and reach the same losses and train state. Then a
checkpoint moves between process counts: the 2-process run's step 2 resumes in 1
process, the 1-process run's step 2 resumes in 2 processes, and both reach the
uninterrupted 1-process run's step 4 (same batches, same state).

Not bit-exact: the gradient all-reduce between the two processes goes through gloo,
which adds the devices' partial sums in another order than the single process's
in-memory all-reduce; float32 addition is not associative, so Adam's moments differ at
rounding level (measured: at most 4e-9). The tolerances below are far under one step's
change (lr 1e-4), so wrong batches or a restore that lost the state still fail.

Timing: the 1-process runs train in this process (8 fake devices, tests/conftest.py)
while the two children train beside them; the children are launched once for both of
their runs (the fresh one, then the resume), since importing JAX and TensorFlow
dominates a tiny run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import numpy as np
import pytest

from tests import synthetic_rlds
from tests.multihost_worker import recorded_rows, train_config
from tests.train_helpers import Child, checkpoint_arrays

# 4 short episodes, 2 per shard: a few batches of 4 rows per shard see every episode.
SEGMENTS = ((3, 3), (2, 4), (4, 2), (3, 3))
SHARDS = 2
TIMEOUT_S = 240
WORKER = "from tests.multihost_worker import main\nmain()\n"
# What a coordinator says when its port was taken between our pick and its bind.
PORT_TAKEN = ("address already in use", "failed to add port", "could not start")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from atomskill_jax.data import sources, statistics_compute

    path = synthetic_rlds.cached(tmp_path_factory, "multihost", segments=SEGMENTS)
    # Once here, not in each of the three processes that train on it at once.
    statistics_compute.load_or_compute_statistics(sources.open_source(path))
    return path


def _free_port() -> int:
    # JAX's coordinator takes a port number: pick a free one and release it (a race
    # with another process taking it is retried, see PORT_TAKEN).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """The two processes (ids 0 and 1) of one distributed launch running `jobs`
    (tests/multihost_worker.py: "WORKDIR:STEPS[:GO_FILE]", one after the other)."""

    def __init__(self, dataset, out, jobs):
        self.args = (dataset, SHARDS, out, *jobs)
        self.out = str(out)
        self._start()

    def _start(self):
        env = {"ATOMSKILL_DISTRIBUTED": "1", "JAX_NUM_PROCESSES": "2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}"}
        self.children = [Child(WORKER, 4, *self.args, env=dict(env, JAX_PROCESS_ID=str(i)),
                               prelude=False) for i in (0, 1)]

    def _report_paths(self, job: int) -> list[str]:
        return [self.out.replace(".json", f".j{job}.p{i}.json") for i in (0, 1)]

    def _fail(self) -> None:
        """Kill both (a failed process's peer waits in a collective); fail with their
        stderr, or relaunch once more when the coordinator's port was taken."""
        self.kill()
        errors = ["".join(c.stderr) for c in self.children]
        codes = [c.proc.returncode for c in self.children]
        if (not os.path.exists(self._report_paths(0)[0]) and self._relaunches < 2
                and any(m in e.lower() for e in errors for m in PORT_TAKEN)):
            self._relaunches += 1
            self._start()
            return
        raise AssertionError("\n".join(f"process {i} of 2 exited {code}; its stderr ends:\n"
                                        f"{err[-3000:]}"
                                        for i, (code, err) in enumerate(zip(codes, errors))))

    _relaunches = 0

    def wait_for(self, job: int, timeout: float = TIMEOUT_S) -> list[dict]:
        """Both processes' reports of `job`, once written."""
        deadline = time.monotonic() + timeout
        paths = self._report_paths(job)
        while not all(os.path.exists(p) for p in paths):
            if any(c.proc.poll() not in (None, 0) for c in self.children):
                self._fail()
            elif all(c.proc.poll() == 0 for c in self.children):
                raise AssertionError(f"both processes exited without job {job}'s report")
            elif time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"job {job} not done in {timeout:.0f} s; process 0's "
                                     f"stderr ends:\n{''.join(self.children[0].stderr)[-3000:]}")
            time.sleep(0.05)
        reports = []
        for path in paths:
            with open(path) as f:
                reports.append(json.load(f))
        return reports

    def finish(self, timeout: float = 60) -> None:
        for i, child in enumerate(self.children):
            assert child.wait_exit(timeout) == 0, (
                f"process {i} of 2 exited {child.proc.returncode} after its jobs:\n"
                f"{''.join(child.stderr)[-3000:]}")

    def kill(self) -> None:
        for child in self.children:
            child.kill()
            child.wait_exit(30)


def _train_here(dataset, workdir, steps: int) -> list[list[int]]:
    """The 1-process x 8-device run, in this process; the episodes of its batches' rows."""
    from atomskill_jax.training import trainer

    with recorded_rows() as rows:
        result = trainer.train(train_config(dataset, steps, SHARDS), str(workdir))
    assert result["skill"]["step"] == steps
    return rows


def _losses(workdir) -> dict:
    """{step: metrics} of metrics.jsonl (a resumed run appends; the last line wins)."""
    out = {}
    with open(os.path.join(workdir, "skill", "metrics.jsonl")) as f:
        for line in f:
            entry = json.loads(line)
            out[entry["step"]] = entry
    return out


def _checkpoint(workdir, step: int) -> dict:
    """The skill stage's checkpoint arrays at `step`, restored replicated here."""
    return checkpoint_arrays(workdir, "skill", step)


def _assert_same_run(expected_dir, actual_dir, steps, what: str) -> None:
    """Same losses at `steps` and the same checkpoint at the last, to rounding (see the
    module docstring for why not bit for bit)."""
    expected, actual = _losses(expected_dir), _losses(actual_dir)
    for step in steps:
        for key in ("loss", "grad_norm", "param_norm"):
            np.testing.assert_allclose(actual[step][key], expected[step][key], rtol=1e-6,
                                       err_msg=f"{what}: {key} at step {step}")
    a, b = _checkpoint(expected_dir, steps[-1]), _checkpoint(actual_dir, steps[-1])
    assert sorted(a) == sorted(b), f"{what}: different arrays"
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7,
                                   err_msg=f"{what}: {name} at step {steps[-1]}")


@pytest.fixture(scope="module")
def launch(dataset, tmp_path_factory):
    """The 2-process launch (2 x 4 devices): 'two' 0 -> 2, then, once the test makes it
    ready, 'one_then_two' (the 1-process run's step 2) -> 4."""
    root = tmp_path_factory.mktemp("multihost")
    go = root / "one_then_two.ready"
    pair = Pair(dataset, root / "report.json",
                [f"{root / 'two'}:2", f"{root / 'one_then_two'}:4:{go}"])
    yield {"root": root, "go": go, "pair": pair, "dataset": dataset}
    pair.kill()


@pytest.fixture(scope="module")
def first_runs(launch):
    """Here (1 x 8 devices), beside the launch's first run: 'one' 0 -> 4 (checkpoints
    2 and 4), whose step 2 the launch's second run resumes."""
    root = launch["root"]
    rows_one = _train_here(launch["dataset"], root / "one", 4)
    shutil.copytree(root / "one", root / "one_then_two")
    shutil.rmtree(root / "one_then_two" / "skill" / "checkpoints" / "4")
    launch["go"].touch()
    return {"rows_one": rows_one, "reports": launch["pair"].wait_for(0)}


@pytest.fixture(scope="module")
def resumed_runs(launch, first_runs):
    """Here, beside the launch's second run: 'two_then_one' (the 2-process step 2) -> 4."""
    root = launch["root"]
    shutil.copytree(root / "two", root / "two_then_one")
    rows = _train_here(launch["dataset"], root / "two_then_one", 4)
    reports = launch["pair"].wait_for(1)
    launch["pair"].finish()
    return {"rows_two_then_one": rows, "reports": reports}


def test_two_processes_read_their_shards_and_train_as_one(launch, first_runs):
    root, reports, rows_one = launch["root"], first_runs["reports"], first_runs["rows_one"]
    assert [(r["process_index"], r["process_count"], r["local_devices"]) for r in reports] \
        == [(0, 2, 4), (1, 2, 4)]
    assert [r["result"]["skill"]["step"] for r in reports] == [2, 2]
    # Each process read its own shard: disjoint episodes, together all of them.
    seen = [{e for batch in r["rows"] for e in batch} for r in reports]
    assert not seen[0] & seen[1], f"both processes read episodes {seen[0] & seen[1]}"
    assert seen[0] | seen[1] == set(range(len(SEGMENTS)))
    # The global batch (process 0's rows, then process 1's) is the 1-process batch.
    assert len(reports[0]["rows"]) == 2
    for step in range(2):
        assert reports[0]["rows"][step] + reports[1]["rows"][step] == rows_one[step], step
    _assert_same_run(root / "one", root / "two", [1, 2], "2 processes vs 1")
    # Process 1 wrote array data of its own: parameters really were split across processes.
    step2 = root / "two" / "skill" / "checkpoints" / "2" / "train_state"
    assert os.listdir(step2 / "ocdbt.process_1" / "d")


def test_checkpoints_move_between_process_counts(launch, first_runs, resumed_runs):
    root, rows_one = launch["root"], first_runs["rows_one"]
    reports = resumed_runs["reports"]
    # Both continue the data where the checkpoint left it: steps 3 and 4 of the
    # uninterrupted run, in the same rows.
    assert resumed_runs["rows_two_then_one"] == rows_one[2:4]
    assert [a + b for a, b in zip(reports[0]["rows"], reports[1]["rows"])] == rows_one[2:4]
    assert [r["result"]["skill"]["step"] for r in reports] == [4, 4]
    _assert_same_run(root / "one", root / "two_then_one", [3, 4], "2 processes, then 1")
    _assert_same_run(root / "one", root / "one_then_two", [3, 4], "1 process, then 2")
