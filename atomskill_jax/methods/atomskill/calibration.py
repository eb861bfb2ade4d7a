"""ε (keypose trigger threshold) and the per-skill step cap, calibrated on training data.

Computed once, at the end of training, from the training datasets and saved in the
checkpoints' assets (`assets["calibration"]`), so every evaluation uses the same numbers
and inference never reads the dataset.

Rule. For every training step t in segment s, d_t = ||n(action_abs_t) - n(keypose_s)||
with n the action_abs normalisation saved in the checkpoint (exactly what the
trigger measures at inference, with ground truth in place of predictions):
  - end zone: the last `end_steps` (1) steps of each segment; `eps_end` = 90th
    percentile of d there: a threshold below it would miss most segment ends;
  - early steps: all other steps; `eps_early` = 5th percentile of d there: a
    threshold above it would fire early on more than 5% of mid-skill steps.
ε = midpoint of the two when eps_early > eps_end (the widest margin for prediction
error on both sides), else eps_end (segments too short or too still to separate:
prefer ending skills, which the sampler can repeat, over being stuck in a finished
skill until the cap). The cap is 1.5 x the longest training segment (at least 10).
With the data contract's keypose (action_abs at the segment's terminal keyframe, its
last step) eps_end is 0, and the earlier steps are away by at least the gripper
command that flips at the keyframe or one step of motion, so ε = eps_early / 2: half
the smallest typical distance of a step that is not the skill's last. On the test
fixture (2 MetaWorld tasks x 2 episodes, mean/std normalisation) ε = 0.14, early
fire rate 2.7%, every segment end hit.

Why from the dataset rather than from the statistics: the statistics hold per-field
spreads, not how far a segment's actions sit from its keypose, which is what ε
separates. Reading the dataset needs TensorFlow, which the trainer has anyway: the
evaluation process (and its render workers) never imports it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)
LEGACY_FILENAME = "calibration.json"  # before it moved into the assets
# Used, with a warning, when a workdir has no calibration (e.g. its dataset is gone):
# about two steps of full-speed MetaWorld hand motion in mean/std-normalised units.
FALLBACK = {"epsilon": 0.25, "max_skill_steps": 200}


def epsilon_from_episodes(episodes: Iterable[Mapping[str, np.ndarray]],
                          normalize_abs: Callable[[np.ndarray], np.ndarray], *,
                          end_steps: int = 1, end_quantile: float = 90.0,
                          early_quantile: float = 5.0, dims=None,
                          cap_quantile: float = 100.0) -> dict:
    """The rule of the module docstring. `episodes`: dicts with `action_abs` [T, A],
    `keypose` [T, A], `skill_segment` [T]; `normalize_abs`: [N, A] -> [N, A]; `dims`:
    the action dimensions the trigger compares (None: all); the cap is 1.5 x the
    `cap_quantile` percentile of segment lengths (100: the longest)."""
    end, early, lengths = [], [], []
    pick = slice(None) if dims is None else np.asarray(sorted(dims), np.int64)
    for ep in episodes:
        diff = (normalize_abs(np.asarray(ep["action_abs"], np.float32))
                - normalize_abs(np.asarray(ep["keypose"], np.float32)))
        d = np.linalg.norm(diff[:, pick], axis=-1)
        seg = np.asarray(ep["skill_segment"])
        # Segments are maximal runs of equal ids (as the data pipeline defines them).
        cuts = np.flatnonzero(np.diff(seg) != 0) + 1
        for run in np.split(np.arange(len(seg)), cuts):
            if len(run) == 0:
                continue
            lengths.append(len(run))
            to_end = run[-1] - run  # steps left in the segment
            end.append(d[run][to_end < end_steps])
            early.append(d[run][to_end >= end_steps])
    if not lengths:
        raise ValueError("epsilon calibration: no episodes")
    end_d, early_d = np.concatenate(end), np.concatenate(early)
    rule = threshold_rule(end_d, early_d, end_quantile=end_quantile,
                          early_quantile=early_quantile)
    return {
        "epsilon": rule["epsilon"], "eps_end": rule["eps_end"], "eps_early": rule["eps_early"],
        "max_skill_steps": max(10, int(np.ceil(1.5 * np.percentile(lengths, cap_quantile)))),
        "trigger_dims": None if dims is None else [int(d) for d in sorted(dims)],
        "num_segments": len(lengths), "segment_length_p50": float(np.median(lengths)),
        "segment_length_max": int(max(lengths)),
        "early_fire_rate": rule["early_fire_rate"], "end_hit_rate": rule["end_hit_rate"],
        "rule": (f"d = |n(action_abs) - n(keypose)|; eps_end = p{end_quantile:g} over the last "
                 f"{end_steps} steps of segments, eps_early = p{early_quantile:g} over the "
                 f"other steps; eps = midpoint if eps_early > eps_end else eps_end"),
    }


def threshold_rule(end_d: np.ndarray, early_d: np.ndarray, *, end_quantile: float = 90.0,
                   early_quantile: float = 5.0) -> dict:
    """The module docstring's ε from distances at segment ends and at the other steps.
    No early steps (every segment one step long): nothing to keep a margin from (the
    midpoint with eps_early = inf would be inf, a new skill after every step)."""
    eps_end = float(np.percentile(end_d, end_quantile))
    eps_early = float(np.percentile(early_d, early_quantile)) if early_d.size else float("inf")
    separable = early_d.size > 0 and eps_early > eps_end
    epsilon = 0.5 * (eps_end + eps_early) if separable else eps_end
    return {"epsilon": epsilon, "eps_end": eps_end, "eps_early": eps_early,
            "early_fire_rate": float(np.mean(early_d < epsilon)) if early_d.size else 0.0,
            "end_hit_rate": float(np.mean(end_d < epsilon))}


def epsilon_from_predictions(batches: Iterable[Mapping], predict_offset: Callable, *,
                             dims=None, end_steps: int = 1) -> dict:
    """ε on what the trigger of a relative keypose head sees: the norm of the offset the
    model predicts (`predict_offset(batch) -> [B, A]`, normalised units) with the skill
    encoder's tokens of the true segment, at segment ends against the other steps, by
    the same rule as the data's. The data rule puts ε at half the smallest typical true
    offset (0.078 on rlbench6), below the head's own error at a skill's end (p50 0.07,
    p90 0.17 on the training data), so most skills would run to their cap."""
    end, early = [], []
    for batch in batches:
        offset = np.asarray(predict_offset(batch), np.float32)
        if dims is not None:
            offset = offset[:, np.asarray(sorted(dims), np.int64)]
        norm = np.linalg.norm(offset, axis=-1)
        left = np.asarray(batch["skill"]["end"]) - np.asarray(batch["timestep"])
        end.append(norm[left < end_steps])
        early.append(norm[left >= end_steps])
    end_d, early_d = np.concatenate(end), np.concatenate(early)
    if not end_d.size:
        raise ValueError("epsilon calibration: no segment ends among the examples")
    out = threshold_rule(end_d, early_d)
    out.update(num_examples=int(end_d.size + early_d.size), num_ends=int(end_d.size),
               rule=("d = |predicted keypose offset| (encoder tokens of the true segment), "
                     "eps_end = p90 at segment ends, eps_early = p5 elsewhere; eps = "
                     "midpoint if eps_early > eps_end else eps_end"))
    return out


def compute_calibration(dataset_dirs: list[str], config_json: dict, statistics: list,
                        split: str) -> dict:
    """The rule over the training datasets (reads them: TensorFlow). The trainer calls
    it at the end of training and saves the result in the checkpoints' assets."""
    import ml_collections

    from atomskill_jax.data import sources  # first: keeps TensorFlow off GPUs
    from atomskill_jax.data import read_errors
    import tensorflow_datasets as tfds
    from atomskill_jax.data.normalization import normalizer_from_config
    from atomskill_jax.data.statistics import DatasetStatistics
    from atomskill_jax.data.dataset_entries import parse_entries

    data_config = ml_collections.ConfigDict(config_json)["data"]
    stats = [DatasetStatistics.from_json(s) for s in statistics]
    normalizer = normalizer_from_config(data_config, stats)
    # A foreign dataset (entry with 'standardize') is read through its standardisation.
    entries = parse_entries(data_config)
    decoder = (config_json.get("model") or {}).get("decoder") or {}
    trigger_dims = decoder.get("trigger_dims")  # None: the whole action
    trigger_dims = None if trigger_dims is None else tuple(int(d) for d in trigger_dims)
    cap_quantile = float(decoder.get("skill_cap_quantile", 100.0))
    results = []
    for index, directory in enumerate(dataset_dirs):
        keys = ("action_abs", "keypose", "skill_segment")
        entry = entries[index] if len(entries) == len(dataset_dirs) else None
        if entry is not None and entry.standardize is not None:
            source = sources.open_source(directory, standardize=entry.standardize, split=split)
            ds = sources.read_episodes(source, split=split).map(
                lambda ep: {k: ep[k] for k in keys})
        else:
            source = sources.open_source(directory)
            # Steps undecoded: each field arrives as one [T, ...] tensor, and the camera
            # images, which the rule never reads, stay encoded. Decoding them took 26 s
            # an episode on a 2-camera 64 px build (an hour for 150 episodes).
            ds = source.builder.as_dataset(
                split=split, decoders={"steps": tfds.decode.SkipDecoding()}).map(
                lambda ep: {k: ep["steps"][k] for k in keys})

        def norm(x, index=index):
            return normalizer.normalize({"keypose": x}, dataset_index=index)["keypose"]

        episodes = read_errors.iterate(tfds.as_numpy(ds), [source], split)  # shards named
        results.append(epsilon_from_episodes(
            episodes, norm, dims=trigger_dims, cap_quantile=cap_quantile))
    # Several datasets: the most conservative of each (smallest ε, longest cap).
    out = dict(min(results, key=lambda r: r["epsilon"]))
    out["max_skill_steps"] = max(r["max_skill_steps"] for r in results)
    out["datasets"] = list(dataset_dirs)
    out["per_dataset"] = results
    return json.loads(json.dumps(out))  # plain JSON types, as read back from the assets


def read_legacy_calibration(workdir: str) -> dict | None:
    """W/calibration.json of workdirs trained before calibration moved into the assets."""
    path = os.path.join(workdir, LEGACY_FILENAME)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
