"""Plots in the workdir: segment spans, the t-SNE and segmentation figures, and
`atomskill plot` end to end on a tiny trained AtomSkill workdir (plus its refusals)."""

import json
import os
import shutil

import numpy as np
import pytest

from atomskill_jax.eval import plots
from atomskill_jax.training import checkpoints, checksums
from tests.tiny_model import copy_workdir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=8000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path}: only {len(data)} bytes"
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_segment_spans_are_runs():
    assert plots.segment_spans([0, 0, 1, 1, 1, 2]) == [(0, 1), (2, 4), (5, 5)]
    # A repeated id after another segment is a new skill (traj_transforms cuts runs).
    assert plots.segment_spans(np.array([0, 0, 1, 1, 0, 0])) == [(0, 1), (2, 3), (4, 5)]
    assert plots.segment_spans([3]) == [(0, 0)]
    assert plots.segment_spans([]) == []
    spans = plots.segment_spans(np.repeat([0, 1, 2, 3], [7, 1, 12, 5]))
    assert spans == [(0, 6), (7, 7), (8, 19), (20, 24)]
    # The spans tile the episode: no gap, no overlap.
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:]))


def _episode():
    lengths, labels = [12, 9, 15, 6], ["grasp", "lift", "place", "retreat"]
    t = sum(lengths)
    seg = np.repeat(np.arange(4, dtype=np.int32), lengths)
    action = np.zeros((t, 4), np.float32)
    action[12:36, 3] = 1.0  # closed from the grasp's keyframe to the place's
    keyframe = np.zeros(t, bool)
    keyframe[np.cumsum(lengths) - 1] = True
    return {"steps": {"action": action, "action_abs": action, "skill_segment": seg,
                      "skill_label": np.array([labels[s].encode() for s in seg]),
                      "is_keyframe": keyframe,
                      "language_instruction": np.array([b"pick up the puck"] * t)},
            "episode_metadata": {"task": b"pick-place", "episode_id": b"pick-place/7"}}


def test_segmentation_plot_shades_one_span_per_segment(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    shaded, lines = [], []
    span, vline = Axes.axvspan, Axes.axvline
    monkeypatch.setattr(Axes, "axvspan", lambda self, a, b, **k: (
        shaded.append((a, b)), span(self, a, b, **k))[1])
    monkeypatch.setattr(Axes, "axvline", lambda self, x=0, **k: (
        lines.append(x), vline(self, x, **k))[1])
    path = str(tmp_path / "sub" / "seg.png")
    drawn = plots.plot_segmentation(_episode(), path)
    assert drawn == [(0, 11, "grasp"), (12, 20, "lift"), (21, 35, "place"),
                     (36, 41, "retreat")]
    assert shaded == [(-0.5, 11.5), (11.5, 20.5), (20.5, 35.5), (35.5, 41.5)]
    assert lines == [11, 20, 35, 41]  # keyframes
    _assert_png(path)

    # Two grippers (ALOHA layout) and no language: still one span per segment.
    episode = _episode()
    episode["steps"]["action"] = np.concatenate([episode["steps"]["action"]] * 2, axis=1)
    del episode["steps"]["language_instruction"]
    shaded.clear()
    assert len(plots.plot_segmentation(episode, path, gripper_channels=(3, 7))) == 4
    assert len(shaded) == 4


def test_skill_tsne_plot_and_colours(tmp_path):
    r = np.random.default_rng(0)
    labels = ["grasp"] * 30 + ["place"] * 20 + ["reach"] * 5 + ["wave hello"] * 3
    points = r.normal(size=(len(labels), 2)) * 10
    path = plots.plot_skill_tsne(points, labels, str(tmp_path / "t.png"), "a title")
    _assert_png(path)
    colors = plots.label_colors(labels)
    assert len({tuple(np.round(c, 3)) for c in map(np.atleast_1d, colors.values())
                if not isinstance(c, str)}) == 4
    assert colors["grasp"] == plots.label_colors(["grasp", "close"])["grasp"]  # stable
    assert colors["grasp"] != colors["place"]
    with pytest.raises(ValueError, match="N labels"):
        plots.plot_skill_tsne(points, labels[:-1], str(tmp_path / "u.png"))


# -- `atomskill plot` on a trained workdir ------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tiny_trained_workdir, tmp_path_factory):
    """A copy of the session's tiny trained workdir (2 skill + 2 sampler steps)."""
    return copy_workdir(tiny_trained_workdir, tmp_path_factory, "plot_workdir")


def _all_segments(dataset_dir):
    """(task, number of skill segments) of every episode, read with tfds directly."""
    import tensorflow_datasets as tfds

    out = []
    for ep in tfds.builder_from_directory(dataset_dir).as_dataset(split="train"):
        seg = np.array([s["skill_segment"] for s in ep["steps"].as_numpy_iterator()])
        out.append((ep["episode_metadata"]["task"].numpy().decode(),
                    len(plots.segment_spans(seg))))
    return out


def test_plot_command_end_to_end(workdir, metaworld_rlds_dir, capsys):
    from atomskill_jax import cli
    from atomskill_jax.skills.vocabulary import LABELS

    assert cli.main(["plot", f"--workdir={workdir}", "--num-examples=500"]) == 0
    printed = capsys.readouterr().out
    out = os.path.join(workdir, "plots")
    expected = ["skill_embeddings.npz", "skill_tsne.png", "segmentation_drawer-close_0.png",
                "segmentation_pick-place_0.png"]
    assert sorted(os.listdir(out)) == sorted(expected)
    for name in expected:
        assert os.path.join(out, name) in printed
    for name in expected[1:]:
        _assert_png(os.path.join(out, name))

    segments = _all_segments(metaworld_rlds_dir)
    data = np.load(os.path.join(out, "skill_embeddings.npz"))
    n = len(data["labels"])
    # One point per distinct segment, and every segment of this small dataset found.
    assert n == sum(k for _, k in segments) == len(set(data["uids"].tolist()))
    assert data["coords"].shape == (n, 2) and np.all(np.isfinite(data["coords"]))
    assert data["points"].shape[0] == n and data["code_indices"].shape[0] == n
    assert set(data["labels"]) <= set(LABELS) and "grasp" in set(data["labels"])
    assert [LABELS[i] for i in data["label_ids"]] == data["labels"].tolist()
    tasks = data["tasks"].tolist()
    assert {t: tasks.count(t) for t in set(tasks)} == {
        t: sum(k for u, k in segments if u == t) for t, _ in segments}
    assert str(data["kind"]) == "encoder" and int(data["step"]) == 2

    # --data names the dataset directly, --out elsewhere, the quantised tokens.
    other = os.path.join(workdir, "other_plots")
    assert cli.main(["plot", f"--workdir={workdir}", f"--data={metaworld_rlds_dir}",
                     "--num-examples=3", "--episode=1", f"--out={other}",
                     "--embedding=quantized"]) == 0
    data = np.load(os.path.join(other, "skill_embeddings.npz"))
    assert len(data["labels"]) == 3 and str(data["kind"]) == "quantized"
    assert os.path.exists(os.path.join(other, "segmentation_pick-place_1.png"))


def test_a_skill_stage_only_run_loads_the_same_skill_encoder(workdir, tmp_path):
    from flax import nnx

    from atomskill_jax.methods.atomskill import skill_embeddings as se

    skill_only = str(tmp_path / "skill_only")
    shutil.copytree(workdir, skill_only, ignore=shutil.ignore_patterns("sampler", "plots*",
                                                                       "other_plots"))
    full, _, step_full = se.load_skill_model(workdir)
    partial, _, step_partial = se.load_skill_model(skill_only)
    assert (step_full, step_partial) == (2, 2)  # sampler stage step, skill stage step
    for module in ("skill_encoder", "vq"):
        a = nnx.to_flat_state(nnx.state(getattr(full, module), nnx.Param))
        b = nnx.to_flat_state(nnx.state(getattr(partial, module), nnx.Param))
        for (ka, va), (kb, vb) in zip(a, b):
            assert ka == kb
            np.testing.assert_array_equal(np.asarray(va.get_value()), np.asarray(vb.get_value()))


def _set_skill_conditioning_false(workdir):
    """An ACT-like run's assets: the same files with decoder.skill_conditioning False."""
    for stage in ("skill", "sampler"):
        root = os.path.join(workdir, stage, "checkpoints")
        for step in os.listdir(root):
            path = os.path.join(root, step, "assets", "metadata")
            with open(path) as f:
                assets = json.load(f)
            assets["config"]["model"]["decoder"]["skill_conditioning"] = False
            with open(path, "w") as f:
                json.dump(assets, f)
            # A deliberate edit: re-hash the step, or loading refuses it as damaged.
            checksums.write_manifest(os.path.join(root, step), checkpoints.ITEMS)


def test_plot_command_refusals(workdir, tmp_path, capsys):
    from atomskill_jax import cli

    def refused(*argv):
        assert cli.main(["plot", *argv]) == 2
        return capsys.readouterr().err

    assert "does not exist" in refused(f"--workdir={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    assert "no skill model checkpoint" in refused(f"--workdir={tmp_path / 'empty'}")
    err = refused(f"--workdir={workdir}", f"--data={tmp_path / 'no_such_dataset'}")
    assert "no_such_dataset does not exist" in err
    act = str(tmp_path / "act_like")
    shutil.copytree(workdir, act, ignore=shutil.ignore_patterns("plots*", "other_plots"))
    _set_skill_conditioning_false(act)
    err = refused(f"--workdir={act}")
    assert "skill_conditioning=False" in err and "no skill encoder" in err
    assert not os.path.exists(os.path.join(act, "plots"))
