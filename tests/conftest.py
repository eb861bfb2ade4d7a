"""Test setup: CPU only, 8 fake devices for sharding tests, TensorFlow kept off GPUs."""

import os

# Before jax/TensorFlow initialise: fake devices, quiet logs, no GPU for TF.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")  # never download

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Embedding and annotation caches live in a per-session folder, not in ~/.cache."""
    os.environ["ATOMSKILL_CACHE_DIR"] = str(tmp_path_factory.mktemp("atomskill_cache"))


@pytest.fixture(scope="session")
def metaworld_rlds_dir(tmp_path_factory, _hermetic_cache):
    """A tiny real dataset: MetaWorld experts on pick-place and drawer-close, two
    episodes each, state observations. Returns the version directory that
    `tfds.builder_from_directory` reads."""
    from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

    out = tmp_path_factory.mktemp("metaworld_rlds")
    dataset_dir, _ = mwb.build(str(out), tasks="pick-place,drawer-close",
                               episodes_per_task=2, seed=0, show_progress=False)
    return dataset_dir


TINY_TRAIN = """
from atomskill_jax.training import trainer
config = tiny_train_config(sys.argv[2], skill_steps=2, sampler_steps=2)
trainer.train(config, sys.argv[3])
"""


@pytest.fixture(scope="session")
def tiny_trained_workdir(metaworld_rlds_dir, tmp_path_factory):
    """configs/atomskill.py:tiny trained 2 skill + 2 sampler steps on the MetaWorld
    fixture, in a child with 1 device. Trained once per session: tests that write into
    a workdir take a copy (tests.tiny_model.copy_workdir)."""
    from tests.tiny_model import run_child

    out = tmp_path_factory.mktemp("tiny_trained_workdir")
    run_child(TINY_TRAIN, 1, metaworld_rlds_dir, out)
    return str(out)
