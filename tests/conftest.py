"""Test setup: CPU only, 8 fake devices for sharding tests, TensorFlow kept off GPUs."""

import fcntl
import os
import pathlib
import shutil

# Before jax/TensorFlow initialise: fake devices, quiet logs, no GPU for TF.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")  # never download
# Compile time dominates the tiny models of the tests: cheaper XLA optimisation in this
# process too, as in every child (tests.tiny_model.child_env); numerics stay IEEE float32.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_llvm_disable_expensive_passes=true").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Embedding and annotation caches live in a per-session folder, not in ~/.cache."""
    os.environ["ATOMSKILL_CACHE_DIR"] = str(tmp_path_factory.mktemp("atomskill_cache"))
    # One JAX compilation cache for every child process of the session (all workers):
    # the tiny models' steps compile once, not once per child (tests.tiny_model.child_env).
    cache = str(_shared_root(tmp_path_factory) / "jax_cache")
    os.environ["ATOMSKILL_TEST_JAX_CACHE"] = cache
    # The workers use it too: the same tiny step compiled in-process by several test files
    # (or both workers) is compiled once. Reset: a compile during collection would have
    # fixed the cache as off for this process.
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()


def _shared_root(tmp_path_factory) -> pathlib.Path:
    """A folder shared by the session's pytest-xdist workers (each has its own basetemp,
    their parent is common), or the basetemp without xdist."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def _built_once(tmp_path_factory, name: str, build) -> str:
    """`build(folder) -> path` run once per session, whichever worker asks first; the
    others wait on a lock and reuse its result (a fixture built by every worker would
    cost each its CPU again)."""
    root = _shared_root(tmp_path_factory)
    done = root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or we die)
        if not done.exists():
            folder = root / name
            if folder.exists():  # a worker died while building it
                shutil.rmtree(folder)
            folder.mkdir()
            done.write_text(str(build(folder)))
        return done.read_text()


@pytest.fixture(scope="session")
def metaworld_rlds_dir(tmp_path_factory, _hermetic_cache):
    """A tiny real dataset: MetaWorld experts on pick-place and drawer-close, two
    episodes each, state observations. Returns the version directory that
    `tfds.builder_from_directory` reads. Tests that change it work on a copy."""
    def build(out):
        from data_builders.metaworld_scripted import metaworld_scripted_dataset_builder as mwb

        dataset_dir, _ = mwb.build(str(out), tasks="pick-place,drawer-close",
                                   episodes_per_task=2, seed=0, show_progress=False)
        return dataset_dir

    return _built_once(tmp_path_factory, "metaworld_rlds", build)


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

    def build(out):
        run_child(TINY_TRAIN, 1, metaworld_rlds_dir, out)
        return out

    return _built_once(tmp_path_factory, "tiny_trained_workdir", build)


@pytest.fixture(scope="session")
def exported_policy_dir(tiny_trained_workdir, tmp_path_factory):
    """The session's tiny AtomSkill exported (`atomskill export`, cpu and cuda), once."""
    def build(out):
        from atomskill_jax.export import writer

        writer.export_workdir(tiny_trained_workdir, str(out / "policy"),
                              platforms=("cpu", "cuda"))
        return str(out / "policy")

    return _built_once(tmp_path_factory, "exported_policy", build)
