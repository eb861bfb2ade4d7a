"""TensorFlow for the input pipeline only: imported from here so it never takes a GPU.

JAX owns the accelerators; TensorFlow would otherwise reserve all GPU memory at its
first op. `from atomskill_jax.data.tf_setup import tf` in every module that uses it.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised its devices elsewhere
    if tf.config.get_visible_devices("GPU"):
        logging.getLogger(__name__).warning(
            "TensorFlow was initialised before atomskill_jax.data and sees GPUs; "
            "import atomskill_jax.data first to keep it off them")

__all__ = ["tf"]
