"""Figures saved in a training workdir (`atomskill plot`).

    plot_skill_tsne(points2d, labels, "W/plots/skill_tsne.png", title="...")
    plot_segmentation(episode, "W/plots/segmentation_pick-place_0.png")

- `plot_skill_tsne`: the AtomSkill paper's Figure 5, a 2-D t-SNE of skill embeddings
  coloured by skill label. If the semantic contrastive loss works, segments with the
  same label gather; if the map is one mixed cloud, the skill space carries no label
  structure, whatever the training loss says.
- `plot_segmentation`: one RLDS episode's atomic skills: the gripper command over
  time, a vertical line at each keyframe, each skill segment shaded and annotated with
  its label. This is how one checks the keyframe detector and the annotator by eye.

A label has the same colour in both figures (its index in the skill vocabulary picks
it), so a plot of segments and a plot of the skill space read together.

matplotlib is imported inside the functions with the Agg backend: importing this
module stays cheap and nothing needs a display.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op when a backend is already set up
    import matplotlib.pyplot as plt

    return plt


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _text(value.item())
    return str(value)


def label_colors(labels: Sequence[str]) -> dict[str, Any]:
    """A colour per distinct label: a canonical vocabulary label keeps one colour in
    every figure, picked by its index from matplotlib's tab20 (dark shades for the
    first ten labels, so grasp and place differ in hue; light shades after); labels
    outside the vocabulary take the unused slots, then greys."""
    from matplotlib import colormaps

    from atomskill_jax.skills.vocabulary import LABELS

    cmap = colormaps["tab20"]
    slot = [(2 * i) % 20 + (2 * i) // 20 for i in range(20)]  # 0, 2, ..., 18, 1, 3, ...
    colors, spare = {}, slot[len(LABELS):]
    extra = 0
    for label in sorted(set(labels), key=lambda lab: (lab not in LABELS, lab)):
        if label in LABELS:
            colors[label] = cmap(slot[LABELS.index(label) % 20])
        else:  # unknown: the unused tab20 slots, then greys
            colors[label] = cmap(spare[extra]) if extra < len(spare) else (
                str(0.3 + 0.5 * ((extra - len(spare)) % 5) / 5))
            extra += 1
    return colors


def segment_spans(skill_segment) -> list[tuple[int, int]]:
    """(first, last) step, inclusive, of each skill segment: the maximal runs of equal
    `skill_segment` values, in order (as data/traj_transforms.py cuts them, so a
    repeated id after another segment starts a new span)."""
    seg = np.asarray(skill_segment).reshape(-1)
    if seg.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]]))
    ends = np.concatenate([starts[1:] - 1, [seg.size - 1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def plot_skill_tsne(points2d, labels: Sequence[str], path: str, title: str = "",
                    *, point_size: float = 14.0) -> str:
    """Scatter of a 2-D embedding [N, 2], one colour per label, legend with counts."""
    plt = _pyplot()
    points2d = np.asarray(points2d, np.float64)
    labels = [_text(lab) for lab in labels]
    if points2d.ndim != 2 or points2d.shape[1] != 2 or len(labels) != len(points2d):
        raise ValueError(f"plot_skill_tsne: points [N, 2] and N labels, got "
                         f"{points2d.shape} and {len(labels)} labels")
    colors = label_colors(labels)
    label_arr = np.asarray(labels, dtype=object)
    fig, ax = plt.subplots(figsize=(7.5, 6.0), dpi=120)
    try:
        # Most frequent label first, so rare labels are drawn on top and stay visible.
        order = sorted(colors, key=lambda lab: -int(np.sum(label_arr == lab)))
        for label in order:
            mask = label_arr == label
            ax.scatter(points2d[mask, 0], points2d[mask, 1], s=point_size, alpha=0.8,
                       color=colors[label], edgecolors="none",
                       label=f"{label} ({int(mask.sum())})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title or f"t-SNE of {len(labels)} skill embeddings", fontsize=10)
        if colors:
            ax.legend(title="skill label", loc="center left", bbox_to_anchor=(1.01, 0.5),
                      fontsize=8, title_fontsize=9, markerscale=1.5, frameon=False)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def _gripper_signal(steps: Mapping[str, Any], gripper_channels):
    for field in ("action", "action_abs"):
        if field in steps:
            action = np.asarray(steps[field], np.float64)
            if action.ndim != 2:
                raise ValueError(f"plot_segmentation: steps/{field} must be [T, A], got "
                                 f"shape {action.shape}")
            channels = tuple(gripper_channels) if gripper_channels is not None else (
                action.shape[1] - 1,)
            return field, channels, action[:, list(channels)]
    raise KeyError("plot_segmentation: the episode has neither steps/action nor "
                   "steps/action_abs")


def plot_segmentation(episode: Mapping[str, Any], path: str, *, gripper_channels=None,
                      title: str | None = None) -> list[tuple[int, int, str]]:
    """Plot one RLDS episode's skill segmentation; returns the spans drawn, as
    (first step, last step, label).

    `episode`: {"steps": {field: [T, ...] arrays}, "episode_metadata": {...}} as numpy
    (`rlds_schema.Episode`); uses steps/action (else action_abs), is_keyframe,
    skill_segment, skill_label, language_instruction, and metadata task / episode_id.
    `gripper_channels`: the action channels of the gripper command(s); default the last
    one (MetaWorld, LIBERO; ALOHA has two: 6 and 13, see skills/embodiments.py).
    """
    plt = _pyplot()
    steps = episode["steps"]
    meta = episode.get("episode_metadata", {}) or {}
    field, channels, grip = _gripper_signal(steps, gripper_channels)
    num_steps = grip.shape[0]
    if "skill_segment" not in steps:
        raise KeyError("plot_segmentation: the episode has no steps/skill_segment "
                       "(annotate it: atomskill annotate)")
    spans = segment_spans(steps["skill_segment"])
    labels_per_step = steps.get("skill_label")
    span_labels = [_text(labels_per_step[s]) if labels_per_step is not None else f"#{i}"
                   for i, (s, _) in enumerate(spans)]
    keyframes = np.flatnonzero(np.asarray(steps.get("is_keyframe", np.zeros(num_steps)), bool))
    colors = label_colors(span_labels)
    task = _text(meta.get("task", ""))
    instruction = ""
    if "language_instruction" in steps and len(steps["language_instruction"]):
        instruction = _text(steps["language_instruction"][0])
    t = np.arange(num_steps)
    fig, ax = plt.subplots(figsize=(10.0, 3.6), dpi=120)
    try:
        lo, hi = float(np.min(grip)), float(np.max(grip))
        pad = 0.1 * (hi - lo) if hi > lo else 0.5
        ylo, yhi = lo - pad, hi + 3.5 * pad  # room above the signal for the labels
        for (s, e), label in zip(spans, span_labels):
            # A segment covers steps s..e; shading [s - 0.5, e + 0.5] tiles the axis.
            ax.axvspan(s - 0.5, e + 0.5, color=colors[label], alpha=0.25, linewidth=0)
            narrow = (e - s + 1) < 0.08 * num_steps
            ax.text((s + e) / 2.0, yhi - 0.4 * pad, label, ha="center", va="top",
                    fontsize=8, rotation=90 if narrow else 0, clip_on=True)
        for k in keyframes:
            ax.axvline(k, color="black", linestyle="--", linewidth=0.8, alpha=0.7)
        for j, channel in enumerate(channels):
            ax.plot(t, grip[:, j], linewidth=1.5,
                    label=f"{field}[{channel}]" if len(channels) > 1 else None,
                    color="black" if len(channels) == 1 else None)
        if len(channels) > 1:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(-0.5, num_steps - 0.5)
        ax.set_ylim(ylo, yhi)
        ax.set_xlabel("step")
        ax.set_ylabel(f"gripper command ({field}[{', '.join(map(str, channels))}])", fontsize=8)
        if title is None:
            episode_id = _text(meta.get("episode_id", ""))
            head = " | ".join(x for x in (task, episode_id) if x)
            title = f"{head}\n{instruction}" if instruction else head
            title += (f"\n{len(spans)} skills, {len(keyframes)} keyframes (dashed), "
                      f"{num_steps} steps")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return [(s, e, label) for (s, e), label in zip(spans, span_labels)]


def _save(fig, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")


__all__ = ["label_colors", "plot_segmentation", "plot_skill_tsne", "segment_spans"]
