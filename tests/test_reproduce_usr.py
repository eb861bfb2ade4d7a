"""`atomskill reproduce usr_table1`: the exact command list of the few-shot protocol, the
table rendered from reports in `atomskill eval`'s layout, and finished stages skipped on a
rerun. Every stage is faked (no data built, nothing trained, nothing rolled out)."""

import os
import shlex
import shutil

import pytest

from atomskill_jax import cli
from atomskill_jax.eval import report as report_lib
from atomskill_jax.eval import reproduce, reproduce_usr
from atomskill_jax.eval.metrics import EpisodeResult

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("usr", "usr_no_skill", "atomskill", "mlp")
TEST_TASKS = ["bin-picking", "box-close", "hand-insert", "door-lock", "door-unlock"]


def _datasets(suite):
    return "--config.data.datasets=" + repr(({"name": f"metaworld_scripted/{suite}",
                                              "weight": 1.0},))


def _expected(out, shots, seeds="0,1,2", episodes=20, in_distribution=False):
    """The protocol written out by hand: a wrong flag in the code or the sweep fails here."""
    pre, ckpt = f"{out}/usr_pretrain", f"{out}/usr_pretrain/pretrain/checkpoints"
    adapt = [f"--config.train.init_from={ckpt}", f"--config.data.statistics_from={ckpt}"]
    cmds = [["build-data", "metaworld", "--suite=ml45_train", "--episodes-per-task=25",
             "--action-noise=0.1", f"--out={out}/data/ml45_train"],
            ["train", "--config=configs/usr.py:cpu", f"--workdir={pre}", "--config.stage=pretrain",
             f"--config.data.data_dir={out}/data/ml45_train", _datasets("ml45_train")]]
    for k in shots:
        data = [f"--config.data.data_dir={out}/data/ml45_test_k{k}", _datasets("ml45_test")]
        cmds.append(["build-data", "metaworld", "--suite=ml45_test", f"--episodes-per-task={k}",
                     "--action-noise=0.1", f"--out={out}/data/ml45_test_k{k}"])
        cmds += [
            ["train", "--config=configs/usr.py:cpu", f"--workdir={out}/usr_k{k}",
             "--config.stage=adapt", *data, *adapt],
            ["train", "--config=configs/usr.py:cpu", f"--workdir={out}/usr_no_skill_k{k}",
             "--config.stage=adapt", "--config.model.policy_condition=instruction", *data,
             *adapt],
            ["train", "--config=configs/atomskill.py:cpu", f"--workdir={out}/atomskill_k{k}",
             *data],
            ["train", "--config=configs/mlp.py:cpu", f"--workdir={out}/mlp_k{k}", *data]]
        cmds += [["eval", f"--workdir={out}/{r}_k{k}", "--suite=ml45_test",
                  f"--episodes={episodes}", f"--seeds={seeds}", f"--name={r}_k{k}"]
                 for r in ROWS]
    if in_distribution:
        w = f"{out}/usr_in_distribution"
        cmds += [["train", "--config=configs/usr.py:cpu", f"--workdir={w}",
                  "--config.stage=adapt",
                  f"--config.data.data_dir={out}/data/ml45_train", _datasets("ml45_train"),
                  *adapt],
                 ["eval", f"--workdir={w}", "--suite=ml45_train", f"--episodes={episodes}",
                  f"--seeds={seeds}", "--name=usr_in_distribution"]]
    return cmds


def _printed(capsys, argv):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    return [shlex.split(line)[1:] for line in out.splitlines() if line.startswith("atomskill ")], out


def test_print_commands_is_the_protocol(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are printed relative to the working directory
    out = str(tmp_path / "t")
    cmds, _ = _printed(capsys, ["reproduce", "usr_table1", f"--out={out}", "--print-commands"])
    assert cmds == _expected(out, (5, 10, 50))
    cmds, text = _printed(capsys, ["reproduce", "usr_table1", f"--out={out}", "--shots=10,5",
                                   "--seeds=3,4", "--episodes=7", "--in-distribution",
                                   "--print-commands"])
    assert cmds == _expected(out, (10, 5), seeds="3,4", episodes=7, in_distribution=True)
    assert [c[0] for c in cmds].count("train") == 1 + 2 * 4 + 1  # Stage I once
    assert text.splitlines()[-1] == (f"# atomskill reproduce usr_table1 --out={out} "
                                     "--shots=10,5 --seeds=3,4 --episodes=7 --in-distribution")
    assert not os.path.exists(out)  # printing runs nothing


def test_other_tables_options_are_refused(tmp_path, capsys):
    for bad in ("--data=/x", "--suite=mt10", "--train-seeds=2", "--config.seed=3"):
        assert cli.main(["reproduce", "usr_table1", f"--out={tmp_path}/o", bad,
                         "--print-commands"]) == 2
        assert "not taken here" in capsys.readouterr().err
    assert cli.main(["reproduce", "usr_table1", f"--out={tmp_path}/o", "--shots=5,5",
                     "--print-commands"]) == 2
    assert "--shots=5,5" in capsys.readouterr().err
    assert cli.main(["reproduce", "nope", f"--out={tmp_path}/o", "--print-commands"]) == 2
    assert "usr_table1" in capsys.readouterr().err  # listed with the other tables


# -- a faked protocol -------------------------------------------------------------------

STEPS = {"pretrain": 80, "adapt": 30, "skill": 20, "sampler": 10}
# Successes out of 2 episodes per task, per (run, eval seed): the table must show these.
SUCCESSES = {"usr_k5": (2, 2), "usr_no_skill_k5": (1, 1), "atomskill_k5": (0, 0),
             "mlp_k5": (2, 0), "usr_k10": (2, 2), "usr_no_skill_k10": (2, 2),
             "atomskill_k10": (1, 1), "mlp_k10": (1, 1), "usr_in_distribution": (1, 1)}


def _opts(argv):
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def _write_eval_report(workdir, name, suite, seeds, episodes, step, successes):
    """What `atomskill eval` leaves behind: W/eval/<suite>-step<S>-<id>/report.json."""
    from atomskill_jax.envs import metaworld_tasks

    tasks = list(metaworld_tasks.resolve_tasks(suite))
    results = [EpisodeResult(t, s, e, e, e < n, 2 if e < n else 1, 2, 100)
               for t in tasks for s, n in zip(seeds, successes) for e in range(episodes)]
    meta = {"checkpoint_step": step, "max_steps": "task default", "command": "atomskill eval",
            "runtime_options": dict(reproduce.DEFAULT_RUNTIME, name=name)}
    report = report_lib.Report(name, tasks, seeds, episodes, results, meta=meta)
    report_lib.write_report(report, os.path.join(workdir, "eval", f"{suite}-step{step}-fake"))


class FakeChild:
    """Stands in for child_commands.run: each stage leaves its outputs, nothing runs."""

    def __init__(self):
        self.calls = []

    def __call__(self, cmd, **_):
        argv = cmd[3:]  # [python, -m, atomskill_jax, *argv]
        self.calls.append(argv)
        o = _opts(argv)
        if argv[0] == "build-data":
            suite = o["suite"]
            d = os.path.join(o["out"], "metaworld_scripted", suite, "1.0.0")
            os.makedirs(d, exist_ok=True)
            open(os.path.join(d, "dataset_info.json"), "w").write("{}")
        elif argv[0] == "train":
            stages = ({"pretrain": ["pretrain"], "adapt": ["adapt"]}[o["config.stage"]]
                      if "config.stage" in o else
                      ["skill", "sampler"] if "atomskill.py" in o["config"] else ["skill"])
            for stage in stages:
                os.makedirs(os.path.join(o["workdir"], stage, "checkpoints", str(STEPS[stage])),
                            exist_ok=True)
        elif argv[0] == "eval":
            have = reproduce.checkpoint_steps(o["workdir"])
            step = have.get("adapt", have.get("sampler", have.get("skill")))
            seeds = [int(s) for s in o["seeds"].split(",")]
            _write_eval_report(o["workdir"], o["name"], o["suite"], seeds, int(o["episodes"]),
                               step, SUCCESSES[o["name"]][:len(seeds)])
        return 0


@pytest.fixture
def fake_child(monkeypatch):
    fake = FakeChild()
    monkeypatch.setattr(reproduce.child_commands, "run", fake)
    return fake


def _run(capsys, out, *extra):
    argv = ["reproduce", "usr_table1", f"--out={out}", "--shots=5,10", "--seeds=0,1",
            "--episodes=2", *extra]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_table_from_reports_then_finished_stages_are_skipped(tmp_path, capsys, fake_child):
    out = tmp_path / "t"
    first = _run(capsys, out, "--in-distribution")
    assert [c[0] for c in fake_child.calls] == (
        ["build-data", "train"] + (["build-data"] + ["train"] * 4 + ["eval"] * 4) * 2
        + ["train", "eval"])
    table = (out / "usr_table1.md").read_text()
    # One row per method, one column per k: SR mean ± CI (ATP), from the reports' episodes.
    assert "| Method | 5 demos | 10 demos |" in table
    assert "| USR | 100.0 ± 0.0 (ATP 100.0 ± 0.0) | 100.0 ± 0.0 (ATP 100.0 ± 0.0) |" in table
    assert "| USR (No Skill) | 50.0 ± 0.0 (ATP 75.0 ± 0.0) | 100.0 ± 0.0 (ATP 100.0 ± 0.0) |" \
        in table
    assert "| AtomSkill | 0.0 ± 0.0 (ATP 50.0 ± 0.0) | 50.0 ± 0.0 (ATP 75.0 ± 0.0) |" in table
    # Two seeds at 100% and 0%: mean 50, half-width t(0.975, 1) * 70.7 / sqrt(2) = 635.3.
    assert "| MLP | 50.0 ± 635.3 (ATP 75.0 ± 317.6) | 50.0 ± 0.0 (ATP 75.0 ± 0.0) |" in table
    assert all(t in table for t in TEST_TASKS)  # the per-task tables
    assert "In distribution" in table and "on those 45 tasks: SR 50.0 ± 0.0" in table
    assert "What each stage cost" in table and "| train usr_pretrain |" in table
    data = __import__("json").loads((out / "usr_table1.json").read_text())
    assert data["runs"]["usr_k5"]["summary"]["groups"]["average"]["sr"]["mean"] == 1.0
    assert data["runs"]["usr_k5"]["report"].startswith(str(out / "usr_k5" / "eval"))
    csv_rows = (out / "usr_table1.csv").read_text().splitlines()
    assert csv_rows[0].startswith("run,row,shots,suite,kind,name,sr_mean")
    assert len(csv_rows) == 1 + 8 * (5 + 1) + (45 + 1)  # tasks + average per run
    assert "== what each stage cost" in first

    before = (out / "usr_table1.md").read_text()
    fake_child.calls.clear()
    second = _run(capsys, out, "--in-distribution")
    assert fake_child.calls == []  # nothing built, trained or evaluated again
    assert "== build ml45_test (5 demos per task): already built" in second
    assert "== train usr_pretrain: already trained" in second
    assert "== evaluate mlp_k10: reusing the report" in second
    assert "reused (0.0 min then)" in second  # what the reused stage took when it ran
    assert (out / "usr_table1.md").read_text() == before

    # A run whose checkpoints are gone trains again (its report, at the same step, is
    # still the one); other evaluation seeds re-evaluate every run but train nothing.
    shutil.rmtree(out / "mlp_k5" / "skill")
    _run(capsys, out)
    assert [(c[0], _opts(c)["workdir"]) for c in fake_child.calls] == [
        ("train", str(out / "mlp_k5"))]
    fake_child.calls.clear()
    _run(capsys, out, "--seeds=1")
    assert [c[0] for c in fake_child.calls] == ["eval"] * 8


def test_render_leaves_missing_cells_empty(tmp_path):
    class Args:
        out, shots, eval_seeds, episodes, in_distribution = str(tmp_path), "5,10", "0", 2, False
        data = suite = tasks = config = max_steps = eval_workers = None
        train_seeds, demos_per_task, action_noise, config_overrides = 1, 25, 0.1, []

    p = reproduce_usr.plan(Args)
    w = str(tmp_path / "usr_k5")
    _write_eval_report(w, "usr_k5", "ml45_test", [0], 2, 30, (1,))
    text = reproduce_usr.render(p, {"usr_k5": os.path.join(w, "eval", "ml45_test-step30-fake")})
    assert "| USR | 50.0 (ATP 75.0) | – |" in text  # one seed: no interval
    assert "| MLP | – | – |" in text and "10 demos per task, per task" not in text
