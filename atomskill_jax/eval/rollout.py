"""Closed-loop rollouts in parallel worker processes.

Work is split into jobs of one task, one seed and up to `batch_size` episodes; a
worker runs a job's environments in lockstep so the policy infers for all of them
in one (jitted) call. Workers are spawned (never forked: JAX and MuJoCo state do
not survive a fork), build the policy once from the picklable `policy_factory`,
and keep their environments across jobs. Rendering happens only in workers, which
must never import TensorFlow (see `envs.metaworld`: OSMesa and TensorFlow crash
together); the GL backend is switched on there only when the policy needs images
or videos are recorded.

Every policy call sees the same batch size (`batch_size`): a job with fewer
episodes repeats its last environment's observation to fill the batch, so a
jitted policy compiles once.

An episode ends at the first success (as MetaWorld's evaluation does) or after
`max_steps`. Finished environments stay in the batch with their last observation
(static shapes for jit); their actions are ignored.

A job is the unit of reproducibility: policies seed their randomness per reset batch
(e.g. from the first episode's seed and layout), so an episode's result depends on
the job it ran in, never on the worker or what ran before. `run_jobs` hands each
finished job to `on_result` as it arrives (evaluate stores it), and a worker that dies
is reported with the jobs the workers were running.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from atomskill_jax.eval.metrics import EpisodeResult, ProgressCounter
from atomskill_jax.policies.base import Policy, TaskInfo


@dataclasses.dataclass(frozen=True)
class Job:
    task: str
    seed: int
    episodes: tuple[int, ...]  # episode indices within the seed
    layouts: tuple[int, ...]
    max_steps: int
    video: tuple[bool, ...]  # record this episode's video
    batch_size: int = 0  # policy batch; padded up to it (0: no padding)


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    gl_backend: str = "osmesa"
    video_dir: str = ""
    video_camera: str = "corner"
    status_dir: str = ""  # workers note their current job here (named if one dies)


class WorkerDied(RuntimeError):
    """A rollout worker process ended abruptly (killed, or crashed in native code)."""


_STATE: dict[str, Any] = {}  # per worker process: policy, envs, options


def _init_worker(policy_factory: Callable[[], Policy], options: WorkerOptions) -> None:
    _STATE.clear()
    _STATE.update(factory=policy_factory, options=options, envs={}, embeddings={})


def _policy() -> Policy:
    if "policy" not in _STATE:
        policy = _STATE["factory"]()
        options: WorkerOptions = _STATE["options"]
        if policy.spec.cameras or options.video_dir:
            # Must precede MuJoCo's import, which reads MUJOCO_GL once.
            if "tensorflow" in sys.modules:
                raise RuntimeError("rendering in a process that imported TensorFlow crashes "
                                   "it (envs.metaworld); evaluate with num_workers >= 1")
            if "mujoco" in sys.modules and not os.environ.get("MUJOCO_GL"):
                raise RuntimeError(
                    "the policy factory imported MuJoCo before rendering was set up; "
                    "import the simulator lazily in the policy")
            os.environ.setdefault("MUJOCO_GL", options.gl_backend)
            os.environ.setdefault("PYOPENGL_PLATFORM", options.gl_backend)
        _STATE["policy"] = policy
    return _STATE["policy"]


def _embedding(task: str) -> np.ndarray:
    if task not in _STATE["embeddings"]:
        from atomskill_jax.eval import suites
        from atomskill_jax.models import sentence_encoder

        _STATE["embeddings"][task] = sentence_encoder.embed_texts_cached(
            [suites.instruction(task)])[0]
    return _STATE["embeddings"][task]


def _envs(task: str, count: int, policy: Policy, max_steps: int) -> list:
    from atomskill_jax.eval import suites

    options: WorkerOptions = _STATE["options"]
    spec = policy.spec
    # Only the current task's environments are kept (reused by its next seeds): a
    # worker that kept every task's (20 MuJoCo envs each) grew past 12 GB half-way
    # through MT50 and was killed for memory.
    for key in [k for k in _STATE["envs"] if k != (task, max_steps)]:
        for env in _STATE["envs"].pop(key):
            env.close()
    envs = _STATE["envs"].setdefault((task, max_steps), [])
    embedding = _embedding(task) if "language_embedding" in spec.observation_keys else None
    while len(envs) < count:
        # Frames made as the policy's training frames were (Policy.image_source).
        envs.append(suites.make_env(
            task, spec, max_steps=max_steps, language_embedding=embedding,
            video_camera=options.video_camera if options.video_dir else None,
            image_source=getattr(policy, "image_source", None)))
    return envs[:count]


def run_job(job: Job) -> tuple[dict, list[EpisodeResult]]:
    """Runs one job in this process (the worker entry point); returns the policy's
    spec (for the report) and the episode results."""
    status = _STATE["options"].status_dir
    if status:
        with open(os.path.join(status, f"worker-{os.getpid()}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "task": job.task, "seed": job.seed,
                       "episodes": list(job.episodes)}, f)
    try:
        return _run_job(job)
    finally:
        if status:
            os.remove(os.path.join(status, f"worker-{os.getpid()}.json"))


def _run_job(job: Job) -> tuple[dict, list[EpisodeResult]]:
    from atomskill_jax.eval import suites

    policy = _policy()
    spec = policy.spec
    n = len(job.layouts)
    envs = _envs(job.task, n, policy, job.max_steps)
    images = bool(spec.cameras)
    instruction = suites.instruction(job.task)
    pad = max(0, job.batch_size - n)
    infos = [TaskInfo(job.task, instruction, layout, job.seed, ep)
             for layout, ep in zip(job.layouts, job.episodes)]
    policy.reset(infos + infos[-1:] * pad)
    obs = [env.reset(layout) for env, layout in zip(envs, job.layouts)]
    trackers = [suites.stage_tracker(job.task) for _ in range(n)]
    for tracker, env in zip(trackers, envs):
        tracker.reset(env.state)
    counters = [ProgressCounter(len(t.stages)) for t in trackers]
    done = np.zeros(n, bool)
    success_step = np.full(n, -1)
    steps = np.zeros(n, int)
    frames: list[list] = [[env.video_frame()] if job.video[i] else []
                          for i, env in enumerate(envs)]
    queue: np.ndarray | None = None  # [B, h, A] actions still to execute
    for t in range(job.max_steps):
        if queue is None or queue.shape[1] == 0:
            actions = np.asarray(policy.infer(suites.stack(obs + obs[-1:] * pad)))
            if actions.ndim == 2:
                actions = actions[:, None]
            if actions.ndim != 3 or actions.shape[0] != n + pad:
                raise ValueError(f"policy {spec.name!r} returned actions of shape "
                                 f"{actions.shape} for a batch of {n + pad}; expected [B, A] "
                                 f"or [B, H, A]")
            queue = actions[:n, : spec.execute_steps or actions.shape[1]]
        for i, env in enumerate(envs):
            if done[i]:
                continue
            obs[i], info, truncated = env.step(queue[i, 0], render=images or job.video[i])
            steps[i] = t + 1
            counters[i].update(trackers[i].flags(env.state, info))
            if job.video[i]:
                frames[i].append(env.video_frame())
            if info.get("success", 0.0):
                success_step[i], done[i] = t, True
            elif truncated:
                done[i] = True
        queue = queue[:, 1:]
        if done.all():
            break
    return spec.to_dict(), [_result(job, i, bool(success_step[i] >= 0), counters[i],
                                    int(steps[i]), int(success_step[i]), frames[i])
                            for i in range(n)]


def _result(job, i, success, counter, steps, success_step, frames) -> EpisodeResult:
    video = ""
    if frames:
        from atomskill_jax.eval.video import save_video

        stem = os.path.join(_STATE["options"].video_dir,
                            f"{job.task}_seed{job.seed}_ep{job.episodes[i]}"
                            f"_{'success' if success else 'failure'}")
        video = save_video(frames, stem)
    reached = counter.completed
    return EpisodeResult(
        task=job.task, seed=job.seed, episode=job.episodes[i], layout=job.layouts[i],
        success=success, stages_completed=counter.num_stages if success else reached,
        num_stages=counter.num_stages, steps=steps, success_step=success_step,
        stages_reached=reached, video=video)


def make_jobs(tasks: Sequence[str], seeds: Sequence[int], episodes_per_task: int,
              batch_size: int, max_steps: int | None, videos_per_task: int) -> list[Job]:
    from atomskill_jax.eval import suites

    jobs = []
    for task in tasks:
        for seed in seeds:
            layouts = suites.eval_layouts(task, seed, episodes_per_task)
            for start in range(0, episodes_per_task, batch_size):
                eps = tuple(range(start, min(start + batch_size, episodes_per_task)))
                # Videos of the first episodes of the first seed.
                video = tuple(seed == seeds[0] and e < videos_per_task for e in eps)
                jobs.append(Job(task, int(seed), eps, tuple(layouts[e] for e in eps),
                                int(max_steps or suites.default_max_steps(task)), video,
                                min(batch_size, episodes_per_task)))
    return jobs


def run_jobs(policy_factory: Callable[[], Policy], jobs: Sequence[Job], *,
             num_workers: int, options: WorkerOptions, progress: bool = True,
             on_result: Callable[[Job, dict, list[EpisodeResult]], None] | None = None,
             ) -> tuple[list[EpisodeResult], dict]:
    """Runs jobs on `num_workers` spawned processes (0: in this process); returns
    the results in job order and the policy's spec. `on_result(job, spec, results)`
    sees each job as it finishes. A dead worker raises WorkerDied naming the jobs the
    workers were running; jobs finished before it were already handed to `on_result`."""
    from tqdm import tqdm

    total = sum(len(j.layouts) for j in jobs)
    bar = tqdm(total=total, desc="rollouts", unit="ep", disable=not progress)
    results: list[EpisodeResult] = []
    successes = 0
    spec: dict = {}

    def collect(job, output):
        nonlocal successes
        spec.update(output[0])
        batch = output[1]
        if on_result is not None:
            on_result(job, output[0], batch)
        results.extend(batch)
        successes += sum(r.success for r in batch)
        bar.update(len(batch))
        bar.set_postfix(task=batch[0].task, sr=f"{successes / len(results):.2f}")

    status_dir = ""
    try:
        if num_workers == 0:
            _init_worker(policy_factory, options)
            try:
                for job in jobs:
                    collect(job, run_job(job))
            finally:
                _close_worker()
        else:
            status_dir = tempfile.mkdtemp(prefix="atomskill-eval-workers-")
            options = dataclasses.replace(options, status_dir=status_dir)
            with concurrent.futures.ProcessPoolExecutor(
                    max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(policy_factory, options)) as pool:
                futures = {pool.submit(run_job, job): job for job in jobs}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        collect(futures[future], future.result())
                except concurrent.futures.process.BrokenProcessPool as err:
                    raise WorkerDied(_dead_worker_message(status_dir)) from err
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
        if status_dir:
            shutil.rmtree(status_dir, ignore_errors=True)
    order = {(j.task, j.seed, e): k for k, j in enumerate(jobs) for e in j.episodes}
    return sorted(results, key=lambda r: order[(r.task, r.seed, r.episode)]), spec


def _dead_worker_message(status_dir: str) -> str:
    running = []
    for name in sorted(os.listdir(status_dir)):
        try:
            with open(os.path.join(status_dir, name)) as f:
                s = json.load(f)
        except (OSError, ValueError):  # the worker died while writing it
            continue
        running.append(f"worker pid {s['pid']}: task {s['task']}, seed {s['seed']}, "
                       f"episodes {s['episodes']}")
    where = ("; ".join(running) if running else "no job had started")
    return (f"a rollout worker process ended abruptly (killed, out of memory, or crashed "
            f"in the simulator or renderer); the workers were running: {where}")


def _close_worker() -> None:
    policy = _STATE.get("policy")
    if policy is not None:
        policy.close()
    for envs in _STATE.get("envs", {}).values():
        for env in envs:
            env.close()
    _STATE.clear()
