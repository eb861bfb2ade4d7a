"""Scripted bimanual demonstrations in gym-aloha's sim (transfer-cube, insertion) as
RLDS episodes with atomic skills.

    atomskill build-data aloha_sim --tasks=transfer_cube,insertion --episodes-per-task=50 --out=DIR

    from data_builders.aloha_sim_scripted.aloha_sim_scripted_dataset_builder import build
    dataset_dir, report = build("out/", episodes_per_task=50, seed=0, cameras=("top",),
                                image_size=(96, 128))

Episodes come from the expert of `scripted_policy` (fingertip waypoints turned into
joint targets by inverse kinematics, run in the joint-space env evaluation uses), in
layouts (object placements) seed, seed + 1, ...: a layout is gym-aloha's
`reset(seed=...)` placement. With `only_successful` (the default) an episode whose
expert did not reach reward 4 is skipped, counted and reported, and the next layout
is tried, up to `max_attempts_factor` x the episodes asked for. Layout seeds must
stay below `aloha_sim.EVAL_SEED_BASE`: those from it on are evaluation layouts.

Fields per step (the mapping of gym-aloha's observation onto the data contract; see
`atomskill_jax.envs.aloha_sim` for the details):
  observation/proprio  float32[14]  qpos: per arm 6 joints (rad) + gripper (0 closed, 1 open)
  observation/state    float32[28]  qvel [14], then the objects' poses from the physics
                                    (xyz + quat wxyz; cube + zeros, or peg + socket) [14]
  observation/image_top uint8[H, W, 3]  only with cameras=("top",): the 480x640 render,
                                    resized to image_size (None: kept at 480x640)
  action = action_abs  float32[14]  absolute joint targets (gripper as the normalised
                                    target), the command the env takes
  reward               gym-aloha's stage reward 0..4 after the step's action
  language_instruction / language_embedding (all-MiniLM-L6-v2, as every builder)
  skill fields         cut where either gripper's command crosses its mid level
                       (embodiment `aloha`: channels 6 = left, 13 = right)
is_terminal is set on the last step of a successful episode. The same options give
the same episodes; a build with the options of an existing one reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema
from atomskill_jax.envs import aloha_sim
from atomskill_jax.envs.metaworld import keep_gl_out_of_this_process
from data_builders.aloha_sim_scripted import rollouts

# This process writes with TensorFlow: rendering runs in a worker (see rollouts).
keep_gl_out_of_this_process()

EMBODIMENT = "aloha"
OPTIONS_FILE = "build_options.json"


@dataclasses.dataclass(eq=False)
class AlohaSimScriptedConfig(tfds.core.BuilderConfig):
    """Options of one build; `name` joins the task names."""

    tasks: tuple[str, ...] = aloha_sim.TASKS
    episodes_per_task: int = 10
    seed: int = 0
    only_successful: bool = True
    max_attempts_factor: float = 2.0  # with only_successful: try up to this many x N layouts
    max_steps: int = aloha_sim.DEFAULT_MAX_STEPS
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None  # None: gym-aloha's 480x640
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        return episode_builder.config_options(self)

    @property
    def max_attempts(self) -> int:
        if not self.only_successful:
            return self.episodes_per_task
        return int(np.ceil(self.episodes_per_task * self.max_attempts_factor))


class AlohaSimScripted(episode_builder.RldsEpisodeBuilder):
    """gym-aloha sim scripted bimanual demonstrations with atomic-skill annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: qpos, qvel + object poses, optional top "
                              "camera, joint targets, skills."}
    BUILDER_CONFIGS: list = []  # made per build (see `build`)

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        cfg = self.builder_config
        return rlds_schema.EpisodeSpec(
            action_dim=aloha_sim.ACTION_DIM, proprio_dim=aloha_sim.PROPRIO_DIM,
            state_dim=aloha_sim.STATE_DIM, cameras=tuple(cfg.cameras),
            image_size=tuple(cfg.image_size or aloha_sim.NATIVE_IMAGE_SIZE))

    def generate_episodes(self):
        from tqdm import tqdm

        from atomskill_jax.models import sentence_encoder
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        instructions = {t: aloha_sim.instruction(t) for t in cfg.tasks}
        embeddings = dict(zip(cfg.tasks, sentence_encoder.embed_texts_cached(
            [instructions[t] for t in cfg.tasks])))
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        self.failures = {t: 0 for t in cfg.tasks}
        progress = tqdm(total=len(cfg.tasks) * cfg.episodes_per_task, desc="episodes",
                        unit="ep", disable=not cfg.show_progress)
        worker = rollouts.RenderingRolloutWorker() if cfg.cameras else None
        try:
            for task in cfg.tasks:
                yield from self._episodes_of_task(task, instructions[task], embeddings[task],
                                                  annotator, progress, worker)
        finally:
            if worker is not None:
                worker.close()
            progress.close()

    def _episodes_of_task(self, task, instruction, embedding, annotator, progress, worker):
        cfg = self.builder_config
        spec = self.episode_spec()
        env = None if worker else aloha_sim.AlohaSimEnv(task, max_steps=cfg.max_steps)
        kept = attempts = 0
        try:
            while kept < cfg.episodes_per_task and attempts < cfg.max_attempts:
                layout = cfg.seed + attempts
                attempts += 1
                episode_id = f"{task}/seed{layout}"
                try:
                    if worker is not None:
                        roll = worker.rollout(task, layout, cameras=cfg.cameras,
                                              image_size=cfg.image_size, max_steps=cfg.max_steps)
                    else:
                        roll = rollouts.rollout_expert(task, layout, max_steps=cfg.max_steps,
                                                       env=env)
                    episode = self._episode(roll, task, layout, episode_id, instruction,
                                            embedding, annotator)
                    # Here, not only in the base: a bad episode must not count as kept.
                    rlds_schema.validate_episode(episode, spec)
                except Exception as err:  # noqa: BLE001 - reported by the base
                    yield episode_id, _raiser(err)
                    continue
                if cfg.only_successful and not roll["success"]:
                    self.failures[task] += 1
                    yield episode_id, _raiser(episode_builder.SkipEpisode(
                        episode_id, f"expert failed (best reward {roll['reward'].max():g} "
                                    "of 4; only_successful)"))
                    continue
                kept += 1
                progress.update(1)
                progress.set_postfix(task=task, failed=sum(self.failures.values()))
                yield episode_id, episode
        finally:
            if env is not None:
                env.close()
        if kept < cfg.episodes_per_task:
            progress.write(f"{task}: only {kept} of {cfg.episodes_per_task} episodes after "
                           f"{attempts} layouts ({self.failures[task]} expert failures)")

    def _episode(self, roll, task, layout, episode_id, instruction, embedding, annotator):
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        num_steps = len(roll["action"])
        skills = annotate.annotate_episode(
            episode_id=episode_id, task=task, instruction=instruction, action=roll["action"],
            action_abs=roll["action"], proprio=roll["proprio"], embodiment=EMBODIMENT,
            annotator=annotator, frames=roll["images"] or None)
        observation = {"state": roll["state"], "proprio": roll["proprio"]}
        for cam, images in roll["images"].items():
            observation[f"image_{cam}"] = images
        first = np.arange(num_steps) == 0
        last = np.arange(num_steps) == num_steps - 1
        steps = {
            "observation": observation,
            "action": roll["action"],
            "action_abs": roll["action"],
            "reward": roll["reward"],
            "discount": np.ones(num_steps, np.float32),
            "is_first": first,
            "is_last": last,
            "is_terminal": last & roll["success"],
            "language_instruction": [instruction] * num_steps,
            "language_embedding": np.repeat(embedding[None], num_steps, axis=0),
            **skills,
        }
        metadata = {
            "episode_id": episode_id,
            "task": task,
            "layout": layout,
            "layout_vec": roll["layout_vec"],
            "source_file": f"gym-aloha=={_version('gym-aloha')} scripted expert "
                           "(IK waypoints, joint-space env)",
            "success": roll["success"],
            "builder_version": f"{self.name}:{self.VERSION}",
            "seed": layout,
            "num_skills": int(np.max(skills["skill_segment"])) + 1,
            "annotator": cfg.annotator,
        }
        return {"steps": steps, "episode_metadata": metadata}


def _raiser(err: Exception):
    def raise_it():
        raise err
    return raise_it


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _as_tasks(tasks) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    resolved = tuple(dict.fromkeys(aloha_sim.canonical_task(t) for t in tasks))
    if not resolved:
        raise ValueError(f"no ALOHA sim task given; tasks: {', '.join(aloha_sim.TASKS)}")
    return resolved


def build(out: str, *, tasks: Sequence[str] | str = aloha_sim.TASKS, episodes_per_task: int = 10,
          seed: int = 0, cameras: Sequence[str] | str = (),
          image_size: Sequence[int] | None = None, overwrite: bool = False,
          annotator: str = "rule", annotator_options: dict | None = None,
          max_steps: int = aloha_sim.DEFAULT_MAX_STEPS, **options) -> tuple[str, dict]:
    """Build (or reuse) a dataset under `out`; returns (dataset dir, build report).

    tasks: names or a comma-separated string. cameras: () or ("top",) (any of
    `aloha_sim.CAMERAS`). image_size: (H, W) the 480x640 renders are resized to
    (None: kept). `options`: only_successful, max_attempts_factor, show_progress.
    Reuses an existing build only when it was made with the same options; a
    different one in the same place is an error unless `overwrite`.
    """
    resolved = _as_tasks(tasks)
    if isinstance(cameras, str):
        cameras = tuple(c for c in cameras.split(",") if c)
    for cam in cameras:
        if cam not in aloha_sim.CAMERAS:
            raise ValueError(f"unknown ALOHA sim camera {cam!r}; cameras: {aloha_sim.CAMERAS}")
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    config = AlohaSimScriptedConfig(
        name="_".join(resolved), description=f"ALOHA sim {', '.join(resolved)}",
        tasks=resolved, episodes_per_task=int(episodes_per_task), seed=int(seed),
        max_steps=int(max_steps), cameras=tuple(cameras),
        image_size=None if image_size is None else tuple(int(s) for s in image_size),
        annotator=annotator, annotator_options=dict(annotator_options or {}), **options)
    if config.seed < 0:
        raise ValueError(f"seed must be >= 0, got {config.seed}")
    if config.seed + config.max_attempts > aloha_sim.EVAL_SEED_BASE:
        raise ValueError(f"layout seeds {config.seed}..{config.seed + config.max_attempts - 1} "
                         f"reach the evaluation seeds (>= {aloha_sim.EVAL_SEED_BASE}); "
                         "choose a smaller seed")
    if config.show_progress:
        tfds.display_progress_bar(False)  # ours counts episodes; theirs would interleave
    builder = AlohaSimScripted(config=config, data_dir=out)
    dataset_dir = str(builder.data_dir)
    options_path = os.path.join(dataset_dir, OPTIONS_FILE)
    reused = os.path.exists(options_path) and not overwrite
    if reused:
        with open(options_path) as f:
            previous = json.load(f)
        if previous != config.options():
            changed = sorted(k for k in set(previous) | set(config.options())
                             if previous.get(k) != config.options().get(k))
            raise FileExistsError(
                f"{dataset_dir} holds a dataset built with other options ("
                + ", ".join(f"{k}: {previous.get(k)!r} -> {config.options().get(k)!r}"
                            for k in changed) + "); choose another out directory or overwrite")
    if overwrite and os.path.exists(dataset_dir):
        shutil.rmtree(dataset_dir)
        builder = AlohaSimScripted(config=config, data_dir=out)
    dataset_dir = builder.build()
    report = episode_builder.read_build_report(dataset_dir) or {}
    if reused:  # in memory only: the file describes the build that wrote the episodes
        return dataset_dir, dict(report, reused=True)
    report.setdefault("notes", {})["expert_failures"] = getattr(builder, "failures", {})
    with open(os.path.join(dataset_dir, episode_builder.REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    with open(options_path, "w") as f:
        json.dump(config.options(), f, indent=2)
    return dataset_dir, report
