"""`atomskill reproduce TABLE`: the commands of each paper table (variants, overrides,
order, evaluation settings), what counts as done, and one table end to end on the tiny
config, twice (the second run reuses every run and report)."""

import json
import os
import shlex

import pytest

from atomskill_jax import cli
from atomskill_jax.eval import reproduce
from tests.fast_compile import child_xla_flags
from tests.tiny_model import REPO

# Written out here, not read from configs/sweeps: a wrong mapping there fails these tests.
EXPECTED = {
    "table1": {"full": {}, "act_baseline": {"model.decoder.skill_conditioning": "False"}},
    "table4": {"full": {},
               "no_temporal": {"model.contrastive.temporal": "False"},
               "no_semantic": {"model.contrastive.semantic": "False"},
               "no_contrastive": {"model.contrastive.temporal": "False",
                                  "model.contrastive.semantic": "False"}},
    "table5": {"full": {}, "no_keypose": {"model.decoder.predict_keypose": "False"}},
}


def _commands(capsys, argv):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    return [shlex.split(line) for line in out.splitlines() if line.startswith("atomskill ")], out


def _options(argv):
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


@pytest.mark.parametrize("table", sorted(EXPECTED))
def test_print_commands_lists_the_tables_variants_and_settings(table, tmp_path, capsys):
    out = str(tmp_path / "t")
    cmds, text = _commands(capsys, ["reproduce", table, f"--out={out}", "--print-commands",
                                    "--train-seeds=2", "--eval-seeds=0,2,5", "--episodes=7",
                                    "--config.data.batch_size=16"])
    kinds = [c[1] for c in cmds]
    n = 2 * len(EXPECTED[table])
    assert kinds == ["build-data"] + ["train"] * n + ["eval"] * n  # data, train, eval
    assert not os.path.exists(out)  # printing runs nothing
    build = _options(cmds[0])
    assert cmds[0][2] == "metaworld" and build["suite"] == "rlbench6"
    assert build["out"] == f"{out}/data" and build["episodes-per-task"] == "25"

    trains = {}
    for c in cmds[1:1 + n]:
        opts = _options(c)
        assert opts["config"].endswith("configs/atomskill.py:cpu")
        assert opts["config.data.data_dir"] == f"{out}/data"
        assert opts["config.data.batch_size"] == "16"  # the user's overrides pass through
        run = os.path.basename(opts["workdir"])
        assert opts["workdir"] == f"{out}/{run}" and run.endswith(f"_seed{opts['config.seed']}")
        model = {k[len("config."):]: v for k, v in opts.items() if k.startswith("config.model.")}
        trains[run] = model
    assert trains == {f"{v}_seed{s}": overrides
                      for v, overrides in EXPECTED[table].items() for s in (0, 1)}

    evals = [_options(c) for c in cmds[1 + n:]]
    assert [os.path.basename(e["workdir"]) for e in evals] == list(trains)
    for e in evals:
        assert (e["suite"], e["episodes"], e["seeds"]) == ("rlbench6", "7", "0,2,5")
    # The last line says how to make the table from these runs.
    assert f"# atomskill reproduce {table} --out={out}" in text and "--print-commands" not in \
        text.splitlines()[-1]


def test_print_commands_with_existing_data(tmp_path, capsys):
    dataset = tmp_path / "ds" / "1.0.0"
    dataset.mkdir(parents=True)
    (dataset / "dataset_info.json").write_text("{}")
    cmds, _ = _commands(capsys, ["reproduce", "table5", f"--out={tmp_path}/o", f"--data={dataset}",
                                 "--tasks=pick-place", "--eval-seeds=3", "--episodes=2",
                                 "--max-steps=50", "--print-commands"])
    assert [c[1] for c in cmds] == ["train", "train", "eval", "eval"]  # no build
    for c in cmds[:2]:
        assert _options(c)["config.data.datasets"] == repr(({"name": str(dataset),
                                                             "weight": 1.0},))
    for c in cmds[2:]:
        e = _options(c)
        assert (e["tasks"], e["seeds"], e["episodes"], e["max-steps"]) == (
            "pick-place", "3", "2", "50")
    # A data root instead: the builder's --out, the dataset found under it by name.
    cmds, _ = _commands(capsys, ["reproduce", "table1", f"--out={tmp_path}/o",
                                 f"--data={tmp_path}/root", "--print-commands"])
    assert _options(cmds[0])["config.data.data_dir"] == f"{tmp_path}/root"


def test_unknown_table_and_missing_data_are_clear_errors(tmp_path, capsys):
    assert cli.main(["reproduce", "table2", f"--out={tmp_path}", "--print-commands"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'table2'" in err and all(t in err for t in EXPECTED)
    assert cli.main(["reproduce", "table1", f"--out={tmp_path}", f"--data={tmp_path}/none"]) == 2
    assert "metaworld_scripted/rlbench6" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def _fake_run(tmp_path, p):
    run = {"name": "full_seed0", "workdir": str(tmp_path / "w"),
           "train": ["train", "--config=c.py:cpu", f"--workdir={tmp_path / 'w'}"]}
    for stage, step in (("skill", 10), ("sampler", 5)):
        os.makedirs(os.path.join(run["workdir"], stage, "checkpoints", str(step)))
    os.makedirs(os.path.join(run["workdir"], "sampler", "checkpoints", "7.orbax-checkpoint-tmp-1"))
    return run


def _write_report(workdir, name, **changes):
    report = {"tasks": ["pick-place"], "seeds": [0, 1], "episodes_per_task": 3,
              "meta": {"checkpoint_step": 5, "max_steps": "task default",
                       "runtime_options": dict(reproduce.DEFAULT_RUNTIME, name="x")}}
    for key, value in changes.items():
        (report["meta"] if key in report["meta"] else report)[key] = value
    os.makedirs(os.path.join(workdir, "eval", name))
    with open(os.path.join(workdir, "eval", name, "report.json"), "w") as f:
        json.dump(report, f)


def test_what_counts_as_trained_and_evaluated(tmp_path):
    p = {"tasks": ["pick-place"], "eval_seeds": [0, 1], "episodes": 3, "max_steps": None}
    run = _fake_run(tmp_path, p)
    assert reproduce.checkpoint_steps(run["workdir"]) == {"skill": 10, "sampler": 5}
    assert reproduce.latest_step(run["workdir"]) == 5
    # Reports made with other settings, or at another checkpoint, do not count.
    _write_report(run["workdir"], "a", seeds=[0])
    _write_report(run["workdir"], "b", episodes_per_task=20)
    _write_report(run["workdir"], "c", checkpoint_step=10)
    _write_report(run["workdir"], "d", max_steps=30)
    _write_report(run["workdir"], "e", runtime_options=dict(reproduce.DEFAULT_RUNTIME,
                                                           requery_every=4))
    _write_report(run["workdir"], "f", tasks=["pick-place", "drawer-close"])
    assert reproduce.find_report(run, p) is None
    _write_report(run["workdir"], "g")
    assert reproduce.find_report(run, p) == os.path.join(run["workdir"], "eval", "g")

    assert not reproduce.trained(run)  # never marked: the trainer decides (resume / no-op)
    reproduce._mark_trained(run)
    assert reproduce.trained(run)
    os.rename(os.path.join(run["workdir"], "sampler", "checkpoints", "5"),
              os.path.join(run["workdir"], "sampler", "checkpoints", "4"))
    assert not reproduce.trained(run)  # its checkpoints changed: train (resume) again
    other = dict(run, train=run["train"] + ["--config.seed=1"])
    with pytest.raises(FileExistsError, match="trained by another command"):
        reproduce.trained(other)


@pytest.mark.slow
def test_table1_end_to_end_then_everything_is_reused(metaworld_rlds_dir, tmp_path, monkeypatch,
                                                     capsys):
    """Tiny config on the fixture dataset, one task, 1 episode, 1 eval seed: both rows in
    the table; the second invocation trains and evaluates nothing."""
    # Children: cheaper XLA optimisation and a compilation cache (as tests/tiny_model.py).
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                    "--xla_llvm_disable_expensive_passes=true"
                       + child_xla_flags())  # tests/fast_compile.py
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.environ.get(
        "ATOMSKILL_TEST_JAX_CACHE", str(tmp_path / "jax_cache")))  # the session's (conftest)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    out = tmp_path / "t1"
    argv = ["reproduce", "table1", f"--out={out}",
            f"--config={os.path.join(REPO, 'configs', 'atomskill.py')}:tiny",
            f"--data={metaworld_rlds_dir}", "--tasks=pick-place", "--episodes=1",
            "--eval-seeds=0", "--max-steps=20", "--eval-workers=0"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "== train full_seed0\n$ atomskill train" in first
    assert "== evaluate act_baseline_seed0\n$ atomskill eval" in first
    evals = [line for line in first.splitlines() if line.startswith("$ atomskill eval")]
    assert len(evals) == 2 and all("--workers=0" in line for line in evals)
    assert not (out / "data").exists()  # --data given: nothing built
    table = (out / "table1.md").read_text()
    assert "| full | " in table and "| act_baseline | " in table and "pick-place" in table
    data = json.loads((out / "table1.json").read_text())
    assert list(data["rows"]) == ["full", "act_baseline"]
    assert data["rows"]["full"]["summary"]["tasks"]["pick-place"]["sr"]["n"] == 1
    csv_rows = (out / "table1.csv").read_text().splitlines()
    assert csv_rows[0].startswith("variant,") and len(csv_rows) == 1 + 2 * 2  # task + average
    assert reproduce.checkpoint_steps(str(out / "full_seed0")) == {"skill": 4, "sampler": 2}
    assert reproduce.checkpoint_steps(str(out / "act_baseline_seed0")) == {"skill": 4}

    def state():
        files = {}
        for run in ("full_seed0", "act_baseline_seed0"):
            for root, dirs, names in os.walk(out / run):
                for n in dirs + names:
                    path = os.path.join(root, n)
                    files[path] = os.stat(path).st_mtime_ns
        return files

    before = state()
    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert "$ atomskill" not in second  # no stage ran
    for run in ("full_seed0", "act_baseline_seed0"):
        assert f"== train {run}: already trained" in second
        assert f"== evaluate {run}: reusing the report" in second
    assert state() == before  # no checkpoint, report or calibration written again
    assert (out / "table1.md").read_text() == table


def test_training_seeds_pool_into_one_row():
    from atomskill_jax.eval import report as report_lib
    from atomskill_jax.eval.metrics import EpisodeResult

    def rep(success):
        results = [EpisodeResult("pick-place", s, 0, 0, success, 3 if success else 1, 3, 10)
                   for s in (0, 1)]
        return report_lib.Report("x", ["pick-place"], [0, 1], 1, results,
                                 meta={"checkpoint_step": 5, "command": "c"})

    merged = reproduce.merged_report("full", [rep(True), rep(False)], [0, 1])
    assert merged.name == "full" and merged.seeds == [0, 1, 1000, 1001]
    sr = merged.summary()["tasks"]["pick-place"]["sr"]
    assert sr.n == 4 and sr.mean == 0.5  # both training runs, every eval seed
    assert reproduce.merged_report("full", [rep(True)], [0]).seeds == [0, 1]  # as evaluated
