"""Test setup: CPU only, 8 fake devices for sharding tests, TensorFlow kept off GPUs."""

import os

# Before jax/TensorFlow initialise: fake devices, quiet logs, no GPU for TF.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-data-dir")  # never download

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
