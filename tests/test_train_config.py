"""Config variants, command-line overrides, epochs -> steps, sweep expansion."""

import types

import pytest

from atomskill_jax import cli
from atomskill_jax.training import config_flags, sweep, trainer

CONFIG = "configs/atomskill.py"


@pytest.mark.parametrize("variant", ["paper", "cpu", "tiny"])
def test_variants_load(variant):
    c = config_flags.load_config(f"{CONFIG}:{variant}")
    assert c.variant == variant
    assert c.model.horizon == c.data.horizon
    assert c.model.skill_length == c.data.skill_resample_length
    assert c.stage in ("skill", "sampler", "both")


def test_paper_is_table_9():
    c = config_flags.load_config(f"{CONFIG}:paper")
    m = c.model
    assert (c.data.batch_size, c.data.horizon, m.vq.codebook_size) == (256, 32, 32)
    assert (m.skill_encoder.num_tokens, m.num_heads, m.skill_encoder.num_layers) == (8, 8, 6)
    assert (m.decoder.fusion_layers, m.decoder.action_layers) == (7, 7)
    assert (c.optim.lr, c.optim.weight_decay) == (1e-4, 1e-5)
    assert (m.vq.commitment, m.contrastive.temperature) == (0.25, 0.1)
    assert (m.loss_weights.action, m.loss_weights.contrastive) == (1.0, 1e-2)
    assert (c.train.skill_epochs, c.train.sampler_epochs) == (200, 1000)
    # Equation 15 (noise prediction), no skill-step input; front/wrist from MetaWorld.
    assert (m.sampler.prediction_type, m.sampler.condition_on_skill_step) == ("epsilon", False)
    assert (c.data.cameras, c.data.image_size, c.data.use_state) == (("front", "wrist"),
                                                                     (224, 224), False)
    (entry,) = c.data.datasets
    assert dict(entry["cameras"]) == {"front": "corner", "wrist": "gripperPOV"}


def test_overrides_are_typed_and_shared_sizes_follow():
    c = config_flags.load_config(f"{CONFIG}:cpu")
    config_flags.apply_overrides(c, [
        "--config.data.horizon=8", "--config.optim.lr=3e-4", "--config.data.cameras=front,wrist",
        "--config.model.contrastive.temporal=false", "--config.stage=skill",
        "--config.data.image_size=(96, 128)"])
    assert c.model.horizon == 8 and c.data.horizon == 8  # one FieldReference
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.data.cameras == ("front", "wrist")
    assert c.model.contrastive.temporal is False
    assert c.stage == "skill" and c.data.image_size == (96, 128)
    config_flags.apply_overrides(c, {"data.batch_size": 32, "model.decoder.predict_keypose": "0"})
    assert c.data.batch_size == 32 and c.model.decoder.predict_keypose is False


def test_bad_overrides_are_refused():
    c = config_flags.load_config(f"{CONFIG}:tiny")
    with pytest.raises(KeyError, match="have .*batch_size"):
        config_flags.apply_overrides(c, ["--config.data.batch_sise=3"])
    with pytest.raises(ValueError, match="boolean"):
        config_flags.apply_overrides(c, ["--config.model.contrastive.temporal=maybe"])
    with pytest.raises(ValueError, match="unknown variant"):
        config_flags.load_config(f"{CONFIG}:huge")


def test_epochs_become_steps():
    c = config_flags.load_config(f"{CONFIG}:paper")
    sizes = [types.SimpleNamespace(num_steps=1000), types.SimpleNamespace(num_steps=280)]
    fake = types.SimpleNamespace(statistics=sizes, data_statistics=sizes)
    assert trainer.stage_steps(c, "skill", fake) == 1000  # 200 epochs x 1280 / 256
    assert trainer.stage_steps(c, "sampler", fake) == 5000
    c.train.skill_steps = 7
    assert trainer.stage_steps(c, "skill", fake) == 7
    # Normalised with another run's statistics (data.statistics_from): epochs still count
    # this data's steps, not the pre-training dataset's.
    c.train.skill_steps = -1
    foreign = types.SimpleNamespace(statistics=[types.SimpleNamespace(num_steps=10 ** 6)],
                                    data_statistics=sizes)
    assert trainer.stage_steps(c, "skill", foreign) == 1000


def test_stages():
    c = config_flags.load_config(f"{CONFIG}:tiny")
    assert trainer.resolve_stages(c) == ["skill", "sampler"]  # c.stage is "both"
    c.stage = "sampler"
    assert trainer.resolve_stages(c) == ["sampler"]
    c.model.decoder.skill_conditioning = False  # ACT-like baseline: nothing to sample
    with pytest.raises(ValueError, match=r"has the stages \['skill'\]"):
        trainer.resolve_stages(c)
    c.stage = "both"
    assert trainer.resolve_stages(c) == ["skill"]
    c.stage = "pretrain"  # another method's stage
    with pytest.raises(ValueError, match="config.stage='pretrain'"):
        trainer.resolve_stages(c)


def test_sweep_expands_and_prints_commands(tmp_path, capsys):
    runs = sweep.expand(f"{CONFIG}:cpu", "configs/sweeps/ablations.py:seeds=2", str(tmp_path))
    assert len(runs) == 12 and len({d for d, _ in runs}) == 12
    run_dir, argv = runs[2]
    assert run_dir == str(tmp_path / "no_contrastive_seed0")
    assert "--config.model.contrastive.temporal=False" in argv
    # A training seed varies the data order as well as the initialisation.
    assert "--config.seed=0" in argv and "--config.data.seed=0" in argv
    assert "--config.data.seed=1" in runs[3][1]
    assert len(sweep.expand(f"{CONFIG}:cpu", "configs/sweeps/learning_rate.py", "w")) == 6
    assert cli.main(["sweep", f"--config={CONFIG}:cpu", "--sweep=configs/sweeps/ablations.py",
                     f"--workdir={tmp_path}", "--print-commands", "--config.data.batch_size=32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("atomskill train --config=") for line in lines)
    assert all("--config.data.batch_size=32" in line for line in lines)


def test_sweep_with_a_typo_fails_before_running(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text("def get_sweep():\n    return [{'optim.lrr': 1.0}]\n")
    with pytest.raises(KeyError, match="lrr"):
        sweep.expand(f"{CONFIG}:cpu", str(bad), str(tmp_path))
