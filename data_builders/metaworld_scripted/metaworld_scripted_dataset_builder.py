"""MetaWorld v3 scripted-expert demonstrations as RLDS episodes with atomic skills.

    atomskill build-data metaworld --suite=rlbench6 --episodes-per-task=30 --out=DIR

Each episode: the expert rolled out in one explicit layout (see
`atomskill_jax.envs.metaworld`), cut into atomic skills at gripper keyframes and
labelled by an annotation backend (`rule` offline by default, `vlm` optional).
With cameras, frames are rendered with `render_quality` (envs.metaworld
RENDER_QUALITIES); the settings it resolves to are recorded in `build_options.json`
(`render_settings`), and evaluation renders with exactly those (data/image_source.py).
The same options give the same episodes: layouts come from layout ids, noise from
(task, layout, seed). Read the result with `tfds.builder_from_directory`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from atomskill_jax.data import episode_builder, rlds_schema
from atomskill_jax.envs import metaworld as mw
from atomskill_jax.envs import metaworld_tasks

# This process writes with TensorFlow: rendering runs in a worker (see envs.metaworld).
mw.keep_gl_out_of_this_process()

EMBODIMENT = "metaworld_sawyer"
OPTIONS_FILE = "build_options.json"


@dataclasses.dataclass(eq=False)
class MetaworldScriptedConfig(tfds.core.BuilderConfig):
    """Options of one build; `name` is the suite name or `custom`."""

    tasks: tuple[str, ...] = ()
    episodes_per_task: int = 10
    seed: int = 0
    action_noise_std: float = 0.0
    only_successful: bool = True
    max_attempts_factor: float = 2.0  # with only_successful: try up to this many x N layouts
    max_steps: int = 500
    post_success_steps: int = 0
    cameras: tuple[str, ...] = ()
    image_size: tuple[int, int] = (128, 128)
    render_quality: str = mw.DEFAULT_RENDER_QUALITY  # with cameras: how frames are rendered
    layout_split: str = "train"
    layout_offset: int = 0
    annotator: str = "rule"
    annotator_options: dict = dataclasses.field(default_factory=dict)
    show_progress: bool = True

    def options(self) -> dict[str, Any]:
        out = episode_builder.config_options(self)
        if self.cameras:
            # The settings themselves, not only their name: evaluation renders with these
            # even if the named qualities change later, and a build under other settings
            # is not reused.
            out["render_settings"] = mw.render_settings(self.render_quality).to_json()
        else:  # nothing rendered: state-only builds stay reusable whatever the quality
            out.pop("render_quality")
        return out


class MetaworldScripted(episode_builder.RldsEpisodeBuilder):
    """MetaWorld v3 scripted-expert demonstrations with atomic-skill annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: state, proprio, optional images, skills."}
    # Configs are made per build (`build`): the options are the user's, the name is
    # the suite's (or `custom`), so the data lands in metaworld_scripted/<suite>/<version>.
    BUILDER_CONFIGS: list = []

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        cfg = self.builder_config
        return rlds_schema.EpisodeSpec(
            action_dim=mw.ACTION_DIM, proprio_dim=mw.PROPRIO_DIM, state_dim=mw.STATE_DIM,
            cameras=tuple(cfg.cameras), image_size=tuple(cfg.image_size),
            extra_float_fields=(("action_executed", (mw.ACTION_DIM,)),))

    # -- episodes --------------------------------------------------------------
    def generate_episodes(self):
        from atomskill_jax.models import sentence_encoder
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        tasks = [metaworld_tasks.canonical_task(t) for t in cfg.tasks]
        instructions = {t: metaworld_tasks.instruction(t) for t in tasks}
        # Once per build, cached on disk across builds.
        embeddings = dict(zip(tasks, sentence_encoder.embed_texts_cached(
            [instructions[t] for t in tasks])))
        annotator = annotate.make_annotator(cfg.annotator, **dict(cfg.annotator_options))
        progress = _progress(len(tasks) * cfg.episodes_per_task, cfg.show_progress)
        failures = {t: 0 for t in tasks}
        worker = mw.RenderingRolloutWorker() if cfg.cameras else None
        try:
            yield from self._episodes_of_tasks(tasks, instructions, embeddings, annotator,
                                               progress, failures, worker)
        finally:
            if worker is not None:
                worker.close()
        progress.close()
        self.failures = failures

    def _episodes_of_tasks(self, tasks, instructions, embeddings, annotator, progress,
                           failures, worker):
        cfg = self.builder_config
        spec = self.episode_spec()
        for task in tasks:
            env = _EnvHandle(task, cfg, worker)
            kept, index = 0, 0
            max_attempts = (int(np.ceil(cfg.episodes_per_task * cfg.max_attempts_factor))
                            if cfg.only_successful else cfg.episodes_per_task)
            try:
                while kept < cfg.episodes_per_task and index < max_attempts:
                    layout = mw.layout_id(cfg.layout_split, cfg.layout_offset + index)
                    index += 1
                    episode_id = f"{task}/layout{layout}/seed{cfg.seed}"
                    try:
                        episode = self._episode(env, task, layout, episode_id,
                                                instructions[task], embeddings[task], annotator)
                        # Here, not only in the base: a bad episode must not count as kept
                        # (the build would write fewer episodes than asked).
                        rlds_schema.validate_episode(episode, spec)
                    except Exception as err:  # noqa: BLE001 - reported by the base
                        yield episode_id, _raiser(err)
                        continue
                    if cfg.only_successful and not episode["episode_metadata"]["success"]:
                        failures[task] += 1
                        yield episode_id, _raiser(episode_builder.SkipEpisode(
                            episode_id, "expert failed (only_successful)"))
                        continue
                    kept += 1
                    progress.update(1)
                    progress.set_postfix(task=task, failed=sum(failures.values()))
                    yield episode_id, episode
            finally:
                env.close()
            if kept < cfg.episodes_per_task:
                progress.write(f"{task}: only {kept} of {cfg.episodes_per_task} episodes "
                               f"after {index} layouts ({failures[task]} expert failures)")

    def _episode(self, env, task, layout, episode_id, instruction, embedding, annotator):
        from atomskill_jax.skills import annotate

        cfg = self.builder_config
        roll = env.rollout(layout, seed=cfg.seed, noise_std=cfg.action_noise_std,
                           post_success_steps=cfg.post_success_steps)
        num_steps = len(roll["action"])
        skills = annotate.annotate_episode(
            episode_id=episode_id, task=task, instruction=instruction,
            action=roll["action"], action_abs=roll["action_abs"], proprio=roll["proprio"],
            embodiment=EMBODIMENT, annotator=annotator, frames=roll["images"] or None)
        observation = {"state": roll["state"], "proprio": roll["proprio"]}
        for cam, images in roll["images"].items():
            observation[f"image_{cam}"] = images
        first = np.arange(num_steps) == 0
        last = np.arange(num_steps) == num_steps - 1
        steps = {
            "observation": observation,
            "action": roll["action"],
            "action_abs": roll["action_abs"],
            "action_executed": roll["action_executed"],
            "reward": roll["reward"],
            "discount": np.ones(num_steps, np.float32),
            "is_first": first,
            "is_last": last,
            "is_terminal": last & bool(roll["solved"]),
            "language_instruction": [instruction] * num_steps,
            "language_embedding": np.repeat(embedding[None], num_steps, axis=0),
            **skills,
        }
        metadata = {
            "episode_id": episode_id,
            "task": task,
            "layout": layout,
            "layout_vec": roll["layout_vec"],
            "source_file": f"metaworld=={_metaworld_version()} scripted expert",
            "success": bool(roll["solved"]),
            "builder_version": f"{self.name}:{self.VERSION}",
            "seed": cfg.seed,
            "action_noise_std": cfg.action_noise_std,
            "num_skills": int(np.max(skills["skill_segment"])) + 1,
            "annotator": cfg.annotator,
        }
        return {"steps": steps, "episode_metadata": metadata}


class _EnvHandle:
    """Rollouts of one task: in this process, or in the render worker with cameras."""

    def __init__(self, task, cfg, worker):
        self.task, self.cfg, self.worker = task, cfg, worker
        self.env = None if worker else mw.MetaWorldEnv(task, max_steps=cfg.max_steps)

    def rollout(self, layout, **kwargs):
        if self.worker is not None:
            return self.worker.rollout(self.task, layout, cameras=self.cfg.cameras,
                                       image_size=self.cfg.image_size,
                                       render_quality=self.cfg.render_quality,
                                       max_steps=self.cfg.max_steps, **kwargs)
        return mw.rollout_expert(self.task, layout, max_steps=self.cfg.max_steps,
                                 env=self.env, **kwargs)

    def close(self):
        if self.env is not None:
            self.env.close()


def _raiser(err: Exception):
    def raise_it():
        raise err
    return raise_it


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="episodes", unit="ep", disable=not enabled)


def _metaworld_version() -> str:
    from importlib.metadata import version

    return version("metaworld")


def build(out_dir: str, *, suite: str | None = None, tasks=None, overwrite: bool = False,
          **options) -> tuple[str, dict]:
    """Build (or reuse) a dataset under `out_dir`; returns (dataset dir, build report).

    Reuses an existing build only when it was made with the same options; a
    different one in the same place is an error unless `overwrite`.
    """
    resolved = metaworld_tasks.resolve_tasks(suite=suite, tasks=tasks)
    if options.get("render_quality") is None:
        options.pop("render_quality", None)
    else:
        mw.render_settings(options["render_quality"])  # an unknown name fails before building
    name = suite if suite is not None else "custom"
    config = MetaworldScriptedConfig(name=name, tasks=resolved, description=f"{name} tasks",
                                     **options)
    if config.show_progress:
        tfds.display_progress_bar(False)  # ours counts episodes; theirs would interleave
    builder = MetaworldScripted(config=config, data_dir=out_dir)
    dataset_dir = str(builder.data_dir)
    options_path = os.path.join(dataset_dir, OPTIONS_FILE)
    reused = os.path.exists(options_path) and not overwrite
    if os.path.exists(options_path):
        with open(options_path) as f:
            previous = json.load(f)
        if previous != config.options() and not overwrite:
            raise FileExistsError(
                f"{dataset_dir} holds a dataset built with other options "
                f"({_diff(previous, config.options())}); choose another --out or --overwrite")
    if overwrite and os.path.exists(dataset_dir):
        import shutil

        shutil.rmtree(dataset_dir)
        builder = MetaworldScripted(config=config, data_dir=out_dir)
    dataset_dir = builder.build()
    with open(options_path, "w") as f:
        json.dump(config.options(), f, indent=2)
    report = episode_builder.read_build_report(dataset_dir) or {}
    if reused:  # in memory only: the file describes the build that wrote the episodes
        return dataset_dir, dict(report, reused=True)
    if getattr(builder, "failures", None) is not None:
        report.setdefault("notes", {})["expert_failures"] = builder.failures
        with open(os.path.join(dataset_dir, episode_builder.REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
    return dataset_dir, report


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)
