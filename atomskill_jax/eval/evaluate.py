"""`evaluate(policy_factory, tasks, ...) -> Report`: what `atomskill eval` calls.

    report = evaluate(partial(load_policy, workdir), suite_tasks("rlbench6"),
                      episodes_per_task=20, seeds=(0, 1, 2))
    write_report(report, out_dir)

Seeds choose evaluation layouts (seed s: layout indices s*N ... s*N+N-1, see
`envs.metaworld_eval.eval_layouts`), so more seeds means more distinct layouts and
the confidence interval over seeds covers layout-to-layout variation.

With `out_dir`, nothing finished is lost: the directory is checked before the first
rollout, every finished episode is written to it as it arrives (`episode_store`), and
the same call again runs only the episodes missing there. Each job (a batch of one
task and seed) is seeded from its own episodes, so the resumed report equals an
uninterrupted one; the batch size of the recorded episodes is reused for that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Sequence

from atomskill_jax.envs import metaworld_tasks
from atomskill_jax.eval import episode_store, rollout
from atomskill_jax.eval.report import Report
from atomskill_jax.policies.base import Policy

# The AtomSkill paper's Table 2 groups, reported when rlbench6 is what was evaluated.
GROUPS = {
    "motion-pattern": list(metaworld_tasks.RLBENCH6_MOTION),
    "localisation": list(metaworld_tasks.RLBENCH6_SPATIAL),
}


def versions() -> dict[str, str]:
    """Versions that change scores: simulator, MuJoCo, JAX, this project (+ git commit)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("metaworld", "gym-aloha", "mujoco", "jax", "atomskill_jax"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            out["git"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def evaluate(policy_factory: Callable[[], Policy], tasks: Sequence[str],
             episodes_per_task: int, seeds: Sequence[int] = (0,), *,
             name: str | None = None, max_steps: int | None = None,
             num_workers: int | None = None, batch_size: int | None = None,
             videos_per_task: int = 0, video_dir: str | None = None,
             video_camera: str = "corner", checkpoint_step: int | None = None,
             command: str | None = None, groups: dict[str, list[str]] | None = None,
             progress: bool = True, out_dir: str | None = None,
             identity: dict | None = None) -> Report:
    """Closed-loop evaluation of a policy on evaluation layouts.

    policy_factory: picklable, builds the policy inside each worker process.
    max_steps: cap per episode (default: the task's own, 500 in MetaWorld).
    num_workers: spawned processes (default: CPU count, at most one per job;
        0 runs in this process, for debugging without images or videos).
    batch_size: environments a worker steps together per policy call (default:
        the episodes of one task and seed, split evenly over the workers).
    videos_per_task: record the first episodes of the first seed in `video_dir`.
    groups: task groups averaged next to the overall average (default: the
        paper's motion-pattern / localisation groups when evaluating rlbench6).
    out_dir: where finished episodes are kept (and resumed from); checked first.
    identity: what decides the policy's actions (checkpoint, runtime options): episodes
        recorded under another identity are never reused (default: the factory's repr
        and `checkpoint_step`).
    """
    from atomskill_jax.eval import suites

    tasks = [suites.canonical_task(t) for t in tasks]
    seeds = [int(s) for s in seeds]
    if episodes_per_task < 1 or not seeds or not tasks:
        raise ValueError("evaluate needs tasks, seeds and episodes_per_task >= 1")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    if videos_per_task and not video_dir:
        raise ValueError("videos_per_task needs a video_dir")
    store = None
    if out_dir is not None:
        out_dir = episode_store.check_output_dir(out_dir)
        if identity is None:
            identity = {"policy_factory": repr(policy_factory), "checkpoint_step": checkpoint_step}
        store = episode_store.EpisodeStore(out_dir, identity, log=_say)
        if batch_size is None and len(store.batch_sizes) == 1:
            # A batch shares one random stream: resume in the batches already run.
            (batch_size,) = store.batch_sizes
            _say(f"batch size {batch_size}, as the episodes recorded in {store.path}")
    cpus = os.cpu_count() or 1
    if num_workers is None:
        num_workers = cpus
    if batch_size is None:
        jobs_per_task_seed = max(1, -(-max(1, num_workers) // (len(tasks) * len(seeds))))
        batch_size = max(1, -(-episodes_per_task // jobs_per_task_seed))
    jobs = rollout.make_jobs(tasks, seeds, episodes_per_task, batch_size, max_steps,
                             videos_per_task)
    recorded = [store.lookup(j) for j in jobs] if store else [None] * len(jobs)
    todo = [j for j, found in zip(jobs, recorded) if found is None]
    results = [r for found in recorded if found for r in found]
    if store and results:
        _say(f"resuming: {len(results)} of {sum(len(j.episodes) for j in jobs)} episodes "
             f"already in {store.path}; running the other "
             f"{sum(len(j.episodes) for j in todo)}")
    rebatched = store.rebatched(jobs) if store else 0
    if rebatched:
        _say(f"{rebatched} episodes in {store.path} ran in other batches (batch size other "
             f"than {jobs[0].batch_size}) and are run again: a batch shares one random stream")
    num_workers = min(num_workers, len(todo))
    from atomskill_jax.envs.metaworld import render_backend

    options = rollout.WorkerOptions(gl_backend=render_backend(),
                                    video_dir=os.path.abspath(video_dir) if
                                    videos_per_task else "", video_camera=video_camera)
    start = time.time()
    spec = dict(store.policy_spec) if store else {}
    if todo:
        new, spec_run = _run(policy_factory, todo, num_workers, options, progress, store,
                             len(results))
        results, spec = results + new, spec_run or spec
    order = {(j.task, j.seed, e): k for k, j in enumerate(jobs) for e in j.episodes}
    results.sort(key=lambda r: order[(r.task, r.seed, r.episode)])
    if groups is None:
        groups = GROUPS if set(tasks) == set().union(*GROUPS.values()) else {}
    meta = {
        "command": command if command is not None else " ".join([sys.executable] + sys.argv),
        "checkpoint_step": checkpoint_step,
        "policy": spec,
        "versions": versions(),
        "max_steps": max_steps or "task default",
        "layouts": "evaluation layouts: seed s uses layout_id('eval', s*N + i), i < N",
        "num_workers": num_workers, "batch_size": batch_size,
        "wall_seconds": round(time.time() - start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": {t: suites.stage_names(t) for t in tasks},
    }
    if store:
        meta["episodes_file"] = store.path
        meta["episodes_reused"] = len(results) - sum(len(j.episodes) for j in todo)
    return Report(name=name or spec.get("name") or "policy", tasks=tasks, seeds=seeds,
                  episodes_per_task=episodes_per_task, results=results, groups=groups,
                  meta=meta)


def _say(message: str) -> None:
    print(f"eval: {message}", flush=True)


def _run(policy_factory, jobs, num_workers, options, progress, store, already: int):
    """rollout.run_jobs, storing each finished job; on failure says what is kept."""
    saved = [already]

    def keep(job, spec, results):
        store.add(job, results, spec)
        saved[0] += len(results)

    def kept() -> str:
        return (f"{saved[0]} finished episodes are saved in {store.path}; run the same "
                f"command again to resume from them")

    try:
        return rollout.run_jobs(policy_factory, jobs, num_workers=num_workers,
                                options=options, progress=progress,
                                on_result=keep if store else None)
    except rollout.WorkerDied as err:
        raise rollout.WorkerDied(f"{err}. {kept()}" if store else str(err)) from err
    except BaseException:
        if store:
            print(f"eval: stopped; {kept()}", file=sys.stderr, flush=True)
        raise
