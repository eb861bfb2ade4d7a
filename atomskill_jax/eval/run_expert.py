"""Evaluates MetaWorld's scripted experts (or the random policy) end to end.

    python -m atomskill_jax.eval.run_expert --suite=rlbench6 --episodes=5
    python -m atomskill_jax.eval.run_expert --tasks=pick-place --policy=random --seeds=0,1

The expert's score on the evaluation layouts is the ceiling a learned policy is
measured against; the random policy's is the floor. Writes the report to --out
when given and prints the markdown table.
"""

from __future__ import annotations

import argparse
import functools
import sys

from atomskill_jax.envs import metaworld_tasks
from atomskill_jax.eval.evaluate import evaluate
from atomskill_jax.eval.report import to_markdown, write_report
from atomskill_jax.policies.base import RandomPolicy
from atomskill_jax.policies.scripted import ScriptedExpertPolicy

POLICIES = {
    "expert": functools.partial(ScriptedExpertPolicy, "action"),
    "expert_abs": functools.partial(ScriptedExpertPolicy, "action_abs"),
    "random": functools.partial(RandomPolicy, 0),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--suite", default=None, help=f"one of {list(metaworld_tasks.SUITES)}")
    which.add_argument("--tasks", default=None, help="comma-separated task names")
    parser.add_argument("--episodes", type=int, default=5, help="per task per seed")
    parser.add_argument("--seeds", default="0", help="comma-separated evaluation seeds")
    parser.add_argument("--policy", default="expert", choices=sorted(POLICIES))
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--videos", type=int, default=0, help="videos per task (needs --out)")
    parser.add_argument("--out", default=None, help="directory for the report")
    args = parser.parse_args(argv)
    tasks = metaworld_tasks.resolve_tasks(
        suite=args.suite if args.suite or args.tasks else "rlbench6", tasks=args.tasks)
    if args.videos and not args.out:
        parser.error("--videos needs --out")
    report = evaluate(POLICIES[args.policy], tasks, args.episodes,
                      [int(s) for s in args.seeds.split(",")], name=args.policy,
                      max_steps=args.max_steps, num_workers=args.workers,
                      videos_per_task=args.videos,
                      video_dir=f"{args.out}/videos" if args.videos else None,
                      command=" ".join(["python -m atomskill_jax.eval.run_expert"]
                                       + (sys.argv[1:] if argv is None else list(argv))))
    print(to_markdown(report))
    mismatched = [r for r in report.results if r.success and r.stages_reached < r.num_stages]
    if mismatched:
        print(f"{len(mismatched)} successful episode(s) missed a stage predicate: "
              + ", ".join(f"{r.task}/seed{r.seed}/ep{r.episode}" for r in mismatched[:10]))
    if args.out:
        paths = write_report(report, args.out)
        print("wrote", ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
