"""atomskill_jax.eval: closed-loop rollouts, SR / ATP metrics, reports, videos.

    report = evaluate(policy_factory, tasks, episodes_per_task=20, seeds=(0, 1, 2))
    write_report(report, out_dir)          # report.json, *.csv, report.md
    print(compare([report_a, "runs/b/eval"]))
"""

from atomskill_jax.eval.evaluate import evaluate, versions
from atomskill_jax.eval.report import Report, compare, load_report, to_markdown, write_report

__all__ = ["evaluate", "versions", "Report", "compare", "load_report", "to_markdown",
           "write_report"]
