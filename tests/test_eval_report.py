"""Report formatting (markdown rows and columns), JSON and CSV round trips, compare."""

import csv
import json
import os

from atomskill_jax.envs import metaworld_tasks
from atomskill_jax.eval import report as rep
from atomskill_jax.eval.evaluate import GROUPS, versions
from atomskill_jax.eval.metrics import EpisodeResult

RLBENCH6 = list(metaworld_tasks.SUITES["rlbench6"])


def _report(name="atomskill", tasks=RLBENCH6, seeds=(0, 1, 2), episodes=2, fail_task=None):
    results = []
    for task in tasks:
        for seed in seeds:
            for ep in range(episodes):
                success = not (task == fail_task and ep == 0)
                results.append(EpisodeResult(
                    task=task, seed=seed, episode=ep, layout=1_000_000 + seed * episodes + ep,
                    success=success, stages_completed=3 if success else 1 + seed % 2,
                    num_stages=3, steps=80, success_step=79 if success else -1,
                    stages_reached=3 if success else 1))
    groups = GROUPS if set(tasks) == set(RLBENCH6) else {}
    meta = {"command": "atomskill eval --workdir=W --suite=rlbench6", "checkpoint_step": 5000,
            "versions": {"metaworld": "3.1.1", "mujoco": "3.3.0", "jax": "0.4", "atomskill_jax": "0.1.0"}}
    return rep.Report(name=name, tasks=list(tasks), seeds=list(seeds), episodes_per_task=episodes,
                      results=results, groups=groups, meta=meta)


def _table_rows(markdown):
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_markdown_is_shaped_like_table_1():
    md = rep.to_markdown(_report(fail_task="shelf-place"))
    rows = _table_rows(md)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["Method", *RLBENCH6, "Avg.", "motion-pattern", "localisation"]
    assert all(len(r.strip("|").split("|")) == len(header) for r in rows)
    body = [c.strip() for c in rows[3].strip("|").split("|")]
    assert body[0] == "atomskill"
    assert body[1] == "100.0±0.0 / 100.0±0.0"
    # shelf-place: one of two episodes fails in every seed -> SR 50; ATP mixes 1/3 and 2/3
    shelf = body[1 + RLBENCH6.index("shelf-place")]
    assert shelf.endswith("/ 50.0±0.0") and "±" in shelf.split(" / ")[0]
    assert "seeds [0, 1, 2]" in md and "checkpoint step 5000" in md
    assert "metaworld 3.1.1" in md and "mujoco 3.3.0" in md
    assert "atomskill eval --workdir=W --suite=rlbench6" in md
    assert "re-sampled" not in md  # held skills (the paper): nothing to say
    report = _report()
    report.meta["resample_every"] = 8
    assert "skills re-sampled every 8 steps" in rep.to_markdown(report)
    assert "ensembled" not in rep.to_markdown(report)
    report.meta["ensemble_m"] = 0.01
    assert "chunks temporally ensembled (m=0.01)" in rep.to_markdown(report)
    assert "2 episodes per task per seed" in rep.to_markdown(report)
    assert "1 episode per task per seed" in rep.to_markdown(_report(episodes=1))


def test_single_seed_has_no_interval_and_many_tasks_transpose():
    md = rep.to_markdown(_report(seeds=(0,)))
    assert "100.0 / 100.0" in md and "±" not in _table_rows(md)[3]
    mt10 = list(metaworld_tasks.SUITES["mt10"])
    rows = _table_rows(rep.to_markdown(_report(tasks=mt10)))
    assert [r.split("|")[1].strip() for r in rows[2:]] == [*mt10, "Avg."]


def test_json_and_csv_round_trip(tmp_path):
    report = _report(fail_task="box-close")
    paths = rep.write_report(report, str(tmp_path / "eval"))
    assert sorted(os.listdir(tmp_path / "eval")) == sorted(
        [rep.REPORT_JSON, rep.EPISODES_CSV, rep.SUMMARY_CSV, rep.REPORT_MD])
    loaded = rep.load_report(str(tmp_path / "eval"))
    assert loaded.results == report.results and loaded.meta == report.meta
    assert loaded.groups == report.groups and loaded.seeds == report.seeds
    assert rep.to_markdown(loaded) == rep.to_markdown(report)
    assert rep.read_episodes_csv(paths["episodes_csv"]) == report.results
    with open(paths["summary_csv"]) as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["box-close"]["sr_mean"]) == 0.5 and rows["box-close"]["kind"] == "task"
    assert rows["average"]["kind"] == "group" and int(rows["average"]["seeds"]) == 3
    with open(paths["json"]) as f:
        data = json.load(f)
    assert data["summary"]["tasks"]["box-close"]["sr"]["mean"] == 0.5
    assert data["summary"]["groups"]["motion-pattern"]["tasks"] == list(
        metaworld_tasks.RLBENCH6_MOTION)


def test_compare_puts_runs_into_one_table(tmp_path):
    a = _report("atomskill")
    b = _report("act", fail_task="pick-place")
    rep.write_report(b, str(tmp_path / "b"))
    md = rep.compare([a, str(tmp_path / "b")])
    rows = _table_rows(md)
    assert [r.split("|")[1].strip() for r in rows[3:]] == ["atomskill", "act"]
    assert "- atomskill:" in md and "- act:" in md
    # a run without some task shows a dash there
    c = _report("partial", tasks=RLBENCH6[:3])
    md = rep.compare([a, c], names=["full", "three tasks"])
    last = [x.strip() for x in _table_rows(md)[-1].strip("|").split("|")]
    assert last[0] == "three tasks" and last[4] == "–" and last[-1] == "–"


def test_versions_name_simulator_mujoco_jax_and_project():
    v = versions()
    assert v["metaworld"] == "3.1.1" and v["mujoco"] == "3.3.0"
    assert {"jax", "atomskill_jax"} <= set(v)
