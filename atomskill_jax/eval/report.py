"""Evaluation reports: JSON (everything), CSV (episodes, summary), markdown tables.

The markdown table is shaped like the AtomSkill paper's Tables 1 and 2: one row
per run, per task "ATP / SR", the average, and the task groups (for rlbench6 the
motion-pattern and spatial-localisation halves), as mean ± 95% CI half-width over
seeds, in percent. With many tasks the table is transposed (one row per task).
Every report carries what made it: command, seeds, checkpoint step, versions.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any, Sequence

from atomskill_jax.eval import metrics

REPORT_JSON, EPISODES_CSV, SUMMARY_CSV, REPORT_MD = (
    "report.json", "episodes.csv", "summary.csv", "report.md")
WIDE_MAX_TASKS = 8  # more tasks than this: one row per task instead of per run


@dataclasses.dataclass
class Report:
    name: str
    tasks: list[str]
    seeds: list[int]
    episodes_per_task: int
    results: list[metrics.EpisodeResult]
    groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        return metrics.summarize(self.results, self.tasks, self.groups)

    def to_dict(self) -> dict:
        summary = self.summary()
        return {
            "name": self.name, "tasks": self.tasks, "seeds": self.seeds,
            "episodes_per_task": self.episodes_per_task, "groups": self.groups,
            "meta": self.meta,
            "summary": {
                "tasks": {t: {"sr": v["sr"].to_dict(), "atp": v["atp"].to_dict(),
                              "episodes": v["episodes"]} for t, v in summary["tasks"].items()},
                "groups": {g: {"tasks": v["tasks"], "sr": v["sr"].to_dict(),
                               "atp": v["atp"].to_dict()} for g, v in summary["groups"].items()}},
            "episodes": [dataclasses.asdict(r) for r in self.results],
        }


def _fmt(est: metrics.Estimate) -> str:
    if est.n == 0:
        return "–"
    if math.isnan(est.ci95):
        return f"{100 * est.mean:.1f}"
    return f"{100 * est.mean:.1f}±{100 * est.ci95:.1f}"


def _cell(entry: dict | None) -> str:
    return "–" if entry is None else f"{_fmt(entry['atp'])} / {_fmt(entry['sr'])}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def compare(reports: Sequence[Report | str], names: Sequence[str] | None = None,
            layout: str = "auto") -> str:
    """One markdown table for several runs (Report objects or report paths)."""
    reports = [load_report(r) if isinstance(r, str) else r for r in reports]
    if not reports:
        raise ValueError("compare() needs at least one report")
    names = list(names) if names is not None else [r.name for r in reports]
    tasks = list(dict.fromkeys(t for r in reports for t in r.tasks))
    groups = list(dict.fromkeys(g for r in reports for g in ["average", *r.groups]))
    summaries = [r.summary() for r in reports]
    columns = tasks + groups

    def entry(summary, col):
        if col in tasks:
            return summary["tasks"].get(col)
        return summary["groups"].get(col)

    header = [("Avg." if c == "average" else c) for c in columns]
    if layout == "wide" or (layout == "auto" and len(tasks) <= WIDE_MAX_TASKS):
        lines = [_row(["Method"] + header), _row(["---"] * (len(columns) + 1)),
                 _row([""] + ["ATP / SR"] * len(columns))]
        lines += [_row([n] + [_cell(entry(s, c)) for c in columns])
                  for n, s in zip(names, summaries)]
    else:
        lines = [_row(["Task"] + [f"{n} ATP / SR" for n in names]),
                 _row(["---"] * (len(names) + 1))]
        lines += [_row([h] + [_cell(entry(s, c)) for s in summaries])
                  for c, h in zip(columns, header)]
    lines.append("")
    lines.append("ATP / SR in %, mean ± 95% CI half-width over seeds (t-distribution).")
    for n, r in zip(names, reports):
        m = r.meta
        lines.append(
            f"- {n}: seeds {r.seeds}, {r.episodes_per_task} "
            f"episode{'' if r.episodes_per_task == 1 else 's'} per task per seed, "
            f"checkpoint step {m.get('checkpoint_step')}, "
            + (f"skills re-sampled every {m['resample_every']} steps, "
               if m.get("resample_every") else "")
            + (f"chunks temporally ensembled (m={m['ensemble_m']:g}), "
               if m.get("ensemble_m") is not None else "")
            + f"versions {_versions(m.get('versions', {}))}; command: `{m.get('command', '')}`")
    return "\n".join(lines) + "\n"


def _versions(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def to_markdown(report: Report, layout: str = "auto") -> str:
    return f"## {report.name}\n\n" + compare([report], layout=layout)


def summary_rows(report: Report) -> list[dict]:
    summary = report.summary()
    rows = []
    for kind, items in (("task", summary["tasks"]), ("group", summary["groups"])):
        for key, v in items.items():
            rows.append({"kind": kind, "name": key,
                         "sr_mean": v["sr"].mean, "sr_ci95": v["sr"].ci95,
                         "atp_mean": v["atp"].mean, "atp_ci95": v["atp"].ci95,
                         "seeds": v["sr"].n})
    return rows


def write_report(report: Report, out_dir: str) -> dict[str, str]:
    """Writes report.json, episodes.csv, summary.csv and report.md; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (
        ("json", REPORT_JSON), ("episodes_csv", EPISODES_CSV),
        ("summary_csv", SUMMARY_CSV), ("markdown", REPORT_MD))}
    with open(paths["json"], "w") as f:
        json.dump(report.to_dict(), f, indent=1)
    fields = [f.name for f in dataclasses.fields(metrics.EpisodeResult)]
    with open(paths["episodes_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in report.results)
    rows = summary_rows(report)
    with open(paths["summary_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["markdown"], "w") as f:
        f.write(to_markdown(report))
    return paths


def load_report(path: str) -> Report:
    """A report from its directory or its report.json."""
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no evaluation report at {path}; write one with write_report")
    with open(path) as f:
        data = json.load(f)
    return Report(name=data["name"], tasks=data["tasks"], seeds=data["seeds"],
                  episodes_per_task=data["episodes_per_task"],
                  results=[metrics.EpisodeResult(**e) for e in data["episodes"]],
                  groups=data.get("groups", {}), meta=data.get("meta", {}))


def read_episodes_csv(path: str) -> list[metrics.EpisodeResult]:
    """Episode results back from episodes.csv (types restored from the dataclass)."""
    casts = {"success": lambda v: v == "True", "task": str, "video": str}
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append(metrics.EpisodeResult(**{k: casts.get(k, int)(v) for k, v in row.items()}))
    return out
