"""A tensorflow-datasets builder base for sources that yield episodes in numpy form.

Subclasses say what their episodes look like (`episode_spec`) and yield them
(`generate_episodes`); this base validates each one against the RLDS schema,
writes it, and keeps going when one is bad: the bad episode is skipped with a
message naming it and the field at fault, and a summary (`build_report.json`
beside the dataset) counts what was skipped and why. Nothing slow happens in
`__init__` (STYLE.md): rollouts start in `_generate_examples`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from atomskill_jax.data import rlds_schema

log = logging.getLogger(__name__)

REPORT_FILE = "build_report.json"


@dataclasses.dataclass
class BuildReport:
    """What a build wrote and skipped; saved as JSON beside the dataset."""

    written: int = 0
    skipped: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))  # reason -> episode ids
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, episode_id: str, reason: str) -> None:
        self.skipped[reason].append(episode_id)

    def summary(self) -> str:
        lines = [f"wrote {self.written} episodes, skipped {self.num_skipped}"]
        for reason, ids in sorted(self.skipped.items()):
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            lines.append(f"  {len(ids)} x {reason}: {shown}")
        for key, value in self.notes.items():
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"written": self.written, "num_skipped": self.num_skipped,
                "skipped": dict(self.skipped), "notes": self.notes}


class SkipEpisode(Exception):
    """Raised by a source for an episode that is expected to be dropped (e.g. failed
    demonstrations when only successful ones are kept); counted, not an error."""

    def __init__(self, episode_id: str, reason: str):
        self.episode_id = episode_id
        self.reason = reason
        super().__init__(f"episode {episode_id!r} skipped: {reason}")


class RldsEpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for RLDS builders. Subclasses define `episode_spec` and `generate_episodes`.

    `generate_episodes` yields `(episode_id, episode_or_callable)`; a callable is
    called inside the per-episode error guard, so a failing rollout or a corrupt
    source file loses only that episode.
    """

    # Nothing is downloaded, so there is no checksum file to look up (looking
    # needs importlib_resources, which tensorflow-datasets does not declare).
    url_infos = None

    def episode_spec(self) -> rlds_schema.EpisodeSpec:
        raise NotImplementedError

    def generate_episodes(self) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: `dataset_info_from_configs` wants package metadata
        # files (README, CITATIONS.bib) that dynamically configured builders lack.
        return tfds.core.DatasetInfo(
            builder=self,
            description=(type(self).__doc__ or "").strip(),
            features=rlds_schema.features_for(self.episode_spec()),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        self.build_report = BuildReport()
        spec = self.episode_spec()
        for episode_id, make in self.generate_episodes():
            try:
                episode = make() if callable(make) else make
                rlds_schema.validate_episode(episode, spec)
                example = rlds_schema.to_tfds_example(episode)
            except SkipEpisode as skip:
                self.build_report.skip(skip.episode_id, skip.reason)
                continue
            except rlds_schema.EpisodeError as err:
                log.warning("skipping %s", err)
                self.build_report.skip(err.episode_id, f"bad field {err.field}: {err.reason}")
                continue
            except Exception as err:  # noqa: BLE001 - one bad episode must not end the build
                log.warning("skipping episode %r: %s: %s", episode_id, type(err).__name__, err)
                self.build_report.skip(episode_id, f"{type(err).__name__}: {err}")
                continue
            self.build_report.written += 1
            yield episode_id, example
        if self.build_report.written == 0:
            raise RuntimeError(
                f"{self.name}: no episode could be written.\n{self.build_report.summary()}")

    def build(self) -> str:
        """Write the dataset; returns its directory (`tfds.builder_from_directory` reads it)."""
        self.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
        report = getattr(self, "build_report", None)
        if report is not None:
            with open(os.path.join(self.data_dir, REPORT_FILE), "w") as f:
                json.dump(report.to_json(), f, indent=2)
        return str(self.data_dir)


def read_build_report(dataset_dir: str) -> dict[str, Any] | None:
    path = os.path.join(dataset_dir, REPORT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# Fields of a tfds BuilderConfig that are not build options (and `show_progress`, which
# does not change the episodes).
_NOT_OPTIONS = ("name", "version", "release_notes", "supported_versions", "description", "tags",
                "show_progress")


def config_options(config) -> dict[str, Any]:
    """A builder config's options as JSON (what `build_or_reuse` compares)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
           if f.name not in _NOT_OPTIONS}
    return json.loads(json.dumps(out, default=list))


def build_or_reuse(builder_class, config, out: str, *, overwrite: bool, notes: dict,
                   options_file: str = "build_options.json",
                   overwrite_hint: str = "overwrite") -> dict[str, Any]:
    """Build `builder_class(config)` under `out`, or reuse an identical earlier build: a
    dataset built with other options is refused (FileExistsError naming them) unless
    `overwrite`, which deletes it first. A new build's report gets `notes` and the
    options are saved beside it. Returns the report with `dataset_dir` and `reused`."""
    import shutil

    if config.show_progress:
        tfds.display_progress_bar(False)  # ours counts episodes; theirs would interleave
    builder = builder_class(config=config, data_dir=out)
    dataset_dir = str(builder.data_dir)
    options_path = os.path.join(dataset_dir, options_file)
    options = config.options()
    reused = os.path.exists(options_path) and not overwrite
    if reused:
        with open(options_path) as f:
            previous = json.load(f)
        if previous != options:
            changed = sorted(k for k in set(previous) | set(options)
                             if previous.get(k) != options.get(k))
            raise FileExistsError(f"{dataset_dir} holds a dataset built with other options "
                                  f"({', '.join(changed)} differ); choose another out "
                                  f"directory or {overwrite_hint}")
    if overwrite and os.path.exists(dataset_dir):
        shutil.rmtree(dataset_dir)
        builder = builder_class(config=config, data_dir=out)
    dataset_dir = builder.build()
    report = read_build_report(dataset_dir) or {}
    if not reused:
        report.setdefault("notes", {}).update(notes)
        with open(os.path.join(dataset_dir, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        with open(options_path, "w") as f:
            json.dump(options, f, indent=2)
    return dict(report, dataset_dir=dataset_dir, reused=reused)
