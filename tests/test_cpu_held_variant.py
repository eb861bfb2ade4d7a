"""The `cpu_held` variant (configs/atomskill.py) on the data its docstring's commands make.

One tiny rlbench6 build (one short episode per task), re-annotated with keyframes at the
observed gripper opening into the same data directory, as `atomskill annotate --out=D`
does. The variant's own dataset entry must find that copy under `data_dir` (a renamed
copy or a changed entry fails here), its pipeline must give the relative keypose head
its base (the query step's `action_abs`), a whole skill-stage training step must trace
with the relative keypose loss, and evaluation must hold skills (no re-sampling).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.tiny_model import REPO

BATCH = 2


@pytest.fixture(scope="module")
def held_data_dir(tmp_path_factory):
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb
    from data_builders.reannotate import reannotate_dataset_builder as rb

    out = str(tmp_path_factory.mktemp("cpu_held"))
    dataset_dir, _ = mwb.build(out, suite="rlbench6", episodes_per_task=1, max_steps=60,
                               only_successful=False, show_progress=False)
    rb.reannotate(dataset_dir, out, gripper_signal="proprio")
    return out


def test_cpu_held_reads_the_annotated_copy_and_traces_a_relative_keypose_step(held_data_dir):
    import jax

    from atomskill_jax.data import pipeline
    from atomskill_jax.methods.atomskill.spec import SPEC, resolve_options
    from atomskill_jax.training import config_flags, mesh as mesh_lib, optimizer, trainer
    from atomskill_jax.training.train_state import create_train_state, make_train_step

    config = config_flags.load_config(os.path.join(REPO, "configs/atomskill.py:cpu_held"))
    config.data.data_dir = held_data_dir
    config.data.update(batch_size=BATCH, num_parallel_calls=1, prefetch=1,
                       episode_shuffle_buffer=1, example_shuffle_buffer=4)
    pipe = pipeline.make_pipeline(config.data, train=True,
                                  trajectory_transform=SPEC.trajectory_transform(config),
                                  normalizer_keys=SPEC.normalizer_keys)
    # The entry names the proprio re-annotation, not the command-keyframe build beside it.
    (source,) = pipe.sources
    assert source.directory.startswith(
        os.path.join(held_data_dir, "reannotated", "metaworld_scripted_rlbench6_rule_proprio"))
    trainer.fill_model_dims(config, pipe)
    batch = pipe.normalizer.normalize(next(iter(pipe.numpy_batches())))
    assert batch["keypose_base"].shape == batch["keypose"].shape == (BATCH, 4)

    tx, schedule = optimizer.make_optimizer(config.optim, 10)
    graphdef, state, _ = create_train_state(config, "skill", tx, mesh_lib.make_mesh(),
                                            abstract_only=True)
    step = make_train_step(graphdef, tx, config, "skill", schedule=schedule, ema_decay=0.999)
    _, metrics = jax.eval_shape(step, jax.random.key(0), state, batch)
    assert "keypose_l1" in metrics and metrics["loss"].shape == ()

    # Held skills at evaluation, whatever the cpu variant re-samples.
    assert resolve_options(config, {})["resample_every"] == 0
    assert resolve_options(config, {})["adapter"] == "metaworld"


def test_cpu_held_differs_from_cpu_only_where_it_says():
    """Every other setting stays cpu's (the README's figures compare the two)."""
    from atomskill_jax.training import config_flags

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, prefix + k + "."))
            else:
                out[prefix + k] = v
        return out

    load = lambda v: flat(config_flags.load_config(  # noqa: E731
        os.path.join(REPO, f"configs/atomskill.py:{v}")).to_dict())
    cpu, held = load("cpu"), load("cpu_held")
    changed = {k for k in cpu.keys() | held.keys() if cpu.get(k) != held.get(k)}
    assert changed == {
        "variant", "data.datasets", "data.batch_size", "model.decoder.skill_token_corruption",
        "model.sampler.resample_every", "model.loss_weights.keypose",
        "model.decoder.trigger_dims", "model.decoder.keypose_frame",
        "model.decoder.skill_cap_quantile"}
    assert held["model.decoder.trigger_dims"] == (0, 1, 2)
    assert np.isclose(held["model.decoder.skill_cap_quantile"], 95.0)
