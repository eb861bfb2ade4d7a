"""Evaluation faults that lose nothing: an unusable --out is refused before any rollout;
the episodes finished before a worker is killed (or the evaluation interrupted) are on
disk, and the same evaluation again runs only the missing ones, to the same report."""

import functools
import json
import os
import signal

import numpy as np
import pytest

from atomskill_jax.eval import evaluate, rollout
from atomskill_jax.eval.episode_store import PREFIX, EpisodeStore
from atomskill_jax.policies.scripted import ScriptedExpertPolicy

TASK, EPISODES, MAX_STEPS = "reach", 3, 60
IDENTITY = {"checkpoint_step": 1, "epsilon": 0.1}


class NoisyExpert(ScriptedExpertPolicy):
    """The expert plus noise seeded per reset batch, as the learned policies seed: an
    episode's result then depends on the batch it runs in, so a resume that re-batched
    (or re-seeded) episodes would change the report. Records each batch it starts and
    can SIGKILL its own process at its k-th batch (a killed worker)."""

    batches: list = []  # class-level: filled in whichever process runs the policy

    def __init__(self, kill_at_batch: int = 0):
        super().__init__()
        self.kill_at_batch, self.started = kill_at_batch, 0

    def reset(self, task_info):
        super().reset(task_info)
        self.started += 1
        if self.started == self.kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        NoisyExpert.batches.append([info.episode for info in task_info])
        first = task_info[0]
        self.rng = np.random.default_rng([first.seed, first.layout, len(task_info)])

    def infer(self, observation):
        actions = super().infer(observation)
        return (actions + self.rng.normal(0.0, 0.3, actions.shape)).astype(np.float32)


def run(factory=NoisyExpert, **kwargs):
    kwargs = {"batch_size": 1, "num_workers": 0, **kwargs}
    return evaluate(factory, [TASK], EPISODES, (0,), max_steps=MAX_STEPS, progress=False,
                    **kwargs)


def same_report(a, b) -> bool:
    return a.results == b.results and a.to_dict()["summary"] == b.to_dict()["summary"]


def store_file(out) -> str:
    (path,) = [p for p in os.listdir(out) if p.startswith(PREFIX)]
    return os.path.join(out, path)


@pytest.mark.slow
def test_a_killed_worker_keeps_finished_episodes_and_the_rerun_runs_only_the_rest(tmp_path):
    reference = run()
    assert len({r.success_step for r in reference.results}) > 1  # episodes tell apart
    out = str(tmp_path / "report")
    with pytest.raises(rollout.WorkerDied) as err:  # dies starting its second batch
        run(functools.partial(NoisyExpert, kill_at_batch=2), num_workers=1, out_dir=out,
            identity=IDENTITY)
    message = str(err.value)
    assert f"task {TASK}, seed 0, episodes [1]" in message and "worker pid" in message
    assert "1 finished episodes are saved in " + store_file(out) in message
    assert "run the same command again to resume" in message
    kept = EpisodeStore(out, IDENTITY, log=lambda m: None).records
    assert [r.episode for _, r in kept.values()] == [0]

    # Again, with the default batch size (3 here): the recorded batches (1) are kept.
    NoisyExpert.batches = []
    resumed = run(batch_size=None, out_dir=out, identity=IDENTITY)
    assert NoisyExpert.batches == [[1], [2]]
    assert same_report(resumed, reference)
    assert resumed.meta["episodes_reused"] == 1

    NoisyExpert.batches = []  # a third time: everything is on disk
    assert same_report(run(batch_size=None, out_dir=out, identity=IDENTITY), reference)
    assert NoisyExpert.batches == []

    path = store_file(out)  # the first episode's record removed: only it runs again,
    with open(path) as f:   # and takes its place in the report
        lines = [line for line in f if '"result": {"task": "reach", "seed": 0, "episode": 0'
                 not in line]
    with open(path, "w") as f:
        f.writelines(lines)
    assert same_report(run(out_dir=out, identity=IDENTITY), reference)
    assert NoisyExpert.batches == [[0]]


@pytest.mark.slow
def test_a_torn_last_line_is_rerun_and_other_configurations_are_kept_apart(tmp_path, capsys):
    out = str(tmp_path / "report")
    first = run(out_dir=out, identity=IDENTITY)
    path = store_file(out)
    with open(path) as f:
        lines = f.readlines()
    assert json.loads(lines[-1])["result"]["episode"] == 2
    with open(path, "w") as f:  # killed while writing the last episode
        f.writelines(lines[:-1] + [lines[-1][:25]])
    NoisyExpert.batches = []
    capsys.readouterr()
    again = run(out_dir=out, identity=IDENTITY)
    assert NoisyExpert.batches == [[2]] and same_report(again, first)
    assert "dropped a torn last line" in capsys.readouterr().out
    with open(path) as f:
        assert f.readlines()[-1] == lines[-1]  # the torn bytes are gone, the line rewritten

    NoisyExpert.batches = []  # another checkpoint step: nothing of the first is reused
    other = dict(IDENTITY, checkpoint_step=2)
    run(out_dir=out, identity=other)
    assert NoisyExpert.batches == [[0], [1], [2]]
    said = capsys.readouterr().out
    assert f"ignoring {EPISODES} episodes in {path}: another configuration (differs in " \
           "checkpoint_step)" in said


@pytest.mark.slow
def test_episodes_run_in_other_batches_are_run_again_and_that_is_said(tmp_path, capsys):
    out = str(tmp_path / "report")
    run(out_dir=out, identity=IDENTITY)  # batches of 1
    NoisyExpert.batches = []
    capsys.readouterr()
    together = run(batch_size=3, out_dir=out, identity=IDENTITY)
    assert NoisyExpert.batches == [[0, 1, 2]]
    assert same_report(together, run(batch_size=3))  # what a fresh batch of 3 gives
    assert f"3 episodes in {store_file(out)} ran in other batches" in capsys.readouterr().out


class Unbuildable:
    """A policy factory that records being called (it must not be, on a bad --out)."""

    calls = 0

    def __call__(self):
        Unbuildable.calls += 1
        raise AssertionError("the policy was built before --out was checked")


@pytest.mark.parametrize("where", ["file", "under_a_file", "read_only_dir"])
def test_an_unusable_out_is_refused_before_any_rollout(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = str(blocker if where == "file" else blocker / "report")
    if where == "read_only_dir":
        out = str(tmp_path / "read_only")
        os.makedirs(out, mode=0o555)
        if os.access(out, os.W_OK):  # root writes anyway; a kernel folder refuses files
            out = "/proc/self/fdinfo"
            if not os.path.isdir(out):
                pytest.skip("no read-only directory to try (running as root, no /proc)")
    Unbuildable.calls = 0
    with pytest.raises(OSError, match="give another --out") as err:
        run(Unbuildable(), out_dir=out)
    assert out in str(err.value) and Unbuildable.calls == 0


def test_eval_command_refuses_a_bad_out_before_rolling_out(
        tiny_trained_workdir, tmp_path, monkeypatch, capsys):
    from atomskill_jax import cli
    from atomskill_jax.policies import loading

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(loading, "load_policy", must_not_run)
    monkeypatch.setattr(rollout, "run_jobs", must_not_run)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = cli.main(["eval", f"--workdir={tiny_trained_workdir}", f"--tasks={TASK}",
                     "--episodes=1", "--workers=0", f"--out={blocker}/report"])
    assert code == 2
    assert f"--out={blocker}/report is not a writable directory" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_command_resumes_into_its_default_report_directory(tiny_trained_workdir,
                                                                tmp_path_factory, capsys):
    from atomskill_jax import cli
    from tests.tiny_model import copy_workdir

    workdir = copy_workdir(tiny_trained_workdir, tmp_path_factory, "eval_resume")
    # Two seeds of one episode: two jobs, so one can be finished and one not.
    argv = ["eval", f"--workdir={workdir}", f"--tasks={TASK}", "--episodes=1", "--seeds=0,1",
            "--workers=0", "--max-steps=4"]
    assert cli.main(argv) == 0
    (report_dir,) = [os.path.join(workdir, "eval", d) for d in os.listdir(
        os.path.join(workdir, "eval"))]
    with open(os.path.join(report_dir, "report.json")) as f:
        before = json.load(f)
    path = store_file(report_dir)
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:  # as if killed before the second episode finished
        f.writelines(lines[:-1])
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert f"resuming: 1 of 2 episodes already in {path}; running the other 1" in \
        capsys.readouterr().out
    with open(os.path.join(report_dir, "report.json")) as f:
        after = json.load(f)
    assert after["episodes"] == before["episodes"] and after["summary"] == before["summary"]
    assert os.listdir(os.path.join(workdir, "eval")) == [os.path.basename(report_dir)]

    # The workdir trained again to the same step: its old episodes are not reused.
    step_dir = os.path.join(workdir, "sampler", "checkpoints", str(before["meta"][
        "checkpoint_step"]))
    stat = os.stat(step_dir)
    os.utime(step_dir, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "resuming" not in capsys.readouterr().out
    assert len(os.listdir(os.path.join(workdir, "eval"))) == 2




def test_a_worker_keeps_only_the_current_tasks_environments(monkeypatch):
    # A worker that kept every task's environments ran out of memory on MT50.
    from atomskill_jax.eval import suites

    made, closed = [], []

    class Env:
        def __init__(self, task):
            self.task = task
            made.append(task)

        def close(self):
            closed.append(self.task)

    monkeypatch.setattr(suites, "make_env", lambda task, spec, **kw: Env(task))
    rollout._init_worker(ScriptedExpertPolicy, rollout.WorkerOptions())
    policy = rollout._policy()
    monkeypatch.setitem(rollout._STATE, "embeddings", {t: np.zeros(384, np.float32)
                                                       for t in ("reach", "push")})
    try:
        first = rollout._envs("reach", 2, policy, 50)
        assert rollout._envs("reach", 2, policy, 50) == first  # reused for the next seed
        rollout._envs("push", 3, policy, 50)
        assert closed == ["reach", "reach"] and made == ["reach"] * 2 + ["push"] * 3
        assert list(rollout._STATE["envs"]) == [("push", 50)]
    finally:
        rollout._close_worker()
    assert closed == ["reach", "reach", "push", "push", "push"]
