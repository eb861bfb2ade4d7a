"""decoder.keypose_frame='relative': the keypose head learns k - action_abs[t] (the data
gives `keypose_base` = action_abs[t]), and the policy anchors the predicted offset on the
target of the action it executes at the query step."""

import jax
import numpy as np
import pytest
from flax import nnx

from atomskill_jax.methods.atomskill import spec as atomskill_spec
from atomskill_jax.methods.atomskill.config import tiny_model_config
from atomskill_jax.methods.atomskill.model import AtomSkill, fake_batch, keypose_frame


@nnx.jit
def _skill_loss(model, rng, batch):
    # jit: one compile per model, far cheaper than running the loss op by op.
    return model.compute_loss(rng, batch, train=False, stage="skill")[1]


@nnx.jit
def _offsets(model, batch):
    tokens, _ = model.encode_skill(batch)
    return model.predict_actions(batch["observation"], batch["language_embedding"], tokens)[1]


def _config(frame):
    c = tiny_model_config()
    c.decoder.keypose_frame = frame
    return c


def test_relative_loss_is_the_absolute_loss_on_the_offset():
    """Same parameters and rng: relative with (k, base) equals absolute with k - base."""
    absolute, relative = _config("absolute"), _config("relative")
    batch = fake_batch(relative, 4)
    assert batch["keypose_base"].shape == batch["keypose"].shape
    assert "keypose_base" not in fake_batch(absolute, 4)
    m_abs, m_rel = AtomSkill(absolute, rngs=nnx.Rngs(0)), AtomSkill(relative, rngs=nnx.Rngs(0))
    shifted = {k: v for k, v in batch.items() if k != "keypose_base"}
    shifted["keypose"] = batch["keypose"] - batch["keypose_base"]
    rng = jax.random.key(3)
    want = _skill_loss(m_abs, rng, shifted)
    got = _skill_loss(m_rel, rng, batch)
    # (a head that ignored the base would give L1(pred, k), not L1(pred, k - base))
    assert float(got["keypose_l1"]) == pytest.approx(float(want["keypose_l1"]), rel=1e-6)
    with pytest.raises(ValueError, match="keypose_frame"):
        keypose_frame(_config("polar"))


def test_pipeline_gives_the_step_target_and_the_offset_vanishes_at_skill_ends(
        metaworld_rlds_dir):
    from atomskill_jax.data import pipeline
    from atomskill_jax.training import config_flags
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_flags.load_config(os.path.join(repo, "configs", "atomskill.py") + ":tiny")
    config.data.datasets = ({"name": str(metaworld_rlds_dir), "weight": 1.0},)
    config.data.batch_size = 64
    assert atomskill_spec.trajectory_transform(config) is None  # absolute: the default
    config.model.decoder.keypose_frame = "relative"
    pipe = pipeline.make_pipeline(config.data, train=True,
                                  trajectory_transform=atomskill_spec.trajectory_transform(config))
    it = pipe.iterator()
    ends, others = [], []
    for _ in range(4):
        b = it.next_local()
        offset = np.abs(b["keypose"] - b["keypose_base"]).max(axis=-1)  # normalised units
        last = b["timestep"] == b["skill"]["end"]
        ends.append(offset[last]), others.append(offset[~last])
    ends, others = np.concatenate(ends), np.concatenate(others)
    assert ends.size and np.allclose(ends, 0.0, atol=1e-5)  # the keypose is a[t]'s target
    assert np.median(others) > 1e-2  # and elsewhere it is not


def test_epsilon_from_predicted_offsets():
    """The data rule on predicted offset norms: ends at 0.1-0.2 and other steps from
    0.3 are separable (ε = their midpoint); overlapping ones give eps_end. The dims
    chosen are the only ones measured."""
    from atomskill_jax.methods.atomskill import calibration

    def batches(end_norm, early_norm):
        rng = np.random.default_rng(0)
        for _ in range(3):
            left = rng.integers(0, 4, 200)
            norm = np.where(left == 0, rng.uniform(*end_norm, 200), rng.uniform(*early_norm, 200))
            offset = np.zeros((200, 4), np.float32)
            offset[:, 1] = norm
            offset[:, 3] = 50.0  # the gripper term, not compared
            yield {"offset": offset, "timestep": 10 - left, "skill": {"end": np.full(200, 10)}}

    out = calibration.epsilon_from_predictions(batches((0.1, 0.2), (0.3, 1.0)),
                                               lambda b: b["offset"], dims=(0, 1, 2))
    assert 0.18 < out["eps_end"] < 0.2 and 0.3 < out["eps_early"] < 0.37
    assert out["epsilon"] == pytest.approx(0.5 * (out["eps_end"] + out["eps_early"]))
    assert out["end_hit_rate"] == 1.0 and out["early_fire_rate"] == 0.0
    overlap = calibration.epsilon_from_predictions(batches((0.1, 0.5), (0.2, 1.0)),
                                                   lambda b: b["offset"], dims=(0, 1, 2))
    assert overlap["epsilon"] == overlap["eps_end"]  # prefer ending skills


def test_epsilon_source_defaults_and_refusals():
    from ml_collections import ConfigDict

    def config(frame, source=None):
        return ConfigDict({"model": _config(frame).to_dict() | {}})

    absolute, relative = config("absolute"), config("relative")
    assert atomskill_spec.epsilon_source(absolute) == "data"
    assert atomskill_spec.epsilon_source(relative) == "predictions"
    relative.model.decoder.epsilon_from = "data"
    assert atomskill_spec.epsilon_source(relative) == "data"
    absolute.model.decoder.epsilon_from = "predictions"
    with pytest.raises(ValueError, match="relative keypose head"):
        atomskill_spec.epsilon_source(absolute)
    relative.model.decoder.epsilon_from = "guess"
    with pytest.raises(ValueError, match="epsilon_from"):
        atomskill_spec.epsilon_source(relative)


def test_trainer_calibration_of_a_relative_head_uses_its_predictions(metaworld_rlds_dir):
    """spec.calibrate as the trainer calls it, on the fixture data and a fresh tiny
    relative model: ε is the rule on that model's predicted offsets (recomputed here by
    hand from the same examples), the data rule is kept beside it, the cap is the data's."""
    import os

    from atomskill_jax.data import pipeline
    from atomskill_jax.methods.atomskill import calibration
    from atomskill_jax.training import config_flags

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_flags.load_config(os.path.join(repo, "configs", "atomskill.py") + ":tiny")
    config.data.datasets = ({"name": str(metaworld_rlds_dir), "weight": 1.0},)
    config.data.batch_size = 32
    config.model.decoder.keypose_frame = "relative"
    config.model.decoder.calibration_batches = 2
    pipe = pipeline.make_pipeline(config.data, train=True,
                                  trajectory_transform=atomskill_spec.trajectory_transform(config))
    from atomskill_jax.training.trainer import fill_model_dims

    fill_model_dims(config, pipe)  # as the trainer does: the data's dimensions
    model = AtomSkill(config.model, rngs=nnx.Rngs(0))
    out = atomskill_spec.calibrate(config, pipe, model)
    assert out["epsilon_from"] == "predictions" and out["prediction_rule"]["num_examples"] == 64
    # The data rule on this fixture: keyposes are the last step's target (eps_end 0), so
    # ε is half the early distance; kept beside the prediction rule, with its cap.
    data_rule = out["data_rule"]
    assert data_rule["eps_end"] == 0.0
    assert data_rule["epsilon"] == pytest.approx(0.5 * data_rule["eps_early"])
    assert out["max_skill_steps"] >= 10 and out["num_segments"] > 0
    it = pipe.iterator()
    batches = [it.next_local() for _ in range(2)]
    norms, left = [], []
    for b in batches:
        offset = np.asarray(_offsets(model, b))
        norms.append(np.linalg.norm(offset, axis=-1))
        left.append(b["skill"]["end"] - b["timestep"])
    norms, left = np.concatenate(norms), np.concatenate(left)
    want = calibration.threshold_rule(norms[left == 0], norms[left > 0])
    assert out["epsilon"] == pytest.approx(want["epsilon"], rel=1e-4)
    assert out["epsilon"] != pytest.approx(data_rule["epsilon"])
